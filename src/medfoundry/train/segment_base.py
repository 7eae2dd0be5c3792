"""One LightningModule for segmentation, 2D and 3D: the loss, the scorer and the augmentation
are its parts (``train.segment_module`` and ``train.segment3d_module`` configure it).

Training: ``augment(images, target)`` (on the device, optional), then ``loss(model(images),
target)``. Validation: ``scorer(model, batch)`` gives one Dice row (N, K) per batch; their
mean over every validated item is logged as ``val/dice_mean`` and ``val/dice_<name>``, kept in
``last_val`` and appended to ``val_log`` (step and Dice per name). Optimiser: AdamW with
warm-up and cosine decay (``train.optim.encoder_aware_adamw``; ``new_parts`` alone train during
a head warm-up).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from medfoundry.train.optim import encoder_aware_adamw

Loss = Callable[[Any, torch.Tensor], torch.Tensor]  # (model outputs, target) -> scalar
Scorer = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> Dice (N, K)
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class SegmentModule(L.LightningModule):
    """Train ``model`` on ``(images, target)`` batches with the given parts (module doc)."""

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        *,
        loss: Loss,
        scorer: Scorer,
        augment: Augment | None,
        cfg: dict[str, Any],
        max_steps: int,
        new_parts: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)
        self.loss_fn = loss
        self.scorer = scorer
        self.augment = augment
        self.cfg = cfg
        self.max_steps = int(max_steps)
        self.new_parts = None if new_parts is None else list(new_parts)
        self._val: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}
        self.val_log: list[dict[str, float]] = []  # one row per validation: step and Dice

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, target = batch
        if self.augment is not None:
            images, target = self.augment(images, target)
        loss = self.loss_fn(self(images), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._val.append(self.scorer(self.model, batch))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        dice = torch.cat(self._val).mean(0)  # (K,)
        self.last_val = {"dice_mean": float(dice.mean())}
        self.log("val/dice_mean", dice.mean().float(), prog_bar=True)
        for name, value in zip(self.names, dice, strict=True):
            self.last_val[f"dice_{name}"] = float(value)
            self.log(f"val/dice_{name}", value.float())
        row = {k: round(v, 5) for k, v in self.last_val.items()}
        self.val_log.append({"step": int(self.global_step), **row})
        self._val = []

    def configure_optimizers(self):
        return encoder_aware_adamw(self.model, self.cfg, self.max_steps, self.new_parts)
