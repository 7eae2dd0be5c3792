"""Adam-v2's views for a whole batch: DINO multi-crop (stage L) and concentric crops (stage LCD).

Stage L (``multicrop_views``). Per image, a random square of side ``min(H, W) // 2^g`` (integer
pixels, anywhere in the image) is the anchor; inside it, 2 global crops (RandomResizedCrop,
area ``global_scale``) at ``out_size`` and ``n_local`` local crops (area ``local_scale``) at
``local_size``, each rotated by ``U(-rotation, rotation)`` degrees.

Stage LCD (``concentric_views``). Per image, the whole W: the image at g = 0; at g >= 1 a crop of
``H // 2^g x W // 2^g`` pixels at a random integer position at least ``whole_margin`` of the side
from the border. From W: ``x0`` = W at ``out_size``; ``x1`` = a crop of 0.8-1 of W's area; the
``n_local`` local crops, local ``i`` with an area in ``local_bins[i]`` and an aspect range
alternating between ``local_ratios``; every crop box shares W's centre (concentric; rotating a
view about its centre keeps it so). The 4 parts of a 2 x 2 grid of W, at ``part_size``, are not
augmented: they are the composition inputs and the decomposition targets.

As in ``pretext.anatomy``: the geometry of every view of the batch is ONE ``grid_sample`` call
(views of different sizes are flattened into one list of sample points per image); sample
positions are clamped to the view's anchor (the square, W, or the part), so no pixel outside it
enters a view and rotated corners replicate the anchor's edge instead of the reference's black;
jitter and blur are ``pretext.augment2d``'s, drawn per view in a fixed order. Aspect ratios of the
concentric crops are relative to W (a crop of area ``a`` and ratio ``r`` spans ``sqrt(a r)`` of W's
width and ``sqrt(a / r)`` of its height), the pixel aspect for a square W. Blur sigmas are in
pixels of a reference-sized view (224 global, 96 local) and scale with the view's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from medfoundry.pretext.augment2d import (
    CROP_ATTEMPTS,
    blur_radius,
    crop_theta,
    gaussian_blur,
    jitter_intensity,
    random_resized_boxes,
    uniform,
)

REFERENCE_GLOBAL = 224  # the reference's global view side: blur sigmas are in its pixels
REFERENCE_LOCAL = 96  # ... and its local view side
# The reference's 8 local area bins of stage LCD (fractions of W's area), as bin edges.
REFERENCE_BIN_EDGES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
GRID = 2  # parts per side of W (the reference's --n_parts 4)


def _pair(value) -> tuple[float, float]:
    if len(value) != 2:
        raise ValueError(f"expected a (low, high) pair, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass
class AdamV2Augment:
    """View parameters of both stages (defaults: the Adam-v2 reference recipe).

    Attributes:
        n_local: local crops per image (stage L and LCD).
        local_size: side of the local crops.
        global_scale, local_scale: stage-L RandomResizedCrop areas (fractions of the square).
        ratio: aspect range of the stage-L crops and of ``x1``.
        rotation: stage-L rotation range in degrees.
        global_blur_p: blur probability of the two stage-L global views.
        local_blur_p: blur probability of every local crop (both stages).
        whole_margin: at g >= 1, the fraction of the image side kept free around W (the
            reference's 50 px of 1024).
        x1_scale: area range of ``x1`` (fractions of W).
        local_bins: area range of each stage-LCD local crop; None: the reference's 8 bins
            (0.05-0.1, 0.1-0.2, ..., 0.7-0.8), merged into ``n_local`` successive bins.
        local_ratios: aspect ranges that alternate over the stage-LCD local crops.
        lcd_rotation: rotation range of ``x0``, ``x1`` and the stage-LCD local crops.
        x0_blur_p, x1_blur_p: blur probabilities of ``x0`` and ``x1``.
        part_size: side of the parts (None: the global size).
        jitter_p, brightness, contrast: brightness/contrast jitter (probability, factor ranges).
        blur_sigma: sigma range in pixels of a reference-sized view.
        black_level: normalised intensity of black (the brightness fixed point).
        clip: intensity range after jitter (None: no clipping).
        antialias: pre-shrink the batch (antialiased) when even the smallest crop of a view
            group would be downsampled, so bilinear resampling does not alias.
    """

    n_local: int = 8
    local_size: int = 96
    global_scale: tuple[float, float] = (0.8, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    rotation: float = 30.0
    global_blur_p: tuple[float, float] = (1.0, 0.1)
    local_blur_p: float = 0.5
    whole_margin: float = 0.05
    x1_scale: tuple[float, float] = (0.8, 1.0)
    local_bins: tuple[tuple[float, float], ...] | None = None
    local_ratios: tuple[tuple[float, float], ...] = ((2.0 / 3.0, 1.0), (1.0, 1.5))
    lcd_rotation: float = 10.0
    x0_blur_p: float = 0.1
    x1_blur_p: float = 1.0
    part_size: int | None = None
    jitter_p: float = 0.8
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    black_level: float = -2.0
    clip: tuple[float, float] | None = (-2.0, 2.0)
    antialias: bool = True

    def __post_init__(self) -> None:
        # YAML configs give lists: store tuples of floats so instances compare and print cleanly
        for name in ("global_scale", "local_scale", "ratio", "x1_scale", "global_blur_p"):
            setattr(self, name, _pair(getattr(self, name)))
        for name in ("brightness", "contrast", "blur_sigma"):
            setattr(self, name, _pair(getattr(self, name)))
        if self.clip is not None:
            self.clip = _pair(self.clip)
        self.local_ratios = tuple(_pair(r) for r in self.local_ratios)
        if self.n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {self.n_local}")
        if self.local_bins is None:
            if self.n_local > len(REFERENCE_BIN_EDGES) - 1:
                raise ValueError(
                    f"n_local={self.n_local} > 8: give local_bins (one area range per crop)"
                )
            self.local_bins = _merged_bins(self.n_local)
        self.local_bins = tuple(_pair(b) for b in self.local_bins)
        if len(self.local_bins) != self.n_local:
            raise ValueError(
                f"local_bins has {len(self.local_bins)} ranges for n_local={self.n_local}"
            )
        for name in ("global_scale", "local_scale", "x1_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        for lo, hi in self.local_bins:
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"local_bins must satisfy 0 < lo <= hi <= 1, got {(lo, hi)}")
        for lo, hi in (self.ratio, *self.local_ratios):
            if not 0.0 < lo <= hi:
                raise ValueError(f"aspect ranges must satisfy 0 < lo <= hi, got {(lo, hi)}")
        if not self.local_ratios:
            raise ValueError("local_ratios needs at least one aspect range")
        if not 0.0 <= self.whole_margin < 0.5:
            raise ValueError(f"whole_margin must be in [0, 0.5), got {self.whole_margin}")
        probabilities = (*self.global_blur_p, self.local_blur_p, self.x0_blur_p, self.x1_blur_p)
        for p in (*probabilities, self.jitter_p):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")


def _merged_bins(n: int) -> tuple[tuple[float, float], ...]:
    """The reference's 8 area bins merged into ``n`` successive bins (8: the bins themselves;
    4: 0.05-0.2, 0.2-0.4, 0.4-0.6, 0.6-0.8)."""
    if n == 0:
        return ()
    last = len(REFERENCE_BIN_EDGES) - 1
    idx = [round(i * last / n) for i in range(n + 1)]
    return tuple(
        (REFERENCE_BIN_EDGES[a], REFERENCE_BIN_EDGES[b])
        for a, b in zip(idx[:-1], idx[1:], strict=True)
    )


# --- views of the batch --------------------------------------------------------------------------
class MulticropViews(NamedTuple):
    """Stage-L views: ``globals`` (B, 2, C, S, S), ``locals`` (B, N, C, s, s) and each image's
    anchor square ``square`` (B, 4) = (x0, y0, w, h) in pixels."""

    globals: Tensor
    locals: Tensor
    square: Tensor


class ConcentricViews(NamedTuple):
    """Stage-LCD views: ``x0``, ``x1`` (B, C, S, S), ``locals`` (B, N, C, s, s), ``parts``
    (B, 4, C, P, P) in row-major order, the whole ``whole`` (B, 4) = (x0, y0, w, h) and the crop
    boxes of x0, x1 and the locals ``boxes`` (B, 2 + N, 4) = (cx, cy, w, h), in pixels."""

    x0: Tensor
    x1: Tensor
    locals: Tensor
    parts: Tensor
    whole: Tensor
    boxes: Tensor


@dataclass
class _Group:
    """Views of one size, ``n`` per image, sample-major (index = sample * n + view); boxes and
    clamp boxes in image pixels, all (B * n,)."""

    n: int
    size: int
    cx: Tensor
    cy: Tensor
    w: Tensor
    h: Tensor
    angle: Tensor
    box_lo: Tensor  # (B * n, 2) clamp box corner (x, y), pixels
    box_hi: Tensor  # (B * n, 2)
    min_side: float  # smallest crop side (pixels) the group can draw: decides antialiasing


def _render(images: Tensor, groups: list[_Group], antialias: bool) -> list[Tensor]:
    """Every group's views in ONE ``grid_sample`` call; returns [(B, n, C, S, S)] per group."""
    b, c, hgt, wid = images.shape
    src = images
    shrink = max(g.size / g.min_side for g in groups)  # < 1: even the smallest crop shrinks
    if antialias and shrink < 1.0:
        new_hw = (max(1, round(hgt * shrink)), max(1, round(wid * shrink)))
        src = F.interpolate(
            images, size=new_hw, mode="bilinear", antialias=True, align_corners=False
        )
    if src.dtype not in (torch.float32, torch.float64):
        src = src.float()  # sample positions in half precision are off by up to a pixel
    src_h, src_w = src.shape[-2:]
    scale = torch.tensor([2.0 / wid, 2.0 / hgt], device=images.device)
    half_px = torch.tensor([1.0 / src_w, 1.0 / src_h], device=images.device)
    points = []
    for g in groups:
        theta = crop_theta(g.cx, g.cy, g.w, g.h, g.angle, hgt, wid)  # (B*n, 2, 3)
        grid = F.affine_grid(theta, [b * g.n, 1, g.size, g.size], align_corners=False)
        # clamp to the centres of the anchor's outermost (source) pixels: nothing outside leaks
        lo = (g.box_lo * scale - 1.0)[:, None, None, :] + half_px
        hi = torch.maximum((g.box_hi * scale - 1.0)[:, None, None, :] - half_px, lo)
        grid = torch.minimum(torch.maximum(grid, lo), hi)  # (B*n, S, S, 2)
        points.append(grid.reshape(b, g.n * g.size * g.size, 2))
    grid = torch.cat(points, dim=1)[:, None].to(src.dtype)  # (B, 1, P, 2)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out[:, :, 0]  # (B, C, P)
    views, start = [], 0
    for g in groups:
        count = g.n * g.size * g.size
        part = out[:, :, start : start + count].reshape(b, c, g.n, g.size, g.size)
        views.append(part.transpose(1, 2).to(images.dtype))  # (B, n, C, S, S)
        start += count
    return views


