"""Turn a 2D image file into a model-ready tensor: read, check, channel-adapt, resize, normalise."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
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
    constant: list[Path] | None = None,
) -> torch.Tensor:
    """Read a 2D image file into a normalised float32 tensor (channels, H, W)."""
    return load_2d_sized(path, size, channels, normalization, constant)[0]


def is_constant(array: np.ndarray) -> bool:
    """Whether every pixel of ``array`` is equal (two reductions, no copy)."""
    return bool(array.size) and bool(array.max() == array.min())


def warn_constant(paths: Sequence[str | Path]) -> None:
    """One warning naming the constant images among the inputs (accepted: they train nothing,
    but a folder of them is a sign of a bad export or the wrong folder)."""
    if not paths:
        return
    shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
    kind = "a constant image" if len(paths) == 1 else f"{len(paths)} constant images"
    warnings.warn(
        f"{shown}: {kind} (every pixel equal: nothing to learn from); check the export",
        UserWarning,
        stacklevel=3,
    )


def load_2d_sized(
    path: str | Path,
    size: int | tuple[int, int],
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
    constant: list[Path] | None = None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``load_2d`` and the image's stored (H, W), for callers that work in stored pixels.

    A constant image (every pixel equal) is accepted with a warning naming it; a caller
    loading many passes ``constant`` to collect them and warns once (``warn_constant``)."""
    image = read_image(path, ndim=2)
    array = image.array
    if array.ndim != 3:
        raise InputError(path, f"expected a 2D image, got an array of shape {array.shape[1:]}")
    if not np.isfinite(array).all():
        raise InputError(path, "contains NaN or infinite intensities")
    if is_constant(array):
        if constant is None:
            warn_constant([Path(path)])
        else:
            constant.append(Path(path))
    stored = (int(array.shape[-2]), int(array.shape[-1]))
    return image_to_tensor(array, size, channels, normalization, path), stored


def image_to_tensor(
    array: np.ndarray,
    size: int | tuple[int, int],
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
    where: str | Path = "image",
) -> torch.Tensor:
    """A decoded (C, H, W) float32 image as ``load_2d`` returns it: channel-adapted, resized,
    normalised. The one code path for files and for the 2D store (``data.store.images2d``), so
    both give the same tensor bit for bit; ``where`` names the image in errors."""
    array = to_channels(array, channels, where)
    array = resize_2d(array, size)
    array = normalize(array, normalization or XRAY_NORMALIZATION)
    return torch.from_numpy(np.ascontiguousarray(array))
