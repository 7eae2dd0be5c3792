"""Few-label 2D segmentation: train a U-Net on in-memory tensors, predict, evaluate.

The network follows the backbone: a ResNet-UNet for ResNet encoders, a Swin-UNet for Swin
encoders (whose decoder also starts from an MAE checkpoint's pretrained decoder).

Training is step-based: every step draws `batch_size` images with replacement from the (few)
training images, augments them on the device, and validation runs every `val_every` steps;
the weights with the best mean validation Dice are restored at the end (model selection on
validation images only, never on the test set).

A config may carry a `swin:` section (`SWIN_RECIPE_KEY`): keys that replace the general ones
only when the network is a Swin-UNet (`segmentation_recipe`); ResNet runs ignore it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfoundry.config import merge
from medfoundry.errors import MedfoundryError
from medfoundry.metrics.segmentation import dice_score
from medfoundry.nets.segmenters2d import create_segmenter2d, is_swin_config
from medfoundry.runtime import seed_everything
from medfoundry.train.batchnorm_check import check_batchnorm_batch
from medfoundry.train.fit import fit_best, fitted_info, step_batches
from medfoundry.train.segment_module import SegmentationModule
from medfoundry.zoo import (
    CheckpointLike,
    has_decoder,
    load_backbone,
    load_decoder,
    resolve_checkpoint,
)

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 600,
    "batch_size": 4,
    "val_every": 50,
    "eval_batch_size": 16,
    "decoder_channels": [256, 128, 64, 32, 16],
    "precision": "32-true",
    "accelerator": "auto",
    "devices": 1,
    "min_fraction": 1.0,  # share of backbone tensors a pretrained checkpoint must provide
    "grad_clip": None,  # gradient-norm clipping (None: off)
}

SWIN_RECIPE_KEY = "swin"
# Keys chosen before the network is known (data and network): a `swin:` section cannot set them.
DATA_KEYS = frozenset(
    {"backbone", "image_size", "default_image_size", "normalization", "structures"}
)


def is_swin(backbone_cfg: dict[str, Any]) -> bool:
    """True when `backbone_cfg` builds a Swin encoder (hence a Swin-UNet)."""
    return is_swin_config(backbone_cfg)


def segmentation_recipe(cfg: dict[str, Any], backbone_cfg: dict[str, Any]) -> dict[str, Any]:
    """The training config of one network: `cfg` with its `swin:` section deep-merged over the
    general keys when `backbone_cfg` is a Swin, and that section dropped either way (so the
    result is final: applying it again changes nothing). Transformers need a gentler recipe
    than the ResNet default (clipping, longer warm-up, layer decay); ResNet cfgs stay as given."""
    base = {k: v for k, v in cfg.items() if k != SWIN_RECIPE_KEY}
    section = cfg.get(SWIN_RECIPE_KEY) or {}
    if not isinstance(section, dict):
        raise MedfoundryError(f"config key {SWIN_RECIPE_KEY!r} must be a mapping, got {section!r}")
    bad = sorted(set(section) & DATA_KEYS)
    if bad:
        raise MedfoundryError(f"config: the {SWIN_RECIPE_KEY!r} section cannot set {bad}")
    return merge(base, section) if is_swin(backbone_cfg) else base


def build_segmenter(
    backbone_cfg: dict[str, Any],
    num_classes: int,
    pretrained: CheckpointLike | None = None,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    min_fraction: float = 1.0,
) -> tuple[nn.Module, dict[str, Any]]:
    """A U-Net for `backbone_cfg`, optionally initialised from a pretrained checkpoint (raises
    CheckpointError if the backbone does not load). Returns the model and the load info (empty
    for scratch): ResNet encoders get a ResNet-UNet (`decoder_channels`), Swin encoders a
    Swin-UNet whose decoder loads the checkpoint's pretrained decoder where it matches."""
    swin = is_swin(backbone_cfg)
    decoder_cfg = None
    if pretrained is not None:
        pretrained = resolve_checkpoint(pretrained)  # a Checkpoint passed in is not re-read
        decoder_cfg = pretrained.meta.decoder if swin else None
    model = create_segmenter2d(backbone_cfg, num_classes, decoder_channels, decoder_cfg)
    backbone = model.encoder
    info: dict[str, Any] = {}
    if pretrained is not None:
        report = load_backbone(pretrained, backbone, min_fraction=min_fraction)
        info = {
            "pretrained": str(pretrained),
            "load_report": report.summary(),
            "loaded_tensors": report.loaded,
            "backbone_tensors": report.total_model,
        }
        if swin and has_decoder(pretrained):
            dec = load_decoder(pretrained, model.decoder)
            info["decoder_load_report"] = dec.summary()
            info["load_report"] += f"; {dec.summary()}"
    return model, info