@dataclass
class _Intensity:
    """Per-view intensity draws of a group (B * n,): jitter and blur decisions and factors."""

    jitter: Tensor
    bright: Tensor
    contrast: Tensor
    blur: Tensor
    sigma: Tensor

    def views(self, b: int, n: int, start: int, stop: int, sigma_factor: float) -> _Intensity:
        """The draws of views ``start:stop`` of each image (draws are (B * n,), sample-major),
        with sigmas in pixels of a view ``sigma_factor`` times the reference size."""

        def pick(t: Tensor) -> Tensor:
            return t.view(b, n)[:, start:stop].reshape(-1)

        return _Intensity(
            pick(self.jitter),
            pick(self.bright),
            pick(self.contrast),
            pick(self.blur),
            pick(self.sigma) * sigma_factor,
        )


def _draw_intensity(
    count: int, blur_p: Tensor, aug: AdamV2Augment, generator, rdev, dev
) -> _Intensity:
    """Intensity draws of ``count`` views; ``blur_p`` (count,) is each view's blur probability."""
    jitter_u = torch.rand(count, generator=generator, device=rdev)
    bright = uniform((count,), *aug.brightness, generator, rdev)
    contrast = uniform((count,), *aug.contrast, generator, rdev)
    blur_u = torch.rand(count, generator=generator, device=rdev)
    sigma = uniform((count,), *aug.blur_sigma, generator, rdev)
    return _Intensity(
        jitter=(jitter_u < aug.jitter_p).to(dev),
        bright=bright.to(dev),
        contrast=contrast.to(dev),
        blur=(blur_u < blur_p.to(rdev)).to(dev),
        sigma=sigma.to(dev),
    )


