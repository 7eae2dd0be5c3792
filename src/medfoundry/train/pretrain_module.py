"""LightningModule wrapping any SSL method whose forward returns {"loss", ...} for a batch."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from medfoundry.train.schedules import cosine_lambda


class PretrainModule(L.LightningModule):
    """Trains `method` (an nn.Module: images -> dict with "loss"); validation never updates it.

    The optimiser follows the method's recipe: SGD + cosine for MoCo/Adam (lr scaled with the
    global batch, as in MoCo: lr = base_lr * global_batch / 256).
    """

    def __init__(self, method: nn.Module, optim: dict[str, Any], total_steps: int) -> None:
        super().__init__()
        self.method = method
        self.optim = dict(optim)
        self.total_steps = max(1, int(total_steps))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
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
        lr = float(cfg["lr"]) * float(cfg["batch_size"]) * world / 256.0
        decay, no_decay = [], []
        for _name, param in self.method.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 and cfg.get("exclude_norm_bias", False) else decay).append(
                param
            )
        groups = [{"params": decay, "weight_decay": float(cfg["weight_decay"])}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        name = cfg.get("optimizer", "sgd")
        if name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=lr, momentum=float(cfg.get("momentum", 0.9))
            )
        elif name == "adamw":
            opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
        else:
            raise ValueError(f"unknown optimizer {name!r} (sgd, adamw)")
        warmup = int(cfg.get("warmup_steps", 0))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(self.total_steps, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
