"""Turn a 2D image file into a model-ready tensor: read, check, channel-adapt, resize, normalise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.data.normalize import XRAY_NORMALIZATION, normalize
from medfoundry.errors import InputError
from medfoundry.io import read_image


def to_channels(array: np.ndarray, channels: int, path: str | Path) -> np.ndarray:
    """Adapt a (C, H, W) array to `channels` (RGB -> gray by mean, gray -> repeated)."""
    c = array.shape[0]
    if c == channels:
        return array
    if channels == 1 and c == 3:
        return array.mean(axis=0, keepdims=True)
    if channels == 3 and c == 1:
        return np.repeat(array, 3, axis=0)
    raise InputError(path, f"has {c} channels; expected {channels} (or 1/3 to convert)")


def resize_2d(array: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a (C, H, W) array to `size` (antialiased when shrinking, nearest for masks)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(array.shape[-2:]) == hw:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if mode == "nearest":
        out = F.interpolate(t, size=hw, mode="nearest")
    else:
        out = F.interpolate(t, size=hw, mode=mode, align_corners=False, antialias=True)
    return out[0].numpy()


def load_2d(
    path: str | Path,
    size: int | tuple[int, int],
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Read a 2D image file into a normalised float32 tensor (channels, H, W)."""
    image = read_image(path, ndim=2)
    array = image.array
    if array.ndim != 3:
        raise InputError(path, f"expected a 2D image, got an array of shape {array.shape[1:]}")
    if not np.isfinite(array).all():
        raise InputError(path, "contains NaN or infinite intensities")
    array = to_channels(array, channels, path)
    array = resize_2d(array, size)
    array = normalize(array, normalization or XRAY_NORMALIZATION)
    return torch.from_numpy(np.ascontiguousarray(array))