def _augment_intensity(
    views: Tensor, draws: _Intensity, aug: AdamV2Augment, sigma_max: float
) -> Tensor:
    """Jitter then blur the views (B, n, C, S, S) of one group, each by its own draws."""
    b, n, c, s, _ = views.shape
    flat = views.reshape(b * n, c, s, s)
    flat = jitter_intensity(
        flat, draws.bright, draws.contrast, draws.jitter, aug.black_level, aug.clip
    )
    radius = blur_radius(sigma_max, s)
    if radius >= 1 and bool(draws.blur.any()):
        blurred = gaussian_blur(flat, draws.sigma, radius)
        flat = torch.where(draws.blur.view(-1, 1, 1, 1), blurred, flat)
    return flat.reshape(b, n, c, s, s)


def _check(images: Tensor, granularity: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if int(granularity) != granularity or granularity < 0:
        raise ValueError(f"granularity must be an integer >= 0, got {granularity!r}")
    side = min(images.shape[-2:]) // 2**granularity
    if side < GRID:
        raise ValueError(f"granularity {granularity} leaves no crop of a {images.shape[-2:]} image")


def _min_side(scale: tuple[float, float], ratio: tuple[float, float], anchor: float) -> float:
    """Smallest side of a crop of area ``scale[0]`` and an aspect in ``ratio`` of an anchor."""
    return math.sqrt(scale[0] * min(ratio[0], 1.0 / ratio[1])) * anchor


def multicrop_views(
    images: Tensor,
    granularity: int,
    out_size: int = REFERENCE_GLOBAL,
    aug: AdamV2Augment | None = None,
    generator: torch.Generator | None = None,
) -> MulticropViews:
    """Stage-L views of a batch (B, C, H, W) at granularity ``g``: 2 global + ``n_local`` local
    crops of one random square of side ``min(H, W) // 2^g`` per image."""
    _check(images, granularity)
    aug = aug or AdamV2Augment()
    b, _, hgt, wid = images.shape
    dev = images.device
    rdev = generator.device if generator is not None else dev
    side = min(hgt, wid) // 2**granularity
    n_loc, views = aug.n_local, 2 + aug.n_local

    # --- random draws (fixed order) ----------------------------------------------------------
    sx = torch.randint(0, wid - side + 1, (b,), generator=generator, device=rdev)
    sy = torch.randint(0, hgt - side + 1, (b,), generator=generator, device=rdev)
    gbox = random_resized_boxes(b * 2, side, side, aug.global_scale, aug.ratio, generator, rdev)
    lbox = random_resized_boxes(b * n_loc, side, side, aug.local_scale, aug.ratio, generator, rdev)
    angle = uniform((b, views), -aug.rotation, aug.rotation, generator, rdev) * (math.pi / 180)
    blur_p = torch.tensor([*aug.global_blur_p, *[aug.local_blur_p] * n_loc]).repeat(b)
    draws = _draw_intensity(b * views, blur_p, aug, generator, rdev, dev)

    sx, sy, angle = sx.to(dev).float(), sy.to(dev).float(), angle.to(dev)
    square = torch.stack([sx, sy, torch.full_like(sx, side), torch.full_like(sx, side)], dim=1)
    lo = torch.stack([sx, sy], dim=1)  # (B, 2)
    hi = lo + side

    def group(boxes, n: int, size: int, angles: Tensor, scale) -> _Group:
        x0, y0, w, h = (t.to(dev) for t in boxes)
        rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731  (B, ...) -> (B*n, ...)
        return _Group(
            n=n,
            size=size,
            cx=rep(sx) + x0 + w / 2.0,
            cy=rep(sy) + y0 + h / 2.0,
            w=w,
            h=h,
            angle=angles.reshape(-1),
            box_lo=rep(lo),
            box_hi=rep(hi),
            min_side=_min_side(scale, aug.ratio, side),
        )

    groups = [group(gbox, 2, out_size, angle[:, :2], aug.global_scale)]
    if n_loc:
        groups.append(group(lbox, n_loc, aug.local_size, angle[:, 2:], aug.local_scale))
    rendered = _render(images, groups, aug.antialias)

    # --- intensity: per group, with the group's slice of the draws ----------------------------
    factor_g, factor_l = out_size / REFERENCE_GLOBAL, aug.local_size / REFERENCE_LOCAL
    glob_d = draws.views(b, views, 0, 2, factor_g)
    glob = _augment_intensity(rendered[0], glob_d, aug, aug.blur_sigma[1] * factor_g)
    if n_loc:
        loc_d = draws.views(b, views, 2, views, factor_l)
        loc = _augment_intensity(rendered[1], loc_d, aug, aug.blur_sigma[1] * factor_l)
    else:
        loc = images.new_zeros(b, 0, images.shape[1], aug.local_size, aug.local_size)
    return MulticropViews(glob, loc, square)


def _centred_fractions(
    b: int, bins: list[tuple[float, float]], ratios: list[tuple[float, float]], generator, rdev
) -> tuple[Tensor, Tensor]:
    """Width and height fractions (B, V) of centred crops of W: view ``v`` has an area in
    ``bins[v]`` and an aspect (relative to W) in ``ratios[v]``; rejection sampling with
    ``CROP_ATTEMPTS`` tries, falling back to a square of the bin's smallest area (always fits)."""
    v = len(bins)
    a_lo = torch.tensor([lo for lo, _ in bins], device=rdev)
    a_hi = torch.tensor([hi for _, hi in bins], device=rdev)
    r_lo = torch.tensor([math.log(lo) for lo, _ in ratios], device=rdev)
    r_hi = torch.tensor([math.log(hi) for _, hi in ratios], device=rdev)
    u_area = torch.rand(b, v, CROP_ATTEMPTS, generator=generator, device=rdev)
    u_ratio = torch.rand(b, v, CROP_ATTEMPTS, generator=generator, device=rdev)
    area = a_lo[:, None] + (a_hi - a_lo)[:, None] * u_area  # (B, V, T)
    r = torch.exp(r_lo[:, None] + (r_hi - r_lo)[:, None] * u_ratio)
    wf, hf = torch.sqrt(area * r), torch.sqrt(area / r)
    fits = (wf <= 1.0) & (hf <= 1.0)
    first = fits.to(torch.uint8).argmax(dim=2, keepdim=True)
    wf, hf = wf.gather(2, first).squeeze(2), hf.gather(2, first).squeeze(2)  # (B, V)
    any_fit = fits.any(dim=2)
    fallback = torch.sqrt(a_lo).expand(b, v)
    return torch.where(any_fit, wf, fallback), torch.where(any_fit, hf, fallback)


def _whole_origins(
    images: Tensor, granularity: int, margin: float, generator, rdev
) -> tuple[Tensor, int, int]:
    """Integer origins (B, 2) = (x0, y0) of the whole W and its size (w, h): the image at g = 0;
    at g >= 1 a ``W // 2^g x H // 2^g`` crop at least ``margin`` of the side from the border
    (less when the image is too small for it)."""
    b, _, hgt, wid = images.shape
    w, h = wid // 2**granularity, hgt // 2**granularity
    if granularity == 0:
        return torch.zeros(b, 2, dtype=torch.long, device=rdev), w, h
    mx = min(round(margin * wid), (wid - w) // 2)
    my = min(round(margin * hgt), (hgt - h) // 2)
    x0 = torch.randint(mx, wid - w - mx + 1, (b,), generator=generator, device=rdev)
    y0 = torch.randint(my, hgt - h - my + 1, (b,), generator=generator, device=rdev)
    return torch.stack([x0, y0], dim=1), w, h


def concentric_views(
    images: Tensor,
    granularity: int,
    out_size: int = REFERENCE_GLOBAL,
    aug: AdamV2Augment | None = None,
    generator: torch.Generator | None = None,
) -> ConcentricViews:
    """Stage-LCD views of a batch (B, C, H, W) at granularity ``g``: the whole W, ``x0``, ``x1``,
    the concentric local crops and the 4 parts of W (see the module docstring)."""
    _check(images, granularity)
    aug = aug or AdamV2Augment()
    b, _, hgt, wid = images.shape
    dev = images.device
    rdev = generator.device if generator is not None else dev
    n_loc = aug.n_local
    n_crop = 2 + n_loc  # x0, x1, locals
    part_size = int(aug.part_size or out_size)

    # --- random draws (fixed order) ----------------------------------------------------------
    origin, ww, wh = _whole_origins(images, granularity, aug.whole_margin, generator, rdev)
    bins = [(1.0, 1.0), aug.x1_scale, *aug.local_bins]  # x0 is W itself
    alternating = [aug.local_ratios[i % len(aug.local_ratios)] for i in range(n_loc)]
    ratios = [(1.0, 1.0), aug.ratio, *alternating]
    wf, hf = _centred_fractions(b, bins, ratios, generator, rdev)  # (B, 2 + N)
    angle = uniform((b, n_crop), -aug.lcd_rotation, aug.lcd_rotation, generator, rdev)
    blur_p = torch.tensor([aug.x0_blur_p, aug.x1_blur_p, *[aug.local_blur_p] * n_loc]).repeat(b)
    draws = _draw_intensity(b * n_crop, blur_p, aug, generator, rdev, dev)

    origin, wf, hf = origin.to(dev).float(), wf.to(dev), hf.to(dev)
    angle = angle.to(dev) * (math.pi / 180.0)
    whole = torch.cat([origin, origin.new_tensor([ww, wh]).expand(b, 2)], dim=1)  # (B, 4)
    centre = origin + origin.new_tensor([ww / 2.0, wh / 2.0])  # (B, 2)
    boxes = torch.stack(
        [
            centre[:, None, 0].expand(b, n_crop),
            centre[:, None, 1].expand(b, n_crop),
            wf * ww,
            hf * wh,
        ],
        dim=2,
    )  # (B, 2 + N, 4) = (cx, cy, w, h)
    lo, hi = origin, origin + origin.new_tensor([ww, wh])

    def crops(start: int, stop: int, size: int, min_side: float) -> _Group:
        n = stop - start
        sel = boxes[:, start:stop].reshape(-1, 4)
        rep = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
        cx, cy, w, h = sel.unbind(dim=1)
        return _Group(
            n, size, cx, cy, w, h, angle[:, start:stop].reshape(-1), rep(lo), rep(hi), min_side
        )

    anchor = float(min(ww, wh))
    x1_min = _min_side(aug.x1_scale, aug.ratio, anchor)
    groups = [crops(0, 1, out_size, anchor), crops(1, 2, out_size, x1_min)]
    if n_loc:
        loc_min = min(_min_side(aug.local_bins[i], ratios[2 + i], anchor) for i in range(n_loc))
        groups.append(crops(2, n_crop, aug.local_size, loc_min))
    # the parts: a GRID x GRID tiling of W, row-major, not rotated
    pw, ph = ww / GRID, wh / GRID
    row = torch.arange(GRID, device=dev).repeat_interleave(GRID).float()  # 0 0 1 1
    col = torch.arange(GRID, device=dev).repeat(GRID).float()  # 0 1 0 1
    p_lo = (origin[:, None, :] + torch.stack([col * pw, row * ph], dim=1)).reshape(-1, 2)
    p_hi = p_lo + p_lo.new_tensor([pw, ph])
    n_parts = GRID * GRID
    p_centre = (p_lo + p_hi) / 2.0
    full = lambda v: torch.full((b * n_parts,), float(v), device=dev)  # noqa: E731
    groups.append(
        _Group(
            n_parts,
            part_size,
            p_centre[:, 0],
            p_centre[:, 1],
            full(pw),
            full(ph),
            full(0.0),
            p_lo,
            p_hi,
            min(pw, ph),
        )
    )
    rendered = _render(images, groups, aug.antialias)

    factor_g, factor_l = out_size / REFERENCE_GLOBAL, aug.local_size / REFERENCE_LOCAL
    sig_g, sig_l = aug.blur_sigma[1] * factor_g, aug.blur_sigma[1] * factor_l
    x0 = _augment_intensity(rendered[0], draws.views(b, n_crop, 0, 1, factor_g), aug, sig_g)
    x1 = _augment_intensity(rendered[1], draws.views(b, n_crop, 1, 2, factor_g), aug, sig_g)
    if n_loc:
        loc_d = draws.views(b, n_crop, 2, n_crop, factor_l)
        loc = _augment_intensity(rendered[2], loc_d, aug, sig_l)
    else:
        loc = images.new_zeros(b, 0, images.shape[1], aug.local_size, aug.local_size)
    return ConcentricViews(x0[:, 0], x1[:, 0], loc, rendered[-1], whole, boxes)
