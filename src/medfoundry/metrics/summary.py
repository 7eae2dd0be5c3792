"""Small statistics shared by reports."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaNs ignored)."""
    vals = [float(v) for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def describe(values: Sequence[float]) -> dict[str, float]:
    """`mean_sd` as a JSON-friendly dict with the count of (non-NaN) values."""
    vals = [v for v in values if v is not None and v == v]
    m, sd = mean_sd(vals)
    return {"mean": m, "sd": sd, "n": len(vals)}
