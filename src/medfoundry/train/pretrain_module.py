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

    Optional ``optim`` keys, each off by default (DINO / Adam-v2 use them): ``min_lr`` (the
    cosine ends at this absolute lr instead of 0), ``weight_decay_end`` (decayed groups follow a
    cosine from ``weight_decay`` to it over the stage), ``grad_clip`` with ``grad_clip_mode``
    (``norm``: the global gradient norm; ``per_param``: each parameter's, DINO's rule). A method
    with ``before_optimizer_step(epoch)`` is called after backward, before clipping and the step
    (Adam-v2 drops its last layer's gradients in the first epoch).
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
        if self.optim.get("weight_decay_end") is not None:
            self._schedule_weight_decay()
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
        if cfg.get("weight_decay_end") is not None:  # what the weight-decay schedule scales
            for group in opt.param_groups:
                group["initial_weight_decay"] = group["weight_decay"]
        total, warmup = self._schedule_steps()
        final = float(cfg["min_lr"]) / lr if cfg.get("min_lr") is not None else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total, warmup, final))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _schedule_weight_decay(self) -> None:
        """Decayed groups: cosine from ``weight_decay`` to ``weight_decay_end`` over the stage
        (DINO's schedule; a group's own ratio to ``weight_decay`` is kept, undecayed stay 0)."""
        start, end = float(self.optim["weight_decay"]), float(self.optim["weight_decay_end"])
        total = self._progress_total or self._schedule_steps()[0]
        self._progress_total = total
        p = min(1.0, self.global_step / max(1, total))
        wd = end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                initial = group.get("initial_weight_decay", group["weight_decay"])
                if initial > 0 and start > 0:
                    group["weight_decay"] = wd * initial / start

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The method's hook (e.g. a frozen last layer) before clipping and the step."""
        if hasattr(self.method, "before_optimizer_step"):
            self.method.before_optimizer_step(int(self.current_epoch))

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``optim.grad_clip`` when set (``grad_clip_mode``: ``norm`` or ``per_param``), else
        whatever the trainer was given (by default nothing)."""
        clip = self.optim.get("grad_clip")
        if clip is None:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )
            return
        mode = str(self.optim.get("grad_clip_mode", "norm"))
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        if mode == "norm":
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], float(clip)
            )
        elif mode == "per_param":
            clip_per_parameter_(grads, float(clip))
        else:
            raise ValueError(f"optim.grad_clip_mode must be 'norm' or 'per_param', got {mode!r}")

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


@torch.no_grad()
def clip_per_parameter_(grads: list[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient whose L2 norm exceeds ``max_norm`` down to it, one parameter at a
    time (DINO's ``clip_gradients``: ``g *= max_norm / (|g| + 1e-6)`` when that is < 1)."""
    norms = torch._foreach_norm(grads)
    coefs = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, coefs)
