"""Few-label classification from a pretrained (or random) backbone: train, predict, evaluate."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from medfoundry.metrics.classification import accuracy, roc_auc
from medfoundry.nets import create_backbone
from medfoundry.runtime import seed_everything
from medfoundry.train.batchnorm_check import check_batchnorm_batch
from medfoundry.train.classify_module import ClassificationModule
from medfoundry.train.fit import fit_best, step_batches
from medfoundry.zoo import CheckpointLike, load_backbone


def build_classifier_backbone(
    backbone_cfg: dict[str, Any], pretrained: CheckpointLike | None
) -> tuple[torch.nn.Module, str]:
    """Create the backbone and load pretrained weights; returns it and a load summary."""
    backbone = create_backbone(**backbone_cfg)
    if pretrained is None:
        return backbone, "random initialisation"
    report = load_backbone(pretrained, backbone)
    return backbone, report.summary()


def train_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    backbone_cfg: dict[str, Any],
    pretrained: CheckpointLike | None,
    cfg: dict[str, Any],
    seed: int,
    num_classes: int = 2,
    linear_probe: bool = False,
    progress: bool = True,
) -> tuple[ClassificationModule, dict[str, Any]]:
    """Train for `cfg["steps"]` steps on random batches; keep the best weights by validation AUC."""
    seed_everything(seed)
    backbone, load_summary = build_classifier_backbone(backbone_cfg, pretrained)
    steps = int(cfg["steps"])
    batch = int(cfg["batch_size"])
    module = ClassificationModule(backbone, num_classes, cfg, steps, linear_probe=linear_probe)
    if not linear_probe:  # a frozen backbone keeps its BatchNorm in eval mode
        check_batchnorm_batch(backbone, torch.zeros_like(train_x[:1]), batch, "image_size")
    train_loader = step_batches(TensorDataset(train_x, train_y), steps, batch, seed)
    val_loader = DataLoader(TensorDataset(val_x, val_y), batch_size=max(batch, 32))
    fitted = fit_best(
        module,
        train_loader,
        val_loader,
        steps=steps,
        monitor="val/score",
        val_every=int(cfg.get("val_every", max(1, steps // 10))),
        precision=str(cfg.get("precision", "32-true")),
        accelerator=str(cfg.get("accelerator", "auto")),
        devices=1,
        progress=progress,
        max_epochs=1,
    )
    keep = fitted.best
    info = {"load": load_summary, "best_val_score": keep.best_score, "best_step": keep.best_step}
    return module, info


@torch.no_grad()
def predict_proba(
    module: ClassificationModule,
    x: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities (N, K) on the CPU, in eval mode, on `device` (default: the module's)."""
    module.eval()
    if device is not None:
        module.to(device)
    dev = next(module.parameters()).device
    outs = [
        module(x[i : i + batch_size].to(dev)).float().softmax(-1).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(outs)


def evaluate_classifier(
    module: ClassificationModule,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """AUC (binary: positive class 1) and accuracy on a labeled set."""
    probs = predict_proba(module, x, batch_size=batch_size, device=device)
    return {"auc": roc_auc(probs[:, 1], y == 1), "accuracy": accuracy(probs.argmax(-1), y)}
