"""Cut a (D, H, W) volume into 2D slices, decide which slices are empty, fit them to a square.

Slices are displayed the usual way (volumes follow ``medfoundry.io.image``'s axis convention):
axial ``array[d]`` (anterior at the top, patient's right on the left); coronal ``array[:, h]``
and sagittal ``array[:, :, w]`` with superior at the top (patient's right on the left,
anterior on the left).

Skip rule (``skip_reasons``): a slice whose raw values are all equal is ``"constant"``; a slice
in which less than ``MIN_FOREGROUND`` (5%) of the pixels are foreground is ``"near_empty"``.
Foreground is tissue: HU > -500 for CT (neither air nor most of the lung), and a value above 0.1
of the volume's 0.5-99.5 percentile range for every other modality (noise and background
stay below). So the air-only slices past the ends of a CT scan (table included: it covers
well under 5% of a slice) and the empty slices of an MR series are dropped, while slices with
any real extent of anatomy are kept.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

AXES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: Fewer foreground pixels than this fraction of the slice: the slice is "near_empty".
MIN_FOREGROUND = 0.05
#: CT foreground: voxels above this many HU.
CT_FOREGROUND_HU = -500.0
#: Other modalities: voxels above this fraction of the volume's percentile range.
UNIT_FOREGROUND = 0.1


def volume_slices(
    array: np.ndarray, spacing: tuple[float, ...], axis: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """A (N, rows, cols) view of the (D, H, W) ``array`` cut along ``axis``, and the pixel
    spacing (rows, cols) of its slices in mm."""
    sd, sh, sw = (float(s) for s in spacing)
    if axis == "axial":
        return array, (sh, sw)
    if axis == "coronal":
        return array.transpose(1, 0, 2)[:, ::-1, :], (sd, sw)
    if axis == "sagittal":
        return array.transpose(2, 0, 1)[:, ::-1, :], (sd, sh)
    raise ValueError(f"unknown slice axis {axis!r}; expected one of {', '.join(AXES)}")


def skip_reasons(
    raw: np.ndarray, foreground: np.ndarray, min_fraction: float = MIN_FOREGROUND
) -> list[str | None]:
    """Per slice of (N, rows, cols) arrays: "constant", "near_empty" or None (keep).

    ``raw`` holds the slice values as read; ``foreground`` is the boolean tissue mask.
    """
    constant = raw.max(axis=(1, 2)) == raw.min(axis=(1, 2))
    fraction = foreground.mean(axis=(1, 2))
    return [
        "constant" if c else ("near_empty" if f < min_fraction else None)
        for c, f in zip(constant.tolist(), fraction.tolist(), strict=True)
    ]


def _resize(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize of a 2D float image, antialiased when shrinking (Pillow, one thread:
    the same values as ``resize_2d`` within 1e-5, without torch's thread start-up per call)."""
    if image.shape == (rows, cols):
        return image.astype(np.float32)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))  # mode "F"
    return np.asarray(pil.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)


def fit_square(image: np.ndarray, spacing: tuple[float, float], size: int) -> np.ndarray:
    """Resize a (rows, cols) image to ``size`` x ``size`` keeping its physical aspect ratio.

    The longer physical side fills the square; the other side is padded evenly with the
    image's lowest value (air/background), so shapes are never stretched.
    """
    rows, cols = image.shape
    height, width = rows * float(spacing[0]), cols * float(spacing[1])
    scale = size / max(height, width)
    new_rows = min(size, max(1, round(height * scale)))
    new_cols = min(size, max(1, round(width * scale)))
    resized = _resize(image, new_rows, new_cols)
    if (new_rows, new_cols) == (size, size):
        return resized
    out = np.full((size, size), float(image.min()), dtype=np.float32)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = resized
    return out
