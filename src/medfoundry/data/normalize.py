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
