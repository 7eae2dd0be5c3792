"""VoCo views: base crops tiling a volume's x-y extent, random crops inside, overlap targets.

From each volume (C, D, H, W) an ``n x n`` grid of base crops of ``depth x H//n x W//n`` voxels
tiles the in-plane extent (the grid is centred when ``n`` does not divide H or W); all crops of a
volume share one depth window (the whole depth by default, else a random window). ``R`` random
crops of the same size lie entirely inside the grid, at integer offsets drawn uniformly. The
target of random crop ``r`` and base crop ``k`` is the fraction of the random crop's *in-plane*
area that overlaps base crop ``k`` (depth is ignored, as in VoCo's ``get_position_label``); the
targets of a random crop sum to 1 and at most four are non-zero.

Axis order: tensors are (D, H, W) = (z, y, x) and base crop ``k = i * n + j`` sits in grid row i
(along H) and column j (along W); targets use the same order. (VoCo's code loops x outer, y
inner on (x, y, z) arrays; only the agreement between crop order and target order matters.)

Every crop, base and random, of the whole batch comes out of ONE advanced-indexing copy from a
strided sliding-window view (``unfold``) of the batch, so there is no loop over samples or
crops. Crops are then optionally resized to ``out_size`` (one ``interpolate`` call) and
augmented independently (VoCo's recipe: per-axis flips with p = 0.2, an in-plane rot90 with
p = 0.2, an intensity shift of U(-0.1, 0.1) with p = 0.1); augmentation does not change the
targets. Augmentation is batched too: each transform copies only the crops it applies to
(finding them costs one host synchronisation per transform on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class VoCoAugment:
    """Independent per-crop augmentation (defaults: the VoCo repository's).

    Attributes:
        flip_p: probability of a flip along each of the three spatial axes.
        rot90_p: probability of a rotation by 90, 180 or 270 degrees in the H-W plane (only for
            square in-plane crops; ignored otherwise).
        shift_p: probability of an intensity shift.
        shift: the shift is drawn from U(-shift, shift) (intensity units of the input).
    """

    flip_p: float = 0.2
    rot90_p: float = 0.2
    shift_p: float = 0.1
    shift: float = 0.1

    def __post_init__(self) -> None:
        for name in ("flip_p", "rot90_p", "shift_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")


NO_AUGMENT = VoCoAugment(flip_p=0.0, rot90_p=0.0, shift_p=0.0)


class VoCoViews(NamedTuple):
    """Crops and targets of a batch; ``K = n * n`` base crops and ``R`` random crops per volume."""

    crops: Tensor  # (B, K + R, C, d, h, w) every crop: the K base crops, then the R random ones
    base: Tensor  # (B, K, C, d, h, w) = crops[:, :K] (a view)
    random: Tensor  # (B, R, C, d, h, w) = crops[:, K:] (a view)
    targets: Tensor  # (B, R, K) overlap fractions, each row sums to 1
    origins: Tensor  # (B, R, 2) long, (y, x) of each random crop relative to the grid
    corner: Tensor  # (B, 3) long, (z, y, x) of the grid's corner in the input volume


def overlap_targets(origins: Tensor, crop_hw: tuple[int, int], num_base: int) -> Tensor:
    """Fractions (B, R, n*n) of each random crop's in-plane area lying in each base crop.

    Args:
        origins: (B, R, 2) (y, x) of the random crops relative to the grid corner.
        crop_hw: (h, w), the size of base and random crops alike.
        num_base: the grid side n.
    """
    h, w = crop_hw
    cell = torch.arange(num_base, device=origins.device)

    def overlap(start: Tensor, side: int) -> Tensor:
        """(B, R, n) overlap length of [start, start + side) with each grid interval."""
        lo = torch.maximum(start[..., None], cell * side)
        hi = torch.minimum(start[..., None] + side, (cell + 1) * side)
        return (hi - lo).clamp_min(0)

    oy, ox = overlap(origins[..., 0], h), overlap(origins[..., 1], w)
    area = oy[..., :, None] * ox[..., None, :]  # (B, R, n, n): rows i outer, columns j inner
    return area.flatten(-2).float() / float(h * w)


def _augment_(crops: Tensor, aug: VoCoAugment, generator, rdev) -> Tensor:
    """Flip, rotate and shift each crop (N, C, d, h, w) independently, in place; the random
    draws happen in a fixed order whatever the probabilities are."""
    n = crops.shape[0]
    flips = torch.rand(n, 3, generator=generator, device=rdev) < aug.flip_p
    rotate = torch.rand(n, generator=generator, device=rdev) < aug.rot90_p
    quarter = torch.randint(1, 4, (n,), generator=generator, device=rdev)
    shifted = torch.rand(n, generator=generator, device=rdev) < aug.shift_p
    offset = (torch.rand(n, generator=generator, device=rdev) * 2.0 - 1.0) * aug.shift
    dev = crops.device
    flips, rotate, quarter, shifted, offset = (
        t.to(dev) for t in (flips, rotate, quarter, shifted, offset)
    )
    out = crops
    for axis in range(3):  # a loop over axes, each batched over the crops it applies to
        idx = flips[:, axis].nonzero().squeeze(1)
        if idx.numel():
            out.index_copy_(0, idx, out.index_select(0, idx).flip(2 + axis))
    if crops.shape[-1] == crops.shape[-2]:
        for k in (1, 2, 3):
            idx = (rotate & (quarter == k)).nonzero().squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, out.index_select(0, idx).rot90(k, dims=(3, 4)))
    idx = shifted.nonzero().squeeze(1)
    if idx.numel():
        shift = offset.index_select(0, idx).to(out.dtype).view(-1, 1, 1, 1, 1)
        out.index_copy_(0, idx, out.index_select(0, idx) + shift)
    return out


def voco_views(
    volumes: Tensor,
    num_base: int = 3,
    num_random: int = 2,
    depth: int | None = None,
    out_size: int | tuple[int, int, int] | None = None,
    augment: VoCoAugment | None = None,
    generator: torch.Generator | None = None,
) -> VoCoViews:
    """Base crops, random crops and overlap targets for a batch of volumes.

    Args:
        volumes: (B, C, D, H, W) intensity-normalised volumes.
        num_base: grid side n (n * n base crops; VoCo: 4, its TPAMI version: 3).
        num_random: random crops R per volume (VoCo: 2).
        depth: crop depth d (None: the whole depth D); each volume gets one random window.
        out_size: resize every crop to this size (VoCo: 96^3 crops -> 64^3); None keeps them.
        augment: per-crop augmentation (default: VoCo's; ``NO_AUGMENT`` for none).
        generator: torch generator for reproducible draws (its device is used for the draws).
    """
    if volumes.ndim != 5:
        raise ValueError(f"volumes must be (B, C, D, H, W), got shape {tuple(volumes.shape)}")
    if num_base < 2:
        raise ValueError(f"num_base must be >= 2, got {num_base}")
    if num_random < 1:
        raise ValueError(f"num_random must be >= 1, got {num_random}")
    b, c, full_d, full_h, full_w = volumes.shape
    d = full_d if depth is None else int(depth)
    h, w = full_h // num_base, full_w // num_base
    if not 1 <= d <= full_d or h < 1 or w < 1:
        raise ValueError(
            f"a {num_base}x{num_base} grid of depth {d} does not fit a {full_d}x{full_h}x{full_w} "
            "volume"
        )
    aug = augment or VoCoAugment()
    dev = volumes.device
    rdev = generator.device if generator is not None else dev
    k, r = num_base * num_base, num_random

    # --- positions (draws in a fixed order) --------------------------------------------------
    z0 = torch.randint(0, full_d - d + 1, (b,), generator=generator, device=rdev).to(dev)
    span = torch.tensor([(num_base - 1) * h + 1, (num_base - 1) * w + 1], device=rdev)
    origins = (torch.rand(b, r, 2, generator=generator, device=rdev) * span).long().to(dev)
    y0, x0 = (full_h - num_base * h) // 2, (full_w - num_base * w) // 2  # grid corner

    # --- the grid region (B, C, d, n*h, n*w): a view, or one copy for a depth window --------
    region = volumes[..., y0 : y0 + num_base * h, x0 : x0 + num_base * w]
    batch_idx = torch.arange(b, device=dev)[:, None]  # (B, 1)
    if d < full_d:
        region = region.unfold(2, d, 1)[batch_idx[:, 0], :, z0]  # (B, C, n*h, n*w, d)
        region = region.permute(0, 1, 4, 2, 3)

    # --- crops: base crops by one strided copy, random crops by one indexed copy -------------
    crops = volumes.new_empty(b, k + r, c, d, h, w)
    grid = region.unflatten(3, (num_base, h)).unflatten(5, (num_base, w))  # (B,C,d,n,h,n,w)
    crops[:, :k].unflatten(1, (num_base, num_base)).copy_(grid.permute(0, 3, 5, 1, 2, 4, 6))
    windows = region.unfold(3, h, 1).unfold(4, w, 1)  # (B, C, d, H', W', h, w), no copy
    crops[:, k:] = windows[batch_idx, :, :, origins[..., 0], origins[..., 1]]  # (B,R,C,d,h,w)
    crops = crops.reshape(b * (k + r), c, d, h, w)
    if out_size is not None:
        size = (out_size,) * 3 if isinstance(out_size, int) else tuple(out_size)
        crops = F.interpolate(crops, size=size, mode="trilinear", align_corners=False)
    crops = _augment_(crops, aug, generator, rdev)  # crops is a fresh copy
    crops = crops.view(b, k + r, *crops.shape[1:])
    return VoCoViews(
        crops=crops,
        base=crops[:, :k],
        random=crops[:, k:],
        targets=overlap_targets(origins, (h, w), num_base),
        origins=origins,
        corner=torch.stack([z0, torch.full_like(z0, y0), torch.full_like(z0, x0)], dim=1),
    )
