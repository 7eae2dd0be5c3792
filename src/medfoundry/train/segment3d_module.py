"""LightningModule for 3D multi-class segmentation: patches in, whole-volume validation.

Loss: MONAI ``DiceCELoss`` (softmax, one-hot target; Dice over the foreground classes with one
Dice per class over the whole batch, so a patch without some class is no failure, plus
cross-entropy over every class). A model that returns a list in training (PCT-Net with deep
supervision: [main, aux...], all at the patch size) is trained on
``methods.losses.deep_supervision_loss`` (weights 1 / 2^i, normalised, as MIS-FM / PyMIC);
validation uses the main output only (the model's eval mode returns it alone). AdamW without
weight decay on norms and biases, linear warm-up then cosine decay over ``max_steps``; an
optional lower learning rate for a pretrained encoder (``encoder_lr_mult``) and, with
``head_warmup_steps`` and the module's ``new_parts``, a head-only start (see
``train.optim.encoder_aware_adamw``; ``head_init: zero`` is applied by the caller). Augmentation
(``augment_patches``) runs on the device in ``training_step``. Validation segments every
validation volume whole with ``predict_volume`` (roi = the patch, checked against the
network's per-axis ``size_multiple`` when given) and logs ``val/dice_mean`` (mean over
foreground classes and cases) and ``val/dice_<class>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from medfoundry.data.augment import augment_patches
from medfoundry.methods.losses import deep_supervision_loss
from medfoundry.metrics.segmentation3d import dice_per_class
from medfoundry.train.inference3d import predict_volume
from medfoundry.train.segment_base import SegmentModule

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": None,  # None: 5% of max_steps
    "min_lr_ratio": 0.0,
    "encoder_lr_mult": 1.0,
    "head_init": "default",  # "zero": a checkpoint's fresh head starts at zero (uniform softmax)
    "head_warmup_steps": 0,  # with a checkpoint: steps during which only the fresh head trains
    "dice_weight": 1.0,
    "ce_weight": 1.0,
    "augment": {"scale": 0.1, "shift": 0.1, "noise": 0.0, "flip_axes": []},
    "sliding_window": {"overlap": 0.5, "sw_batch_size": 4, "mode": "gaussian"},
}


def stalled_classes(
    val_log: Sequence[dict[str, float]], names: Sequence[str], ratio: float = 0.5, high: float = 0.5
) -> dict[str, float]:
    """Classes that lag far behind at the kept weights (the validation row with the best mean
    Dice): below ``ratio`` times the best class's Dice while that one reached ``high``. The
    sign of the class-merging minimum (one class takes both structures) that pretrained 3D
    networks fell into at too low an lr (docs/results.md §7), unless the class is simply
    harder. Returns name -> its Dice at that row."""
    if not val_log or not names:
        return {}
    row = max(val_log, key=lambda r: r.get("dice_mean", 0.0))
    dice = {n: float(row.get(f"dice_{n}", 0.0)) for n in names}
    top = max(dice.values())
    if top < high:
        return {}
    return {n: v for n, v in dice.items() if v < ratio * top}


class Segment3DModule(SegmentModule):
    """Train ``model`` ((B, C, D, H, W) -> logits (B, K, D, H, W)) on patch batches.

    ``classes``: label values scored in validation (foreground, e.g. [1, 2]) and their
    ``names``; ``roi``: the sliding-window size of validation (the patch size);
    ``size_multiple``: the network's per-axis (D, H, W) input rule, checked against ``roi``;
    ``new_parts``: top-level modules no checkpoint initialised (None: all are new), which alone
    train during ``head_warmup_steps``.
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[int],
        names: Sequence[str],
        roi: Sequence[int],
        cfg: dict[str, Any] | None = None,
        max_steps: int = 1000,
        size_multiple: Sequence[int] | None = None,
        new_parts: Sequence[str] | None = None,
    ) -> None:
        cfg = {**DEFAULTS, **(cfg or {})}
        values = [int(c) for c in classes]
        window = [int(r) for r in roi]
        multiple = None if size_multiple is None else [int(m) for m in size_multiple]
        aug = cfg.get("augment")
        super().__init__(
            model,
            names,
            loss=DeepSupervisedDiceCE(float(cfg["dice_weight"]), float(cfg["ce_weight"])),
            scorer=VolumeDice(values, window, cfg.get("sliding_window") or {}, multiple),
            augment=(lambda x, y: augment_patches(x, y, **aug)) if aug else None,
            cfg=cfg,
            max_steps=max_steps,
            new_parts=new_parts,
        )
        self.classes, self.roi, self.size_multiple = values, window, multiple


class DeepSupervisedDiceCE(nn.Module):
    """MONAI ``DiceCELoss`` (softmax, one-hot target, batch Dice over the foreground classes);
    a list of outputs (deep supervision) is weighted by ``deep_supervision_loss``."""

    def __init__(self, dice_weight: float, ce_weight: float) -> None:
        super().__init__()
        self.criterion = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )

    def forward(self, outputs: torch.Tensor | list[torch.Tensor], labels: torch.Tensor):
        return deep_supervision_loss(outputs, labels, lambda o, y: self.criterion(o.float(), y))


class VolumeDice:
    """Dice (1, K) of one whole validation volume segmented by sliding windows of ``roi``."""

    def __init__(
        self,
        classes: Sequence[int],
        roi: Sequence[int],
        sliding_window: dict[str, Any],
        size_multiple: Sequence[int] | None,
    ) -> None:
        self.classes, self.roi, self.sw, self.size_multiple = (
            classes,
            roi,
            sliding_window,
            size_multiple,
        )

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, label = batch  # (1, C, D, H, W), (1, 1, D, H, W): one whole volume
        sw = self.sw
        probs = predict_volume(
            model,
            image[0],
            self.roi,
            overlap=float(sw.get("overlap", 0.5)),
            sw_batch_size=int(sw.get("sw_batch_size", 4)),
            mode=str(sw.get("mode", "gaussian")),
            amp=bool(sw.get("amp", False)),
            size_multiple=self.size_multiple,
        )
        pred = probs.argmax(0)  # (D, H, W)
        return torch.as_tensor(dice_per_class(pred, label[0, 0].cpu(), self.classes))[None]
