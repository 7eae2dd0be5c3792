"""2D segmentation data: load a labelled set into memory, and augment batches on the device.

Few-shot segmentation sets are small (tens to hundreds of images), so the whole set is read
once into two tensors, images (N, C, S, S) float32 and masks (N, K, S, S) uint8, and training
draws random batches from them. Augmentation works on whole batches of tensors (one
`affine_grid`/`grid_sample` call), so it runs on the GPU inside `training_step`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.data.image2d import is_constant, resize_2d, to_channels, warn_constant
from medfoundry.data.normalize import XRAY_NORMALIZATION, normalize
from medfoundry.errors import InputError
from medfoundry.io import read_image


class _Item(Protocol):  # medfoundry.data.manifest.SegmentationItem
    id: str
    image: Any
    masks: Mapping[str, Any]


def bilateral_masks(name: str, available: Collection[str]) -> tuple[str, str] | None:
    """The ``left_<x>`` and ``right_<x>`` masks whose union structure ``name`` is, when
    ``available`` holds both (``x``: ``name``, or ``name`` without a plural ``s``: "lungs" ->
    left_lung + right_lung, "clavicle" -> left_clavicle + right_clavicle); else None."""
    for stem in (name, name[:-1] if name.endswith("s") else ""):
        if stem and f"left_{stem}" in available and f"right_{stem}" in available:
            return f"left_{stem}", f"right_{stem}"
    return None


def structure_groups(
    structures: Mapping[str, Sequence[str]] | Sequence[str] | None,
    available: Collection[str] | None = None,
    named: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Normalise a structure spec to {reported structure: the mask names whose union it is}.

    - A mapping name -> mask names: as given.
    - Names: a key of ``named`` (a dataset's own groups, e.g. the JSRT benchmark's
      ``JSRT_STRUCTURES``) is its group; else a name that is no mask of ``available`` (the
      mask names of the data) but has left and right ones is their union (`bilateral_masks`);
      else the mask of that name.
    - None: every mask of ``available`` (sorted), each its own structure.
    """
    if isinstance(structures, Mapping):
        return {str(k): tuple(v) for k, v in structures.items()}
    have = set(available or ())
    if structures is None:
        return {m: (m,) for m in sorted(have)}
    if isinstance(structures, str):
        structures = [structures]
    groups: dict[str, tuple[str, ...]] = {}
    for s in structures:
        pair = None if s in have else bilateral_masks(s, have)
        groups[s] = tuple((named or {}).get(s) or pair or (s,))
    return groups


def check_binary_mask(mask: np.ndarray, path: Any) -> None:
    """Raise an ``InputError`` naming ``path`` unless ``mask`` holds 0 (background) and at most
    one other value (the foreground, e.g. 1 or 255): a grayscale image or a lossy (JPEG) mask
    given as a mask would otherwise count every non-zero pixel as foreground."""
    top = mask.max() if mask.size else 0
    if ((mask == 0) | (mask == top)).all():  # O(n), no sort: the usual case
        return
    values = np.unique(mask)
    shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    raise InputError(
        path,
        f"not a binary mask (found {len(values)} distinct values, e.g. {shown}); a mask holds "
        "0 for background and one foreground value (e.g. 255), saved losslessly (PNG, not JPEG)",
    )


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a binary (H, W) mask: area-average + threshold 0.5 when shrinking, else nearest."""
    if mask.shape == size:
        return mask
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    if size[0] <= mask.shape[0] and size[1] <= mask.shape[1]:
        out = F.interpolate(t, size=size, mode="area") >= 0.5
    else:
        out = F.interpolate(t, size=size, mode="nearest") > 0.5
    return out[0, 0].numpy()


def load_segmentation_set(
    items: Sequence[_Item],
    size: int | tuple[int, int],
    structures: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images and masks into (N, C, S, S) float32 images and (N, K, S, S) uint8 masks.

    Each item has `.image` and `.masks` (structure -> mask path), as returned by
    `medfoundry.data.manifest.scan_segmentation_folder`. `structures` as `structure_groups`
    takes it, the first item's masks being the available ones (None: each of them its own
    structure). A mask must be binary (0 and one foreground value, `check_binary_mask`) and is
    foreground where its value is > 0; a group's masks are united, and every mask must have
    its image's height and width.
    Images are normalised with `normalization` (X-ray default) and resized bilinearly (with
    antialiasing); masks are resized by area averaging + threshold 0.5.
    """
    groups = structure_groups(structures, items[0].masks if items else ())
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    spec = normalization or XRAY_NORMALIZATION
    n = len(items)
    images = torch.empty((n, channels, *hw), dtype=torch.float32)
    masks = torch.zeros((n, len(groups), *hw), dtype=torch.uint8)
    constant = []
    for i, item in enumerate(items):
        image = read_image(item.image, ndim=2)
        array = image.array
        if array.ndim != 3:
            raise InputError(item.image, f"expected a 2D image, got shape {array.shape[1:]}")
        if not np.isfinite(array).all():
            raise InputError(item.image, "contains NaN or infinite intensities")
        if is_constant(array):
            constant.append(item.image)
        image_hw = tuple(int(s) for s in array.shape[1:])
        array = resize_2d(to_channels(array, channels, item.image), hw)
        images[i] = torch.from_numpy(np.ascontiguousarray(normalize(array, spec)))
        for k, (name, members) in enumerate(groups.items()):
            union = np.zeros(image_hw, dtype=bool)
            for member in members:
                path = item.masks.get(member)
                if path is None:
                    raise InputError(
                        item.image,
                        f"no {member!r} mask for structure {name!r} "
                        f"(masks found: {sorted(item.masks)})",
                    )
                m = read_image(path, ndim=2).array
                if m.ndim != 3 or tuple(m.shape[1:]) != image_hw:
                    raise InputError(
                        path,
                        f"mask shape {tuple(m.shape[1:])} differs from its image "
                        f"{item.image} shape {image_hw}",
                    )
                check_binary_mask(m, path)
                union |= (m > 0).any(axis=0)
            masks[i, k] = torch.from_numpy(_resize_mask(union, hw))
    warn_constant(constant)
    return images, masks
