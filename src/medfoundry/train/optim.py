"""The fine-tuning optimiser shared by the 2D and 3D segmentation modules.

AdamW with the encoder at ``encoder_lr_mult`` times the learning rate, optionally layer-wise lr
decay inside the encoder (``layer_decay``, MAE/BEiT fine-tuning), no weight decay where
``nets.decay.no_weight_decay`` says so, and a per-step linear warm-up + cosine schedule. With
``head_warmup_steps`` > 0 and the names of the new parts, only the new parts (the fresh head)
train for those first steps; the pretrained parts then warm up and decay on their own schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medfoundry.errors import MedfoundryError
from medfoundry.nets.decay import no_weight_decay
from medfoundry.train.schedules import warmup_cosine


def layer_decay_scales(encoder: nn.Module, decay: float) -> dict[int, tuple[int, float]]:
    """``id(param) -> (layer id, lr scale)`` for the encoder's parameters: layer id l of an
    encoder with depth L (its ``layer_id``/``num_layers``, e.g. ``SwinBackbone``) trains at
    ``decay ** (L - l)`` times the lr, so the patch embedding moves least and the top most.

    Raises MedfoundryError for an encoder that defines no layer ids (ResNets: no layer decay)."""
    if not (hasattr(encoder, "layer_id") and hasattr(encoder, "num_layers")):
        raise MedfoundryError(
            f"layer_decay: {type(encoder).__name__} defines no layer ids (only Swin encoders "
            "support layer-wise lr decay); set layer_decay to null"
        )
    depth = int(encoder.num_layers)
    out: dict[int, tuple[int, float]] = {}
    for name, p in encoder.named_parameters():
        layer = int(encoder.layer_id(name))
        out[id(p)] = (layer, float(decay) ** (depth - layer))
    return out


def warmup_steps(cfg: dict[str, Any], max_steps: int) -> int:
    """``warmup_steps`` when set, else ``warmup_fraction`` (default 5 %) of ``max_steps``."""
    steps = cfg.get("warmup_steps")
    if steps is not None:
        return int(steps)
    fraction = cfg.get("warmup_fraction")
    return int(round((0.05 if fraction is None else float(fraction)) * max_steps))


def encoder_aware_adamw(
    model: nn.Module,
    cfg: dict[str, Any],
    max_steps: int,
    new_parts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer for ``model`` (its ``encoder`` attribute, when
    it has one, gets the lr multiplier). cfg keys: lr, weight_decay, encoder_lr_mult,
    layer_decay (None: off; else per-layer encoder lr scales, see ``layer_decay_scales``; the
    decoder and head keep the full lr), warmup_steps (None: ``warmup_fraction``, default 5 %,
    of ``max_steps``), min_lr_ratio, head_warmup_steps (default 0; with ``new_parts``, the
    top-level module names no checkpoint initialised, every other parameter keeps lr 0 for
    that many steps, then follows warm-up + cosine over the remaining steps)."""
    lr = float(cfg["lr"])
    wd = float(cfg["weight_decay"])
    mult = float(cfg.get("encoder_lr_mult", 1.0))
    encoder = getattr(model, "encoder", None)
    enc_ids = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    decay = cfg.get("layer_decay")
    scales = {} if decay is None or encoder is None else layer_decay_scales(encoder, decay)
    # key: (encoder?, exempt from decay?, layer id or None); its lr scale
    hold = int(cfg.get("head_warmup_steps") or 0) if new_parts else 0
    fresh = set(new_parts or ())
    # key: (encoder?, exempt from decay?, layer id or None, held during the head warm-up?)
    groups: dict[tuple[bool, bool, int | None, bool], list[nn.Parameter]] = {}
    group_scale: dict[tuple[bool, bool, int | None, bool], float] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        enc = id(p) in enc_ids
        layer, scale = scales.get(id(p), (None, 1.0))
        key = (enc, no_weight_decay(name, p), layer, hold > 0 and name.split(".")[0] not in fresh)
        groups.setdefault(key, []).append(p)
        group_scale[key] = scale * (mult if enc else 1.0)
    keys = list(groups)
    param_groups = [
        {"params": groups[k], "lr": lr * group_scale[k], "weight_decay": 0.0 if k[1] else wd}
        for k in keys
    ]
    opt = torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd)
    warmup = warmup_steps(cfg, max_steps)
    min_ratio = float(cfg.get("min_lr_ratio", 0.0))

    def main(step: int) -> float:
        return warmup_cosine(step, warmup, max_steps, min_ratio)

    def held(step: int) -> float:
        if step < hold:
            return 0.0
        return warmup_cosine(step - hold, warmup, max(1, max_steps - hold), min_ratio)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, [held if k[3] else main for k in keys])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def zero_last_layer(module: nn.Module) -> int:
    """Zero the weight and bias of ``module``'s last convolution or linear layer (a fresh
    output head that starts at uniform softmax, so early gradients do not push pretrained
    features around at random); returns how many layers were zeroed (0 or 1)."""
    last = None
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            last = m
    if last is None:
        return 0
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    return 1


def init_new_parts(
    model: nn.Module, fresh: Sequence[str] | None, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Apply ``head_init`` to the parts a checkpoint left new (``fresh``; None: no checkpoint,
    nothing to do); returns what was done, for the run's info."""
    rule = str(cfg.get("head_init", "default"))
    if rule not in ("default", "zero"):
        raise MedfoundryError(f"config head_init: {rule!r}; choose 'default' or 'zero'")
    hold = int(cfg.get("head_warmup_steps") or 0)
    if fresh is None:
        return {}
    out: dict[str, Any] = {"head_init": rule, "head_warmup_steps": hold}
    if rule == "zero":
        out["zeroed_layers"] = sum(zero_last_layer(getattr(model, p)) for p in fresh)
    return out
