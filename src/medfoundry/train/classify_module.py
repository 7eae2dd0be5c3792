"""LightningModule for image classification on a (pretrained) backbone: fine-tune or linear probe."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.data.augment import intensity_shift_augment
from medfoundry.metrics.classification import accuracy, roc_auc
from medfoundry.nets.decay import no_weight_decay
from medfoundry.train.schedules import cosine_lambda


class ClassificationModule(L.LightningModule):
    """Backbone + linear head; `linear_probe=True` freezes the backbone (and its BN statistics)."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        cfg: dict[str, Any],
        total_steps: int,
        linear_probe: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, num_classes)
        self.cfg = cfg
        self.total_steps = max(1, total_steps)
        self.linear_probe = linear_probe
        if linear_probe:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear_probe:
            self.backbone.eval()
            with torch.no_grad():
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.head(feats)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        if self.cfg.get("augment", True):
            x = intensity_shift_augment(x)
        loss = F.cross_entropy(
            self(x), y, label_smoothing=float(self.cfg.get("label_smoothing", 0.0))
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self._val_scores.append(logits.float().softmax(-1).detach().cpu())
        self._val_labels.append(y.detach().cpu())

    def on_validation_epoch_end(self) -> None:
        if not self._val_scores:
            return
        probs = torch.cat(self._val_scores)
        labels = torch.cat(self._val_labels)
        self._val_scores.clear()
        self._val_labels.clear()
        auc = roc_auc(probs[:, 1], labels == 1) if probs.shape[1] == 2 else float("nan")
        acc = accuracy(probs.argmax(-1), labels)
        nll = float(F.nll_loss(probs.clamp_min(1e-8).log(), labels))
        self.log("val/auc", auc)
        self.log("val/acc", acc)
        self.log("val/loss", nll)
        # model selection score: AUC when defined (binary), else accuracy
        self.log("val/score", auc if auc == auc else acc, prog_bar=True)

    def configure_optimizers(self) -> Any:
        wd = float(self.cfg.get("weight_decay", 1e-4))
        decay, exempt = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (exempt if no_weight_decay(name, p) else decay).append(p)
        groups = [{"params": decay, "weight_decay": wd}, {"params": exempt, "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=float(self.cfg["lr"]))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_lambda(self.total_steps, int(self.cfg.get("warmup_steps") or 0))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
