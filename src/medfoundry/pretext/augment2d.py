"""Batched 2D view primitives shared by the view generators (Adam-v1 anatomy, Adam-v2).

Pure tensor functions, vectorised over views: RandomResizedCrop boxes, the affine map of a
rotated crop box, brightness/contrast jitter in intensity-normalised space, per-view Gaussian
blur. The generators draw their random numbers themselves (in a fixed order) and pass them in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Crop attempts per view before falling back to the largest valid crop (torchvision uses 10).
CROP_ATTEMPTS = 10


def uniform(
    shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None, device
) -> Tensor:
    """Uniform draws in ``[lo, hi)`` of ``shape``."""
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def random_resized_boxes(
    n: int,
    anchor_h: float,
    anchor_w: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None,
    device,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomResizedCrop boxes inside an ``anchor_h x anchor_w`` anchor: (x0, y0, w, h) in pixels.

    torchvision's rejection sampling, vectorised: ``CROP_ATTEMPTS`` candidates per view, the first
    that fits is taken; views with none fall back to the largest crop with an allowed ratio.
    """
    area = anchor_h * anchor_w
    target = area * uniform((n, CROP_ATTEMPTS), *scale, generator, device)
    log_r = uniform((n, CROP_ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]), generator, device)
    r = torch.exp(log_r)
    w = torch.sqrt(target * r)
    h = torch.sqrt(target / r)
    fits = (w <= anchor_w) & (h <= anchor_h)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    any_fit = fits.any(dim=1)
    # Fallback: the whole anchor, narrowed to the nearest allowed aspect ratio.
    in_ratio = anchor_w / anchor_h
    if in_ratio < ratio[0]:
        fw, fh = anchor_w, anchor_w / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = anchor_h * ratio[1], anchor_h
    else:
        fw, fh = anchor_w, anchor_h
    w = torch.where(any_fit, w, torch.full_like(w, fw))
    h = torch.where(any_fit, h, torch.full_like(h, fh))
    x0 = torch.rand(n, generator=generator, device=device) * (anchor_w - w)
    y0 = torch.rand(n, generator=generator, device=device) * (anchor_h - h)
    return x0, y0, w, h


def crop_theta(
    cx: Tensor, cy: Tensor, w: Tensor, h: Tensor, angle: Tensor, hgt: int, wid: int
) -> Tensor:
    """``affine_grid`` maps (N, 2, 3) of crop boxes centred at (cx, cy) of size (w, h) pixels,
    rotated by ``angle`` radians about their centre, in a ``hgt x wid`` image
    (``align_corners=False`` coordinates): output coords -> rotate -> crop box -> image."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx, sy = w / wid, h / hgt  # crop half-extent in normalised units
    return torch.stack(
        [
            torch.stack([sx * cos, -sx * sin, 2.0 * cx / wid - 1.0], dim=1),
            torch.stack([sy * sin, sy * cos, 2.0 * cy / hgt - 1.0], dim=1),
        ],
        dim=1,
    )


def jitter_intensity(
    x: Tensor,
    bright: Tensor,
    contrast: Tensor,
    apply: Tensor,
    black_level: float,
    clip: tuple[float, float] | None,
) -> Tensor:
    """Brightness about ``black_level`` then contrast about each view's mean, on the views of
    ``x`` (N, C, S, S) where ``apply`` (N,) is true; factors (N,). ``clip`` bounds the result
    (torchvision's [0, 1] clamp in normalised space) unless None."""

    def clamp(t: Tensor) -> Tensor:
        return t if clip is None else t.clamp(clip[0], clip[1])

    view = (x.shape[0], 1, 1, 1)
    jittered = clamp(black_level + bright.view(view).to(x.dtype) * (x - black_level))
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    jittered = clamp(mean + contrast.view(view).to(x.dtype) * (jittered - mean))
    return torch.where(apply.view(view), jittered, x)


def blur_radius(sigma_max: float, size: int) -> int:
    """Kernel radius (3 sigma) for blurs up to ``sigma_max`` pixels on ``size``-pixel views."""
    return min(max(1, math.ceil(3.0 * sigma_max)), size - 1)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int) -> Tensor:
    """Blur each view of ``x`` (N, C, S, S) with its own sigma (N,): separable grouped conv."""
    n, c, hgt, wid = x.shape
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None].float() ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # (N, 2r+1)
    kernel = kernel.repeat_interleave(c, dim=0)  # (N*C, 2r+1), same sigma for all channels
    flat = x.reshape(1, n * c, hgt, wid)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)  # along W
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)  # along H
    return flat.reshape(n, c, hgt, wid)
