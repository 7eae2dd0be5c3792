"""LightningModule for 3D multi-class segmentation: patches in, whole-volume validation.

Loss: MONAI ``DiceCELoss`` (softmax, one-hot target; Dice over the foreground classes with one
Dice per class over the whole batch, so a patch without some class is no failure, plus
cross-entropy over every class). A model that returns a list in training (PCT-Net with deep
supervision: [main, aux...], all at the patch size) is trained on
``nets.pctnet.deep_supervision_loss`` (weights 1 / 2^i, normalised, as MIS-FM / PyMIC);
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

import lightning as L
import torch
from monai.losses import DiceCELoss
from torch import nn

from medfoundry.evaluate.metrics3d import dice_per_class
from medfoundry.nets.pctnet import deep_supervision_loss
from medfoundry.train.inference3d import predict_volume
from medfoundry.train.optim import encoder_aware_adamw

AXES = {"D": 2, "H": 3, "W": 4}  # patch axes of (B, C, D, H, W)

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


def augment_patches(
    images: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 0.0,
    shift: float = 0.0,
    noise: float = 0.0,
    flip_axes: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch intensity jitter ``x * U(1 - scale, 1 + scale) + U(-shift, shift)`` plus
    Gaussian noise of sd ``noise``, and random flips (p = 0.5 each) along ``flip_axes``
    ("D", "H", "W"), applied to images (B, C, D, H, W) and labels (B, 1, D, H, W) alike."""
    b = images.shape[0]
    shape = (b,) + (1,) * (images.ndim - 1)
    if scale:
        images = images * (1.0 + (torch.rand(shape, device=images.device) * 2 - 1) * scale)
    if shift:
        images = images + (torch.rand(shape, device=images.device) * 2 - 1) * shift
    if noise:
        images = images + torch.randn_like(images) * noise
    for name in flip_axes:
        if name not in AXES:
            raise ValueError(f"flip axis {name!r}: choose from {sorted(AXES)}")
        dim = AXES[name]
        flip = torch.rand(shape, device=images.device) < 0.5  # (B, 1, 1, 1, 1)
        images = torch.where(flip, images.flip(dim), images)
        labels = torch.where(flip, labels.flip(dim), labels)
    return images, labels


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


class Segment3DModule(L.LightningModule):
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
        super().__init__()
        self.model = model
        self.classes = [int(c) for c in classes]
        self.names = list(names)
        self.roi = [int(r) for r in roi]
        self.size_multiple = None if size_multiple is None else [int(m) for m in size_multiple]
        self.cfg = {**DEFAULTS, **(cfg or {})}
        self.max_steps = int(max_steps)
        self.new_parts = None if new_parts is None else list(new_parts)
        self.criterion = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=float(self.cfg["dice_weight"]),
            lambda_ce=float(self.cfg["ce_weight"]),
        )
        self._val: list[torch.Tensor] = []
        self.last_val: dict[str, float] = {}
        self.val_log: list[dict[str, float]] = []  # one row per validation: step and Dice

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch  # (B, 1, d, h, w) float32 / int64
        aug = self.cfg.get("augment")
        if aug:
            images, labels = augment_patches(images, labels, **aug)
        outputs = self(images)  # (B, K, d, h, w), or a list of them (deep supervision)
        loss = deep_supervision_loss(outputs, labels, lambda o, y: self.criterion(o.float(), y))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        image, label = batch  # (1, C, D, H, W), (1, 1, D, H, W): one whole volume
        sw = self.cfg.get("sliding_window") or {}
        probs = predict_volume(
            self.model,
            image[0],
            self.roi,
            overlap=float(sw.get("overlap", 0.5)),
            sw_batch_size=int(sw.get("sw_batch_size", 4)),
            mode=str(sw.get("mode", "gaussian")),
            amp=bool(sw.get("amp", False)),
            size_multiple=self.size_multiple,
        )
        pred = probs.argmax(0)  # (D, H, W)
        dice = dice_per_class(pred, label[0, 0].cpu(), self.classes)
        self._val.append(torch.as_tensor(dice))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        dice = torch.stack(self._val).mean(0)  # (K,)
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
