"""Intensity normalisation per modality, described by a dict that travels in checkpoints.

Pretraining and fine-tuning must feed the backbone the same intensities; storing the spec in
`medfoundry.json` and applying it through `normalize()` everywhere guarantees that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# X-rays: robust per-image min-max to [0, 1] (works for 8-bit, 16-bit and DICOM alike),
# then a fixed affine map so values are roughly zero-mean, unit-variance.
XRAY_NORMALIZATION: dict[str, Any] = {
    "name": "percentile_minmax",
    "lower": 0.5,
    "upper": 99.5,
    "mean": 0.5,
    "std": 0.25,
}


def normalize(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Apply the normalisation `spec` to an image array (any shape) and return float32."""
    array = np.asarray(array, dtype=np.float32)
    name = spec.get("name")
    if name == "percentile_minmax":
        lo, hi = np.percentile(array, [spec["lower"], spec["upper"]])
        scaled = np.clip((array - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
        return ((scaled - spec["mean"]) / spec["std"]).astype(np.float32)
    if name == "none":
        return array
    raise ValueError(f"unknown normalisation {name!r}")


# CT windows as (level, width) in HU. "wide" spans -1000..1000 HU: air to dense bone in one
# image, the default of `prepare-2d` because it loses the least.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "wide": (0.0, 2000.0),
}


def parse_ct_window(text: str) -> tuple[str, float, float]:
    """A window preset name or "L,W" (level, width in HU) as (name, level, width).

    A custom window is named like ``L-600W1500`` (safe in file names).
    """
    key = text.strip().lower()
    if key in CT_WINDOWS:
        level, width = CT_WINDOWS[key]
        return key, level, width
    parts = key.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        level, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(
            f"unknown CT window {text!r}: use one of {', '.join(CT_WINDOWS)} or 'LEVEL,WIDTH'"
        ) from None
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"CT window {text!r}: level must be finite and width > 0")
    return f"L{level:g}W{width:g}", level, width


def window_to_unit(array: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map HU to [0, 1] through the window (level, width): below it 0, above it 1."""
    low = level - width / 2.0
    return np.clip((np.asarray(array, dtype=np.float32) - low) / width, 0.0, 1.0)


def percentile_bounds(
    array: np.ndarray, lower: float = 0.5, upper: float = 99.5, max_samples: int = 4_000_000
) -> tuple[float, float]:
    """The (lower, upper) percentiles of an array, from at most ``max_samples`` strided values."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_samples)
    lo, hi = np.percentile(flat[::step], [lower, upper])
    return float(lo), float(hi)


def range_to_unit(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly to [0, 1], clipping outside (all zeros when high <= low)."""
    scale = 1.0 / (high - low) if high > low else 0.0
    return np.clip((np.asarray(array, dtype=np.float32) - low) * scale, 0.0, 1.0)
