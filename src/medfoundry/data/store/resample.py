"""Resample (D, H, W) volumes to a target voxel spacing, keeping their physical extent.

The new grid has ``round(n * spacing / target)`` voxels per axis (at least 1) and covers the same
extent as the old one: voxel edges line up at both ends (``align_corners=False``), so a voxel
centre ``k`` of the new grid sits at the old continuous index ``(k + 0.5) * n_old / n_new - 0.5``.
The spacing actually reached is ``n_old * spacing / n_new`` (within half a voxel over the extent
of the target). Images use trilinear interpolation (``torch.nn.functional.interpolate``, no
anti-aliasing, as MONAI ``Spacing``); labels use nearest neighbour on the same voxel centres, so
their values are only ever copied, never mixed. A grid whose shape does not change is returned
as is (no interpolation blur).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, int, int]:
    """Voxels per axis of the grid with spacing ``target`` covering the same extent."""
    out = [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True)]
    return out[0], out[1], out[2]


def resample_image(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Trilinear resampling of a (D, H, W) float array to ``shape`` (float32)."""
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape) == shape:
        return np.asarray(array, dtype=np.float32)
    volume = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = F.interpolate(volume, size=shape, mode="trilinear", align_corners=False)
    return out[0, 0].numpy()  # (D', H', W')


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Old index nearest to each new voxel centre along one axis."""
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)


def resample_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of a (D, H, W) label map to ``shape`` (dtype kept)."""
    shape = tuple(int(s) for s in shape)
    if tuple(label.shape) == shape:
        return label
    index = [_nearest_indices(n, m) for n, m in zip(label.shape, shape, strict=True)]
    return label[np.ix_(*index)]  # (D', H', W')


def grid_affine(
    affine: np.ndarray, old_shape: Sequence[int], new_shape: Sequence[int], start: Sequence[int]
) -> np.ndarray:
    """The voxel->mm affine of the resampled grid, cropped to begin at voxel ``start`` of it."""
    ratio = np.asarray(old_shape, np.float64) / np.asarray(new_shape, np.float64)
    to_old = np.eye(4)
    to_old[:3, :3] = np.diag(ratio)
    to_old[:3, 3] = (np.asarray(start, np.float64) + 0.5) * ratio - 0.5
    return np.asarray(affine, dtype=np.float64) @ to_old
