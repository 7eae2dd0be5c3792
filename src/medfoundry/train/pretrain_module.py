"""LightningModule wrapping any SSL method whose forward returns {"loss", ...} for a batch."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from medfoundry.train.schedules import cosine_lambda


class PretrainModule(L.LightningModule):
    """Trains `method` (an nn.Module: images -> dict with "loss"); validation never updates it.

    The optimiser follows the method's recipe: SGD + cosine for MoCo/Adam, AdamW + warm-up +
    cosine for MAE; the lr is scaled with the global batch (lr = base_lr * global_batch / 256).
    A method with ``param_groups(weight_decay)`` decides itself what is decayed.
    """

    def __init__(
        self, method: nn.Module, optim: dict[str, Any], total_steps: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.method = method
        self.optim = dict(optim)
        self.total_steps = max(1, int(total_steps))
        self.seed = int(seed)
        self._progress_total: int | None = None

    def on_train_start(self) -> None:
        """Under DDP, give each rank its own random stream (views, masks, flips differ)."""
        if self.trainer.world_size > 1:
            torch.manual_seed(self.seed + 1000 * self.trainer.global_rank + self.current_epoch)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if hasattr(self.method, "set_progress"):  # schedules inside the method (EMA momentum)
            if self._progress_total is None:
                self._progress_total = self._schedule_steps()[0]
            self.method.set_progress(self.global_step / max(1, self._progress_total))
        out = self.method(batch, update=True)
        self._log("train", out, batch.shape[0], prog_bar=True)
        return out["loss"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.method(batch, update=False)
        self._log("val", out, batch.shape[0], prog_bar=False)

    def _log(self, stage: str, out: dict[str, torch.Tensor], n: int, prog_bar: bool) -> None:
        for key, value in out.items():
            self.log(
                f"{stage}/{key}",
                value.detach().float(),
                batch_size=n,
                prog_bar=prog_bar and key == "loss",
                on_step=stage == "train",
                on_epoch=True,
                sync_dist=stage == "val",
            )

    def configure_optimizers(self) -> Any:
        cfg = self.optim
        world = max(1, self.trainer.world_size) if self._trainer is not None else 1
        lr = float(cfg["lr"])
        if cfg.get("scale_lr", True):  # MoCo/MAE rule; 3D recipes give an absolute lr
            lr *= float(cfg["batch_size"]) * world / 256.0
        groups = self._param_groups(float(cfg["weight_decay"]))
        name = cfg.get("optimizer", "sgd")
        if name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=float(cfg.get("momentum", 0.9))
            )
        elif name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
        else:
            raise ValueError(f"unknown optimizer {name!r} (sgd, adamw)")
        total, warmup = self._schedule_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _schedule_steps(self) -> tuple[int, int]:
        """(total, warm-up) optimiser steps of this rank: from the trainer when attached (under
        DDP each rank sees 1/world of the batches), else the constructor's estimate."""
        total = self.total_steps
        trainer = self._trainer
        if trainer is not None:
            est = trainer.estimated_stepping_batches
            if math.isfinite(est) and est > 0:
                total = int(est)
        warmup = int(self.optim.get("warmup_steps") or 0)
        epochs = getattr(trainer, "max_epochs", None) if trainer is not None else None
        if self.optim.get("warmup_epochs") and epochs:
            warmup = int(float(self.optim["warmup_epochs"]) * total / epochs)
        return total, warmup

    def _param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The method's own groups when it has them, else all trainable parameters decayed
        (norms and biases exempt with ``exclude_norm_bias``)."""
        if hasattr(self.method, "param_groups"):
            return [g for g in self.method.param_groups(weight_decay) if g["params"]]
        exempt = bool(self.optim.get("exclude_norm_bias", False))
        decay, no_decay = [], []
        for param in self.method.parameters():
            if param.requires_grad:
                (no_decay if exempt and param.ndim <= 1 else decay).append(param)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups
