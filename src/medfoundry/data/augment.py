"""Downstream training augmentations, all in one place: batched tensor functions run on the
device inside ``training_step`` (2D segmentation, 2D classification, 3D patches).

No flips in 2D: chest radiographs are lateralised. The self-supervised views of pretraining
are not here: they are part of each pretext (``medfoundry.pretext``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

AXES = {"D": 2, "H": 3, "W": 4}  # patch axes of (B, C, D, H, W)


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


def intensity_shift_augment(
    x: torch.Tensor, max_shift: float = 0.08, max_scale: float = 0.1, intensity: float = 0.2
) -> torch.Tensor:
    """Batched random translation/zoom + brightness/contrast jitter (no flips: lateralised anatomy)."""
    b = x.shape[0]
    dev = x.device
    scale = 1 + (torch.rand(b, device=dev) * 2 - 1) * max_scale
    shift = (torch.rand(b, 2, device=dev) * 2 - 1) * max_shift * 2
    theta = torch.zeros(b, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1 + (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * intensity
    bright = (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * intensity
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + bright


def augment_patches(
    images: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 0.0,
    shift: float = 0.0,
    noise: float = 0.0,
    flip_axes: Sequence[str] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch intensity jitter ``x * U(1 - scale, 1 + scale) + U(-shift, shift)`` plus
    Gaussian noise of sd ``noise``, and random flips (p = 0.5 each) along ``flip_axes``
    ("D", "H", "W"), applied to images (B, C, D, H, W) and labels (B, 1, D, H, W) alike."""
    b = images.shape[0]
    shape = (b,) + (1,) * (images.ndim - 1)
    if scale:
        images = images * (1.0 + (torch.rand(shape, device=images.device) * 2 - 1) * scale)
    if shift:
        images = images + (torch.rand(shape, device=images.device) * 2 - 1) * shift
    if noise:
        images = images + torch.randn_like(images) * noise
    for name in flip_axes:
        if name not in AXES:
            raise ValueError(f"flip axis {name!r}: choose from {sorted(AXES)}")
        dim = AXES[name]
        flip = torch.rand(shape, device=images.device) < 0.5  # (B, 1, 1, 1, 1)
        images = torch.where(flip, images.flip(dim), images)
        labels = torch.where(flip, labels.flip(dim), labels)
    return images, labels
