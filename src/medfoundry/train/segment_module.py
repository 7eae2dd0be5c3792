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

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from medfoundry.data.augment import augment_batch
from medfoundry.metrics.segmentation import dice_score
from medfoundry.train.segment_base import SegmentModule

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


class SegmentationModule(SegmentModule):
    """Train `model` (images -> logits (B, K, H, W)) on batches `(images, masks)`.

    `cfg` keys (defaults in `DEFAULTS`): lr, weight_decay, warmup_steps, warmup_fraction,
    min_lr_ratio, encoder_lr_mult (applies to `model.encoder` parameters, when the model has
    one), layer_decay (see `medfoundry.train.optim.encoder_aware_adamw`), bce_weight, augment
    (kwargs of `augment_batch`, or None/False for no augmentation).
    """

    def __init__(
        self,
        model: nn.Module,
        structures: Sequence[str],
        cfg: dict[str, Any] | None = None,
        max_steps: int = 1000,
    ) -> None:
        cfg = {**DEFAULTS, **(cfg or {})}
        aug = cfg.get("augment")
        super().__init__(
            model,
            structures,
            loss=DiceBCE(float(cfg["bce_weight"])),
            scorer=threshold_dice,
            augment=(lambda x, y: augment_batch(x, y, **aug)) if aug else None,
            cfg=cfg,
            max_steps=max_steps,
        )
        self.structures = self.names


class DiceBCE(nn.Module):
    """MONAI Dice (sigmoid) + ``bce_weight`` x BCE-with-logits on 0-1 masks."""

    def __init__(self, bce_weight: float) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        target = masks.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.dice(logits, target) + self.bce_weight * bce


def threshold_dice(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Dice (B, K) of the thresholded sigmoid (sigmoid > 0.5 <=> logit > 0)."""
    images, masks = batch
    return dice_score(model(images) > 0, masks)