def train_segmenter(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor | None,
    val_y: torch.Tensor | None,
    *,
    backbone_cfg: dict[str, Any],
    pretrained: CheckpointLike | None,
    cfg: dict[str, Any],
    out_dir: Path | None,
    seed: int,
    progress: bool,
    structures: Sequence[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a segmenter on (N, C, H, W) images / (N, K, H, W) 0-1 masks; return (model, info).

    `cfg`: steps, batch_size, val_every, eval_batch_size, decoder_channels, precision,
    accelerator, grad_clip, plus the optimiser/augmentation keys of `SegmentationModule` (lr,
    weight_decay, warmup_steps, warmup_fraction, encoder_lr_mult, layer_decay, augment, ...),
    and optionally a `swin:` section applied by `segmentation_recipe`. `out_dir` (optional) receives
    Lightning's CSV logs only (no checkpoints). The returned model is on the CPU, in eval mode,
    holding the best-by-validation weights (the final ones when there is no validation set).
    """
    c = {**TRAIN_DEFAULTS, **segmentation_recipe(cfg, backbone_cfg)}
    if train_x.shape[0] == 0:
        raise ValueError("train_segmenter: no training images")
    num_classes = int(train_y.shape[1])
    names = list(structures) if structures is not None else [f"c{i}" for i in range(num_classes)]
    seed_everything(seed)
    model, info = build_segmenter(
        backbone_cfg,
        num_classes,
        pretrained,
        decoder_channels=c["decoder_channels"],
        min_fraction=float(c["min_fraction"]),
    )
    steps = int(c["steps"])
    module = SegmentationModule(model, names, cfg=c, max_steps=steps)

    bs = int(c["batch_size"])
    check_batchnorm_batch(model, torch.zeros_like(train_x[:1]), bs, "image_size")
    train_loader = step_batches(TensorDataset(train_x, train_y), steps, bs, seed)
    has_val = val_x is not None and val_y is not None and len(val_x) > 0
    val_loader = None
    if has_val:
        val_loader = DataLoader(
            TensorDataset(val_x, val_y), batch_size=int(c["eval_batch_size"]), shuffle=False
        )
    fitted = fit_best(
        module,
        train_loader,
        val_loader,
        steps=steps,
        monitor="val/dice_mean",
        val_every=max(1, min(int(c["val_every"]), steps)),
        precision=str(c["precision"]),
        accelerator=str(c["accelerator"]),
        devices=c["devices"],
        progress=progress,
        out_dir=out_dir,
        log_every=min(10, steps),
        grad_clip=None if c["grad_clip"] is None else float(c["grad_clip"]),
    )
    info.update(fitted_info(fitted))
    model = module.model.cpu().eval()
    return model, info


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Sigmoid probabilities (N, K, H, W) float32 on the CPU, computed in eval mode."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    was_training = model.training
    model.eval().to(device)
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(torch.sigmoid(model(x[i : i + batch_size].to(device)).float()).cpu())
    model.train(was_training)
    if not out:
        return torch.empty((0,), dtype=torch.float32)
    return torch.cat(out)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 16,
    threshold: float = 0.5,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Dice per image and structure (N, K), float64, at probability `threshold`.

    Both-empty image/structure pairs score 1.0 (see `medfoundry.metrics.segmentation`).
    """
    out = []
    for i in range(0, x.shape[0], batch_size):
        probs = predict(model, x[i : i + batch_size], batch_size=batch_size, device=device)
        out.append(dice_score(probs > threshold, y[i : i + batch_size]))
    return torch.cat(out) if out else torch.empty((0, y.shape[1]), dtype=torch.float64)
