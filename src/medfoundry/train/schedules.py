"""Learning-rate schedules shared by every training module."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Learning-rate factor: linear warm-up to 1 over `warmup` steps, then cosine to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_lambda(
    total_steps: int, warmup_steps: int = 0, final_fraction: float = 0.0
) -> Callable[[int], float]:
    """`warmup_cosine` as a one-argument function, for `torch.optim.lr_scheduler.LambdaLR`."""
    return lambda step: warmup_cosine(step, warmup_steps, total_steps, final_fraction)
