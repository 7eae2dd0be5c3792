"""Volume Fusion views: the blend follows the class map, blocks are painted cuboids in order."""

from __future__ import annotations

import pytest
import torch

from medfoundry.pretext.volume_fusion import (
    MAX_BLOCKS,
    FusionConfig,
    draw_blocks,
    paint_blocks,
    random_derangement,
    volume_fusion,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def pair(batch: int = 3, shape: tuple[int, int, int] = (16, 24, 20), dtype=torch.float64):
    g = gen(123)
    fg = torch.randn(batch, 1, *shape, generator=g, dtype=dtype)
    bg = torch.randn(batch, 1, *shape, generator=g, dtype=dtype)
    return fg, bg


def painted_by_loop(blocks, shape: tuple[int, int, int]) -> torch.Tensor:
    """Reference painter: per sample, per active block, in order, each over the previous."""
    start, stop, label, active = blocks
    out = torch.zeros(label.shape[0], *shape, dtype=torch.long)
    for b in range(label.shape[0]):
        for m in range(label.shape[1]):
            if active[b, m]:
                (z0, y0, x0), (z1, y1, x1) = start[b, m].tolist(), stop[b, m].tolist()
                out[b, z0:z1, y0:y1, x0:x1] = label[b, m]
    return out


@pytest.mark.parametrize("k", [4, 2])
def test_fused_voxels_follow_the_class_map(k: int) -> None:
    fg, bg = pair()
    fused, labels = volume_fusion(fg, bg, FusionConfig(num_classes_fg=k), generator=gen())
    assert fused.shape == fg.shape and fused.dtype == fg.dtype
    assert labels.shape == (3, 16, 24, 20) and labels.dtype == torch.long
    alpha = (labels.double() / k)[:, None]
    torch.testing.assert_close(fused, alpha * fg + (1 - alpha) * bg, rtol=0, atol=1e-12)
    zero, full = (labels == 0)[:, None], (labels == k)[:, None]
    assert zero.any() and full.any()
    assert torch.equal(fused[zero], bg[zero])  # exact: pure background
    assert torch.equal(fused[full], fg[full])  # exact: pure foreground


def test_class_values_are_0_to_k_and_all_occur() -> None:
    fg, bg = pair(batch=4, shape=(32, 32, 32), dtype=torch.float32)
    _, labels = volume_fusion(fg, bg, generator=gen(1))
    assert labels.min() >= 0 and labels.max() <= 4
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("num_blocks", [(10, 40), (MAX_BLOCKS, MAX_BLOCKS)])
def test_painting_matches_a_per_block_loop(num_blocks: tuple[int, int]) -> None:
    """Later blocks overwrite earlier ones, blocks are cuboids, inactive slots paint nothing
    (up to the highest bit the float64 trick supports)."""
    shape = (12, 20, 16)
    cfg = FusionConfig(num_blocks=num_blocks, depth=(0.1, 0.6), size=(0.1, 0.6))
    blocks = draw_blocks(5, shape, cfg, generator=gen(2))
    assert blocks.active.sum(1).min() >= num_blocks[0]
    assert blocks.active.sum(1).max() <= num_blocks[1]
    assert torch.equal(paint_blocks(blocks, shape), painted_by_loop(blocks, shape))


def test_a_single_block_is_a_filled_cuboid() -> None:
    shape = (16, 16, 16)
    cfg = FusionConfig(num_blocks=(1, 1), depth=(0.3, 0.5), size=(0.3, 0.5))
    fg, bg = pair(batch=6, shape=shape)
    _, labels, blocks = volume_fusion(fg, bg, cfg, generator=gen(3), return_blocks=True)
    for b in range(6):
        idx = labels[b].nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        box = labels[b, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        assert (box == blocks.label[b, 0]).all()  # the bounding box is completely filled
        assert idx.shape[0] == box.numel()  # and nothing lies outside it
        assert lo.tolist() == blocks.start[b, 0].tolist()
        assert hi.tolist() == blocks.stop[b, 0].tolist()


def test_block_sizes_follow_the_config() -> None:
    shape = (64, 128, 128)  # the paper's sub-volume: depth 8..40, height and width 8..80
    blocks = draw_blocks(8, shape, FusionConfig(), generator=gen(4))
    sides = blocks.stop - blocks.start
    inside = ((blocks.start > 0) & (blocks.stop < torch.tensor(shape))).all(-1)  # not clipped
    depth, hw = sides[..., 0][inside], sides[..., 1:][inside]
    assert depth.min() >= 8 and depth.max() <= 40
    assert hw.min() >= 8 and hw.max() <= 80
    assert (sides >= 1).all()


def test_seeded_determinism_and_samples_differ() -> None:
    fg, bg = pair(batch=4)
    a = volume_fusion(fg, bg, generator=gen(5))
    b = volume_fusion(fg, bg, generator=gen(5))
    c = volume_fusion(fg, bg, generator=gen(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    maps = a[1].flatten(1)
    assert len({tuple(row.tolist()) for row in maps}) == 4  # a fresh draw per sample


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_derangement_has_no_fixed_point(n: int) -> None:
    for seed in range(20):
        perm = random_derangement(n, generator=gen(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()
    assert torch.equal(random_derangement(n, gen(1)), random_derangement(n, gen(1)))
    with pytest.raises(ValueError):
        random_derangement(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_blocks": (1, MAX_BLOCKS + 1)},
        {"num_blocks": (5, 2)},
        {"depth": (0.0, 0.5)},
        {"size": (0.5, 0.2)},
        {"num_classes_fg": 0},
    ],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FusionConfig(**kwargs)


def test_shape_mismatch_raises() -> None:
    fg, bg = pair()
    with pytest.raises(ValueError, match="one shape"):
        volume_fusion(fg, bg[:, :, :8])
