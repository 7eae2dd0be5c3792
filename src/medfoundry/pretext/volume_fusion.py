"""MIS-FM Volume Fusion: blend two sub-volumes voxel by voxel and ask for the blend weight.

``X = alpha * F + (1 - alpha) * B`` with ``alpha`` constant inside random cuboid blocks and 0
outside them; ``alpha`` takes the ``K + 1`` values ``{0, 1/K, ..., 1}`` and the segmentation
target is the class map ``K * alpha`` (K = 4: 5 classes). This is the 2023 paper's recipe as
PyMIC's ``volume_fusion`` implements it: per volume ``M ~ U{10..40}`` blocks, each with random
sizes, a centre anywhere in the volume (clipped at the borders) and a class ``~ U{1..K}``;
later blocks overwrite earlier ones, which makes irregular regions.

Block sizes are fractions of the sub-volume's extent so that the class statistics do not
depend on the crop size: the defaults are the paper's voxel ranges on its 64x128x128
sub-volumes (depth 8..40 of 64, height and width 8..80 of 128).

Everything is batched on the input's device, with no Python loop over samples or blocks:
each block is an interval per axis, so one bit per block marks, per axis, the coordinates it
covers; ``z``, ``y`` and ``x`` bit sets are ANDed by broadcasting into the set of blocks that
cover each voxel, and the *last* of them (the one painted on top) is its highest set bit,
read exactly from the float64 exponent (exact below 2**53, hence at most ``MAX_BLOCKS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

# Highest-bit trick: int64 bit sets below 2**53 convert to float64 exactly.
MAX_BLOCKS = 53
_F64_EXPONENT_SHIFT = 52  # float64 bits: sign | 11 exponent bits | 52 mantissa bits
_F64_EXPONENT_BIAS = 1023  # biased exponent of 2**m is 1023 + m; of 0.0 it is 0


@dataclass
class FusionConfig:
    """Block sampling of Volume Fusion (defaults: the MIS-FM paper's ranges).

    Attributes:
        num_classes_fg: K, the number of non-zero blend weights (classes are 0..K).
        num_blocks: (min, max) blocks per volume, inclusive.
        depth: (min, max) block depth as fractions of the sub-volume depth D.
        size: (min, max) block height and width as fractions of H and W.
    """

    num_classes_fg: int = 4
    num_blocks: tuple[int, int] = (10, 40)
    depth: tuple[float, float] = (8 / 64, 40 / 64)
    size: tuple[float, float] = (8 / 128, 80 / 128)

    def __post_init__(self) -> None:
        # YAML gives lists: store tuples so instances compare and print cleanly
        self.num_blocks = (int(self.num_blocks[0]), int(self.num_blocks[1]))
        self.depth = (float(self.depth[0]), float(self.depth[1]))
        self.size = (float(self.size[0]), float(self.size[1]))
        if self.num_classes_fg < 1:
            raise ValueError(f"num_classes_fg must be >= 1, got {self.num_classes_fg}")
        lo, hi = self.num_blocks
        if not 1 <= lo <= hi <= MAX_BLOCKS:
            raise ValueError(f"num_blocks must satisfy 1 <= lo <= hi <= {MAX_BLOCKS}, got {lo, hi}")
        for name in ("depth", "size"):
            lo_f, hi_f = getattr(self, name)
            if not 0.0 < lo_f <= hi_f:
                raise ValueError(f"{name} must satisfy 0 < lo <= hi, got {getattr(self, name)}")


class FusionBlocks(NamedTuple):
    """The drawn blocks of a batch, ``M = num_blocks[1]`` slots per volume."""

    start: Tensor  # (B, M, 3) long, first voxel (z, y, x), clipped to the volume
    stop: Tensor  # (B, M, 3) long, one past the last voxel, clipped to the volume
    label: Tensor  # (B, M) long, class in 1..K
    active: Tensor  # (B, M) bool, slot m is used when m < the volume's block count


def _size_range(extent: int, fractions: tuple[float, float]) -> tuple[int, int]:
    """Inclusive voxel range of a block side along an axis of ``extent`` voxels."""
    lo = max(1, round(fractions[0] * extent))
    return lo, max(lo, round(fractions[1] * extent))


def draw_blocks(
    batch: int,
    shape: tuple[int, int, int],
    config: FusionConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> FusionBlocks:
    """Random blocks for ``batch`` volumes of ``shape`` (D, H, W), a fresh draw per volume.

    Draws happen on the generator's device (a CPU generator gives the same blocks anywhere) in
    a fixed order; the blocks are returned on ``device``.
    """
    cfg = config or FusionConfig()
    rdev = generator.device if generator is not None else device
    slots = cfg.num_blocks[1]
    ranges = [_size_range(shape[0], cfg.depth)] + [_size_range(n, cfg.size) for n in shape[1:]]
    count = torch.randint(
        cfg.num_blocks[0], slots + 1, (batch, 1), generator=generator, device=rdev
    )
    sizes = torch.stack(
        [
            torch.randint(lo, hi + 1, (batch, slots), generator=generator, device=rdev)
            for lo, hi in ranges
        ],
        dim=-1,
    )  # (B, M, 3)
    extent = torch.tensor(shape, device=rdev)
    centre = (torch.rand(batch, slots, 3, generator=generator, device=rdev) * extent).long()
    label = torch.randint(
        1, cfg.num_classes_fg + 1, (batch, slots), generator=generator, device=rdev
    )
    start = centre - sizes // 2
    stop = torch.minimum(start + sizes, extent)
    start = start.clamp_min(0)
    active = torch.arange(slots, device=rdev) < count  # (B, M)
    return FusionBlocks(*(t.to(device) for t in (start, stop, label, active)))


def paint_blocks(blocks: FusionBlocks, shape: tuple[int, int, int]) -> Tensor:
    """Class map (B, D, H, W) long: the label of the last active block covering each voxel, 0
    where none does (painting the blocks in order, each over the previous ones)."""
    start, stop, label, active = blocks
    batch, slots = label.shape
    if slots > MAX_BLOCKS:
        raise ValueError(f"at most {MAX_BLOCKS} blocks per volume, got {slots}")
    dev = label.device
    bit = torch.where(active, 1 << torch.arange(slots, device=dev), 0)  # (B, M) int64

    def covering(axis: int) -> Tensor:
        """(B, n): bit set of the blocks covering each coordinate of ``axis``."""
        coord = torch.arange(shape[axis], device=dev)
        inside = (coord >= start[..., axis, None]) & (coord < stop[..., axis, None])  # (B, M, n)
        return (inside * bit[..., None]).sum(dim=1)  # disjoint bits: sum == OR

    zy = covering(0)[:, :, None] & covering(1)[:, None, :]  # (B, D, H)
    # One int64 buffer, transformed in place (one large allocation instead of four):
    # bit sets -> float64 -> biased exponent (1023 + m for highest bit m, 0 for no block)
    # -> class of block m.
    out = torch.empty(batch, *shape, dtype=torch.long, device=dev)  # (B, D, H, W)
    torch.bitwise_and(zy[..., None], covering(2)[:, None, None, :], out=out)
    out.view(torch.float64).copy_(out)  # exact: every bit set is below 2**53
    exponent = out.bitwise_right_shift_(_F64_EXPONENT_SHIFT).view(batch, -1)
    table = torch.zeros(batch, _F64_EXPONENT_BIAS + slots, dtype=torch.long, device=dev)
    table[:, _F64_EXPONENT_BIAS:] = label  # exponent -> class of that block (0 -> class 0)
    torch.gather(table, 1, exponent, out=exponent)
    return out


def fuse(foreground: Tensor, background: Tensor, labels: Tensor, num_classes_fg: int) -> Tensor:
    """``alpha * F + (1 - alpha) * B`` with ``alpha = labels / K``, as one ``lerp`` pass.

    Args:
        foreground, background: (B, C, D, H, W) sub-volumes, intensity-normalised alike.
        labels: (B, D, H, W) classes in 0..K.
    """
    alpha = labels.to(foreground.dtype).div_(num_classes_fg).unsqueeze(1)  # (B, 1, D, H, W)
    return torch.lerp(background, foreground, alpha)  # exact at alpha = 0 and alpha = 1


def volume_fusion(
    foreground: Tensor,
    background: Tensor,
    config: FusionConfig | None = None,
    generator: torch.Generator | None = None,
    return_blocks: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, FusionBlocks]:
    """Fused sub-volumes and their class maps.

    Args:
        foreground, background: (B, C, D, H, W) sub-volumes of the same shape.
        config: block sampling (default: the paper's).
        generator: torch generator for reproducible blocks.
        return_blocks: also return the drawn ``FusionBlocks``.

    Returns:
        fused (B, C, D, H, W) in the inputs' dtype and labels (B, D, H, W) long in 0..K
        (and the blocks).
    """
    if foreground.ndim != 5 or foreground.shape != background.shape:
        raise ValueError(
            "foreground and background must be (B, C, D, H, W) of one shape, got "
            f"{tuple(foreground.shape)} and {tuple(background.shape)}"
        )
    cfg = config or FusionConfig()
    shape = tuple(int(s) for s in foreground.shape[2:])
    blocks = draw_blocks(foreground.shape[0], shape, cfg, generator, foreground.device)
    labels = paint_blocks(blocks, shape)
    fused = fuse(foreground, background, labels, cfg.num_classes_fg)
    if return_blocks:
        return fused, labels, blocks
    return fused, labels


def random_derangement(
    n: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """A random permutation (n,) with no fixed point: ``perm[i] != i`` for every i (n >= 2).

    One random cycle through all n indices (each follows the next in a shuffled order), so a
    volume is never fused with itself; uniform over the (n - 1)! such cycles.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    rdev = generator.device if generator is not None else device
    order = torch.randperm(n, generator=generator, device=rdev)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm.to(device)
