"""Adam's anatomy decomposer: two augmented views of one grid cell per image, for a whole batch.

``decompose_views(images, level, ...)`` cuts each image into an ``n x n`` grid (``n = level``;
0: the whole image), draws one cell per sample and makes every view of it in one vectorised
crop + rotation, jitter and blur; ``AnatomyAugment`` holds the view parameters (defaults: the
Adam-v1 reference recipe).

Rules (anchors, geometry, out-of-anchor padding, intensity space, random-number order):
docs/rules/anatomy.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medfoundry.pretext.augment2d import (
    blur_radius,
    crop_theta,
    gaussian_blur,
    jitter_intensity,
    random_resized_boxes,
    uniform,
)


@dataclass
class AnatomyAugment:
    """View augmentation parameters (defaults: the Adam-v1 reference recipe).

    Attributes:
        scale: RandomResizedCrop area range, as fractions of the anchor's area.
        ratio: RandomResizedCrop aspect-ratio (width / height) range.
        rotation: maximum absolute rotation in degrees (uniform in ``[-rotation, rotation]``).
        jitter_p: probability of brightness/contrast jitter per view.
        brightness: range of the brightness factor (torchvision ``brightness=0.4``).
        contrast: range of the contrast factor (torchvision ``contrast=0.4``).
        blur_p: probability of Gaussian blur per view.
        blur_sigma: sigma range in pixels *of a 224-pixel view*; scaled by ``out_size / 224`` so
            that the blur removes the same fraction of the field of view at any output size.
        black_level: the normalised intensity of black, the fixed point of brightness.
        clip: intensity range after jitter (None: no clipping).
        padding: ``"border"`` (clamp samples to the anchor) or a constant fill value.
        antialias: pre-shrink the batch (antialiased) when even the smallest crop would be
            downsampled, so bilinear resampling does not alias (e.g. whole 1024² images -> 224²).
            The antialiasing filter itself mixes about one pixel of the shrunk image across
            cell borders; with ``antialias=False`` no neighbouring pixel ever enters a view.
    """

    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    rotation: float = 30.0
    jitter_p: float = 0.8
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    black_level: float = -2.0
    clip: tuple[float, float] | None = (-2.0, 2.0)
    padding: str | float = "border"
    antialias: bool = True

    def __post_init__(self) -> None:
        # YAML configs give lists: store tuples of floats so instances compare and print cleanly
        for name in ("scale", "ratio", "brightness", "contrast", "blur_sigma", "clip"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ValueError(f"{name} must be a (low, high) pair, got {value!r}")
                setattr(self, name, (float(value[0]), float(value[1])))
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        for name in ("jitter_p", "blur_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")
        if isinstance(self.padding, str) and self.padding != "border":
            raise ValueError(f"padding must be 'border' or a number, got {self.padding!r}")


def decompose_views(
    images: Tensor,
    level: int,
    n_views: int = 2,
    out_size: int = 224,
    aug: AnatomyAugment | None = None,
    generator: torch.Generator | None = None,
    return_cells: bool = False,
) -> list[Tensor] | tuple[list[Tensor], Tensor]:
    """Views of one anatomy-decomposer anchor per image.

    Args:
        images: (B, C, H, W) intensity-normalised images.
        level: grid side ``n``; 0 = the whole image, ``n > 0`` = one random cell of an n x n grid.
        n_views: views per image, all from the same anchor with independent augmentation.
        out_size: side of the square views.
        aug: augmentation parameters (default: the Adam reference recipe).
        generator: torch generator for reproducible draws (its device is used for the draws).
        return_cells: also return the chosen cells.

    Returns:
        ``n_views`` tensors of shape (B, C, out_size, out_size); with ``return_cells`` also a
        (B, 2) long tensor of (row, col) grid indices (all zeros at level 0).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    aug = aug or AnatomyAugment()
    b, c, hgt, wid = images.shape
    n = max(level, 1)
    cell_h, cell_w = hgt // n, wid // n
    if cell_h < 1 or cell_w < 1:
        raise ValueError(f"level {level} grid does not fit a {hgt}x{wid} image")
    dev = images.device
    rdev = generator.device if generator is not None else dev
    nv = b * n_views  # views are ordered sample-major: index = sample * n_views + view

    # --- random draws (fixed order, independent of the probabilities) ----------------------
    cell = torch.randint(0, n * n, (b,), generator=generator, device=rdev)
    x0, y0, cw, ch = random_resized_boxes(
        nv, float(cell_h), float(cell_w), aug.scale, aug.ratio, generator, rdev
    )
    angle = uniform((nv,), -aug.rotation, aug.rotation, generator, rdev) * (math.pi / 180.0)
    jitter_u = torch.rand(nv, generator=generator, device=rdev)
    bright = uniform((nv,), *aug.brightness, generator, rdev)
    contr = uniform((nv,), *aug.contrast, generator, rdev)
    blur_u = torch.rand(nv, generator=generator, device=rdev)
    sigma = uniform((nv,), *aug.blur_sigma, generator, rdev) * (out_size / 224.0)
    cell, x0, y0, cw, ch, angle = (t.to(dev) for t in (cell, x0, y0, cw, ch, angle))
    jitter_u, bright, contr, blur_u, sigma = (
        t.to(dev) for t in (jitter_u, bright, contr, blur_u, sigma)
    )

    # --- geometry: one affine map per view, image-normalised coordinates (align_corners=False) -
    row, col = cell // n, cell % n  # level 0: n = 1, the single "cell" is the whole image
    ax0 = (col * cell_w).float().repeat_interleave(n_views)  # anchor origin in pixels, per view
    ay0 = (row * cell_h).float().repeat_interleave(n_views)
    cx = ax0 + x0 + cw / 2.0  # crop centre in pixels
    cy = ay0 + y0 + ch / 2.0
    theta = crop_theta(cx, cy, cw, ch, angle, hgt, wid)  # (NV, 2, 3)
    grid = F.affine_grid(theta, [nv, 1, out_size, out_size], align_corners=False)  # (NV,S,S,2)

    # Optional antialiasing: shrink the batch so the smallest crop is not downsampled.
    src = images
    min_side = math.sqrt(aug.scale[0] * min(aug.ratio[0], 1.0 / aug.ratio[1]))
    max_cell = out_size / min_side  # anchor side at which the smallest crop maps 1:1
    if aug.antialias and max(cell_h, cell_w) > max_cell:
        f = max_cell / max(cell_h, cell_w)
        new_hw = (max(1, round(hgt * f)), max(1, round(wid * f)))
        src = F.interpolate(
            images, size=new_hw, mode="bilinear", antialias=True, align_corners=False
        )
    src_h, src_w = src.shape[-2:]

    # Anchor box in normalised coordinates; sample positions are clamped to the centres of its
    # outermost (source) pixels, so bilinear weights never reach a neighbouring cell.
    edge_lo = torch.stack([2.0 * ax0 / wid - 1.0, 2.0 * ay0 / hgt - 1.0], dim=1)
    edge_hi = torch.stack(
        [2.0 * (ax0 + cell_w) / wid - 1.0, 2.0 * (ay0 + cell_h) / hgt - 1.0], dim=1
    )
    edge_lo, edge_hi = edge_lo[:, None, None, :], edge_hi[:, None, None, :]  # (NV, 1, 1, 2)
    half_px = torch.tensor([1.0 / src_w, 1.0 / src_h], device=dev)
    lo = edge_lo + half_px
    hi = torch.maximum(edge_hi - half_px, lo)  # one-pixel anchors
    inside = None
    if not isinstance(aug.padding, str):
        inside = ((grid >= edge_lo) & (grid <= edge_hi)).all(dim=-1)  # (NV, S, S)
    grid = torch.minimum(torch.maximum(grid, lo), hi)

    # All views in one grid_sample: stack each sample's views along the output height.
    # Sampling positions in half precision would be off by up to a pixel at 1024 px: use fp32.
    if src.dtype not in (torch.float32, torch.float64):
        src = src.float()
    grid = grid.reshape(b, n_views * out_size, out_size, 2).to(src.dtype)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(b, c, n_views, out_size, out_size).transpose(1, 2)
    out = out.reshape(nv, c, out_size, out_size)  # (NV, C, S, S)
    if inside is not None:
        out = torch.where(inside[:, None], out, torch.full_like(out, float(aug.padding)))

    # --- intensity jitter (brightness about black, contrast about the view mean) -------------
    view = (nv, 1, 1, 1)
    out = jitter_intensity(out, bright, contr, jitter_u < aug.jitter_p, aug.black_level, aug.clip)

    # --- Gaussian blur ----------------------------------------------------------------------
    radius = blur_radius(aug.blur_sigma[1] * out_size / 224.0, out_size)
    if aug.blur_p > 0 and radius >= 1:
        blurred = gaussian_blur(out, sigma, radius)
        out = torch.where((blur_u < aug.blur_p).view(view), blurred, out)

    out = out.to(images.dtype)
    views = list(out.reshape(b, n_views, c, out_size, out_size).unbind(dim=1))
    if return_cells:
        return views, torch.stack([row, col], dim=1)
    return views
