"""2D segmentation data: load a labelled set into memory, and augment batches on the device.

Few-shot segmentation sets are small (tens to hundreds of images), so the whole set is read
once into two tensors, images (N, C, S, S) float32 and masks (N, K, S, S) uint8, and training
draws random batches from them. Augmentation works on whole batches of tensors (one
`affine_grid`/`grid_sample` call), so it runs on the GPU inside `training_step`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medfoundry.data.image2d import is_constant, resize_2d, to_channels, warn_constant
from medfoundry.data.normalize import XRAY_NORMALIZATION, normalize
from medfoundry.errors import InputError
from medfoundry.io import read_image

# Reported structure -> the mask files whose union it is (JSRT/SCR names).
STRUCTURE_GROUPS: dict[str, tuple[str, ...]] = {
    "heart": ("heart",),
    "clavicle": ("left_clavicle", "right_clavicle"),
    "lungs": ("left_lung", "right_lung"),
}


class _Item(Protocol):  # medfoundry.data.manifest.SegmentationItem
    id: str
    image: Any
    masks: Mapping[str, Any]


def structure_groups(
    structures: Mapping[str, Sequence[str]] | Sequence[str] | None,
) -> dict[str, tuple[str, ...]]:
    """Normalise a structure spec: a mapping name -> mask names, or names (each its own mask).

    Names that are keys of `STRUCTURE_GROUPS` expand to their group ("clavicle" -> left+right).
    """
    if structures is None:
        return dict(STRUCTURE_GROUPS)
    if isinstance(structures, Mapping):
        return {str(k): tuple(v) for k, v in structures.items()}
    if isinstance(structures, str):
        structures = [structures]
    return {s: STRUCTURE_GROUPS.get(s, (s,)) for s in structures}


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
    structures: Mapping[str, Sequence[str]] | Sequence[str] | None = STRUCTURE_GROUPS,
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images and masks into (N, C, S, S) float32 images and (N, K, S, S) uint8 masks.

    Each item has `.image` and `.masks` (structure -> mask path), as returned by
    `medfoundry.data.manifest.scan_segmentation_folder`. A mask must be binary (0 and one
    foreground value, `check_binary_mask`) and is foreground where its value is > 0; a group's
    masks are united, and every mask must have its image's height and width.
    Images are normalised with `normalization` (X-ray default) and resized bilinearly (with
    antialiasing); masks are resized by area averaging + threshold 0.5.
    """
    groups = structure_groups(structures)
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


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator | None = None,
    max_shift: float = 0.1,
    max_scale: float = 0.1,
    max_rotate_deg: float = 10.0,
    intensity: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (shift, scale, rotation) + brightness/contrast jitter of a batch.

    images (B, C, H, W) float, masks (B, K, H, W) any dtype (0/1). Per sample: shift up to
    `max_shift` of the image size along each axis, zoom by 1 +- `max_scale`, rotation up to
    +-`max_rotate_deg`, contrast x(1 +- `intensity`) about the image mean and brightness
    +-`intensity` (in normalised units). One `grid_sample` for the whole batch; images use
    bilinear interpolation with border padding, masks bilinear then > 0.5 with zero padding.
    No flips: chest radiographs are lateralised. Returns new tensors of the input dtypes.
    """
    if images.ndim != 4 or masks.ndim != 4 or images.shape[0] != masks.shape[0]:
        raise ValueError(f"expected (B,C,H,W) images/masks, got {images.shape}, {masks.shape}")
    if images.shape[2:] != masks.shape[2:]:
        raise ValueError(f"image size {images.shape[2:]} != mask size {masks.shape[2:]}")
    b, _, h, w = images.shape
    dev = images.device
    angle = _uniform(b, -max_rotate_deg, max_rotate_deg, generator) * (math.pi / 180.0)
    scale = _uniform(b, 1.0 - max_scale, 1.0 + max_scale, generator)
    tx = _uniform(b, -max_shift, max_shift, generator) * 2.0  # normalised coords span 2
    ty = _uniform(b, -max_shift, max_shift, generator) * 2.0
    contrast = _uniform(b, 1.0 - intensity, 1.0 + intensity, generator)
    bright = _uniform(b, -intensity, intensity, generator)
    angle, scale, tx, ty, contrast, bright = (
        t.to(dev) for t in (angle, scale, tx, ty, contrast, bright)
    )
    # theta maps output to input coordinates (normalised); rotation done in pixel units so
    # non-square images are not sheared. Zoom factor s enlarges the content (input coords / s).
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin * h / w, tx], dim=-1),
            torch.stack([sin * w / h, cos, ty], dim=-1),
        ],
        dim=1,
    ).to(torch.float32)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    img = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    msk = F.grid_sample(
        masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * contrast.view(b, 1, 1, 1) + mean + bright.view(b, 1, 1, 1)
    return img.to(images.dtype), (msk > 0.5).to(masks.dtype)
