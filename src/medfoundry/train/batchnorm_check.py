"""Refuse a training batch that leaves some BatchNorm layer one value per channel.

Batch 1 at the smallest input (a 32-px image or a 32³ patch through a ResNet that downsamples
32×) gives the deepest BatchNorm a 1 × 1 map per channel, and PyTorch then fails inside the
first training step with a traceback; this check says so before any work, naming the keys.
"""

from __future__ import annotations

import torch
from torch import nn

from medfoundry.errors import MedfoundryError


def batchnorm_values(model: nn.Module, sample: torch.Tensor) -> int | None:
    """Fewest values per channel any BatchNorm layer of ``model`` sees for ``sample`` (1, C, ...),
    from one forward pass in eval mode; None when the model has no BatchNorm."""
    seen: list[int] = []

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        seen.append(x.numel() // max(1, x.shape[1]))

    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return None
    hooks = [m.register_forward_pre_hook(record) for m in layers]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return min(seen) if seen else None


def check_batchnorm_batch(
    model: nn.Module, sample: torch.Tensor, batch: int, size_key: str
) -> None:
    """Raise MedfoundryError unless a training batch of ``batch`` inputs like ``sample`` gives
    every BatchNorm layer of ``model`` at least 2 values per channel (``size_key`` names the
    config key of the input size in the message)."""
    per_input = batchnorm_values(model, sample)
    if per_input is not None and per_input * int(batch) < 2:
        size = list(sample.shape[2:])
        raise MedfoundryError(
            f"config batch_size {batch} with {size_key} {size}: the network's deepest "
            "BatchNorm sees one value per channel, and it needs at least 2 in training; use "
            f"batch_size >= 2 or a larger {size_key}"
        )
