"""LightningModule for (multi-label) segmentation, with a best-weights callback.

Loss: MONAI Dice (sigmoid) + BCE-with-logits, one sigmoid channel per structure so structures
may overlap (JSRT's clavicles overlap the lungs). AdamW with linear warm-up and cosine decay
over `max_steps`; an optional lower learning rate for a pretrained encoder
(`encoder_lr_mult`) and layer-wise lr decay inside a Swin encoder (`layer_decay`). Augmentation (`augment_batch`) runs in `training_step`, on the device.
Validation logs `val/dice_mean` and `val/dice_<structure>` (threshold 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from medfoundry.data.segmentation import augment_batch
from medfoundry.evaluate.metrics import dice_score
from medfoundry.train.optim import encoder_aware_adamw

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": None,  # None: warmup_fraction of max_steps
    "warmup_fraction": 0.05,
    "min_lr_ratio": 0.0,
    "encoder_lr_mult": 1.0,
    "layer_decay": None,  # e.g. 0.75: layer-wise lr decay in a Swin encoder (None: off)
    "bce_weight": 1.0,
    "augment": {"max_shift": 0.1, "max_scale": 0.1, "max_rotate_deg": 10.0, "intensity": 0.2},
}


class SegmentationModule(L.LightningModule):
    """Train `model` (images -> logits (B, K, H, W)) on batches `(images, masks)`.

    `cfg` keys (defaults in `DEFAULTS`): lr, weight_decay, warmup_steps, warmup_fraction,
    min_lr_ratio, encoder_lr_mult (applies to `model.encoder` parameters, when the model has
    one), layer_decay (see `medfoundry.train.optim.encoder_aware_adamw`), bce_weight, augment (kwargs of `augment_batch`, or None/False for no augmentation).
    """

    def __init__(
        self,
        model: nn.Module,
        structures: Sequence[str],
        cfg: dict[str, Any] | None = None,
        max_steps: int = 1000,
    ) -> None:
        super().__init__()
        self.model = model
        self.structures = list(structures)
        self.cfg = {**DEFAULTS, **(cfg or {})}
        self.max_steps = int(max_steps)
        self.dice_loss = DiceLoss(sigmoid=True)
        self._val_dice: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = masks.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.dice_loss(logits, target) + float(self.cfg["bce_weight"]) * bce

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, masks = batch
        aug = self.cfg.get("augment")
        if aug:
            images, masks = augment_batch(images, masks, **aug)
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_dice = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, masks = batch
        logits = self(images)
        self._val_dice.append(dice_score(logits > 0, masks))  # sigmoid > 0.5 <=> logit > 0

    def on_validation_epoch_end(self) -> None:
        if not self._val_dice:
            return
        dice = torch.cat(self._val_dice).mean(0)
        self.last_val = {"dice_mean": float(dice.mean())}
        self.log("val/dice_mean", dice.mean().float(), prog_bar=True)
        for name, value in zip(self.structures, dice, strict=True):
            self.last_val[f"dice_{name}"] = float(value)
            self.log(f"val/dice_{name}", value.float())
        self._val_dice = []

    def configure_optimizers(self):
        return encoder_aware_adamw(self.model, self.cfg, self.max_steps)
