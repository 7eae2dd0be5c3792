"""The fine-tuning optimiser shared by the 2D and 3D segmentation modules.

AdamW with the encoder at ``encoder_lr_mult`` times the learning rate, no weight decay where
``nets.decay.no_weight_decay`` says so, and a per-step linear warm-up + cosine schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfoundry.nets.decay import no_weight_decay
from medfoundry.train.schedules import warmup_cosine


def encoder_aware_adamw(model: nn.Module, cfg: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``model`` (its ``encoder`` attribute, when
    it has one, gets the lr multiplier). cfg keys: lr, weight_decay, encoder_lr_mult,
    warmup_steps (None: 5 % of ``max_steps``), min_lr_ratio."""
    lr = float(cfg["lr"])
    wd = float(cfg["weight_decay"])
    mult = float(cfg.get("encoder_lr_mult", 1.0))
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:  # key: (encoder?, exempt from decay?)
            groups.setdefault((id(p) in enc_ids, no_weight_decay(name, p)), []).append(p)
    param_groups = [
        {"params": ps, "lr": lr * (mult if enc else 1.0), "weight_decay": 0.0 if exempt else wd}
        for (enc, exempt), ps in groups.items()
    ]
    opt = torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd)
    warmup = cfg.get("warmup_steps")
    warmup = int(round(0.05 * max_steps)) if warmup is None else int(warmup)
    min_ratio = float(cfg.get("min_lr_ratio", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup, max_steps, min_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
