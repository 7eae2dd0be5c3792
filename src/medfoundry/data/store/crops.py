"""Where 3D crops start, and reading one crop (zero-padded) out of a memory-mapped volume.

Crop rule: a crop of ``size`` voxels along an axis of ``n`` voxels starts at a position where it
covers as much of the volume as possible: uniformly in [0, n - size] when the volume is larger,
and in [n - size, 0] when it is smaller (the whole volume then lies inside the crop, at a random
offset, and the rest is padding). Centred crops put the given voxel at index ``size // 2`` and
are then shifted into that same range, so they stay inside the volume and still hold the voxel.
Padding is 0 (the [0, 1] image's background and the label's background). A crop is never
smaller than ``size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _start_range(shapes: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest allowed start per crop and axis, (N, 3) each."""
    excess = shapes - size
    return np.minimum(excess, 0), np.maximum(excess, 0)


def random_starts(
    shapes: np.ndarray, size: Sequence[int], generator: np.random.Generator
) -> np.ndarray:
    """(N, 3) uniformly drawn starts of ``size`` crops in volumes of (N, 3) ``shapes``."""
    low, high = _start_range(np.asarray(shapes, np.int64), np.asarray(size, np.int64))
    return generator.integers(low, high + 1)  # (N, 3)


def centred_starts(centres: np.ndarray, shapes: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """(N, 3) starts of crops centred on (N, 3) voxels, shifted to stay inside the volume."""
    size_a = np.asarray(size, np.int64)
    low, high = _start_range(np.asarray(shapes, np.int64), size_a)
    return np.clip(np.asarray(centres, np.int64) - size_a // 2, low, high)  # (N, 3)


def read_padded(volume: np.ndarray, start: Sequence[int], out: np.ndarray) -> None:
    """Copy the part of (D, H, W) ``volume`` under the crop at ``start`` into the zeroed
    ``out`` (d, h, w); only that part is read (a memmap decodes nothing else)."""
    start_a = np.asarray(start, np.int64)
    lo = np.maximum(start_a, 0)
    hi = np.minimum(start_a + np.asarray(out.shape, np.int64), np.asarray(volume.shape, np.int64))
    if np.any(hi <= lo):
        return
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a, b) for a, b in zip(lo - start_a, hi - start_a, strict=True))
    out[dst] = volume[src]
