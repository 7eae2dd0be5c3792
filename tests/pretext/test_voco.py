"""VoCo views: base crops tile the grid, random crops lie inside, targets are area fractions."""

from __future__ import annotations

import pytest
import torch

from medfoundry.pretext.voco import NO_AUGMENT, VoCoAugment, overlap_targets, voco_views


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def volumes(batch: int = 3, shape: tuple[int, int, int] = (6, 12, 12)) -> torch.Tensor:
    """Distinct values everywhere, so any crop can be checked against its source slice."""
    n = batch * shape[0] * shape[1] * shape[2]
    return torch.randperm(n, generator=gen(99)).float().view(batch, 1, *shape)


def brute_force_targets(origin: tuple[int, int], side: tuple[int, int], n: int) -> torch.Tensor:
    """Count the random crop's in-plane pixels inside each base cell, cell by cell."""
    h, w = side
    plane = torch.zeros(n * h, n * w)
    plane[origin[0] : origin[0] + h, origin[1] : origin[1] + w] = 1.0
    cells = [
        plane[i * h : (i + 1) * h, j * w : (j + 1) * w].sum() for i in range(n) for j in range(n)
    ]
    return torch.stack(cells) / (h * w)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_targets_sum_to_one_and_match_brute_force(n: int) -> None:
    views = voco_views(volumes(3, (4, 4 * n, 5 * n)), n, 6, augment=NO_AUGMENT, generator=gen(n))
    assert views.targets.shape == (3, 6, n * n)
    torch.testing.assert_close(views.targets.sum(-1), torch.ones(3, 6))
    for b in range(3):
        for r in range(6):
            origin = tuple(views.origins[b, r].tolist())
            expected = brute_force_targets(origin, (4, 5), n)
            torch.testing.assert_close(views.targets[b, r], expected)
    assert ((views.targets > 0).sum(-1) <= 4).all()


def test_targets_of_aligned_and_straddling_crops() -> None:
    origins = torch.tensor([[[0, 0], [4, 4], [2, 2], [0, 6]]])  # (1, 4, 2), 4x4 crops, 3x3 grid
    t = overlap_targets(origins, (4, 4), 3).view(4, 3, 3)
    assert t[0, 0, 0] == 1 and t[0].sum() == 1  # exactly on base (0, 0)
    assert t[1, 1, 1] == 1  # exactly on base (1, 1)
    assert torch.equal(t[2, :2, :2], torch.full((2, 2), 0.25))  # a quarter on each of four
    assert torch.equal(t[3, 0, 1:], torch.tensor([0.5, 0.5]))  # half on (0, 1), half on (0, 2)


@pytest.mark.parametrize(("shape", "n"), [((6, 12, 12), 3), ((5, 14, 11), 3), ((4, 8, 16), 2)])
def test_base_crops_tile_the_grid_region(shape: tuple[int, int, int], n: int) -> None:
    vol = volumes(2, shape)
    views = voco_views(vol, n, 2, augment=NO_AUGMENT, generator=gen())
    h, w = shape[1] // n, shape[2] // n
    assert views.base.shape == (2, n * n, 1, shape[0], h, w)
    y0, x0 = (shape[1] - n * h) // 2, (shape[2] - n * w) // 2  # the grid is centred
    assert views.corner[:, 1:].tolist() == [[y0, x0]] * 2
    tiles = views.base.view(2, n, n, 1, shape[0], h, w).permute(0, 3, 4, 1, 5, 2, 6)
    region = vol[..., y0 : y0 + n * h, x0 : x0 + n * w]
    assert torch.equal(tiles.reshape(region.shape), region)


def test_random_crops_lie_inside_and_come_from_their_origin() -> None:
    vol = volumes(4, (6, 12, 15))
    views = voco_views(vol, 3, 8, depth=4, augment=NO_AUGMENT, generator=gen(1))
    h, w = 4, 5
    assert views.random.shape == (4, 8, 1, 4, h, w)
    assert (views.origins >= 0).all()
    assert (views.origins[..., 0] <= 2 * h).all() and (views.origins[..., 1] <= 2 * w).all()
    for b in range(4):
        z0, y0, x0 = views.corner[b].tolist()
        assert 0 <= z0 <= 2
        for r in range(8):
            oy, ox = views.origins[b, r].tolist()
            src = vol[b, :, z0 : z0 + 4, y0 + oy : y0 + oy + h, x0 + ox : x0 + ox + w]
            assert torch.equal(views.random[b, r], src)
        assert torch.equal(views.base[b, 0], vol[b, :, z0 : z0 + 4, y0 : y0 + h, x0 : x0 + w])
    assert len(set(views.corner[:, 0].tolist())) > 1  # each volume has its own depth window


def test_augmentation_changes_crops_not_targets() -> None:
    vol = volumes(2, (4, 8, 8))
    plain = voco_views(vol, 2, 3, augment=NO_AUGMENT, generator=gen(2))
    flipped = voco_views(
        vol, 2, 3, augment=VoCoAugment(1.0, 0.0, 0.0), generator=gen(2)
    )  # same seed: positions are drawn before the augmentation
    assert torch.equal(flipped.targets, plain.targets)
    assert torch.equal(flipped.crops, plain.crops.flip(3, 4, 5))
    rotated = voco_views(vol, 2, 3, augment=VoCoAugment(0.0, 1.0, 0.0), generator=gen(2))
    for got, ref in zip(rotated.crops.flatten(0, 1), plain.crops.flatten(0, 1), strict=True):
        assert any(torch.equal(got, ref.rot90(k, dims=(2, 3))) for k in (1, 2, 3))
    shifted = voco_views(vol, 2, 3, augment=VoCoAugment(0.0, 0.0, 1.0, 0.1), generator=gen(2))
    delta = (shifted.crops - plain.crops).flatten(2)  # (B, K+R, voxels)
    assert (delta.amax(-1) - delta.amin(-1)).abs().max() < 1e-4  # one offset per crop
    assert delta.abs().max() <= 0.1 + 1e-5 and delta[..., 0].unique().numel() > 1


def test_default_augmentation_is_partial_and_seeded() -> None:
    vol = volumes(4, (8, 16, 16))
    a = voco_views(vol, 2, 2, generator=gen(3))
    b = voco_views(vol, 2, 2, generator=gen(3))
    plain = voco_views(vol, 2, 2, augment=NO_AUGMENT, generator=gen(3))
    assert torch.equal(a.crops, b.crops) and torch.equal(a.origins, b.origins)
    same = (a.crops == plain.crops).flatten(2).all(-1)  # (B, K+R) crops left as they were
    assert same.any() and not same.all()
    c = voco_views(vol, 2, 2, generator=gen(4))
    assert not torch.equal(a.origins, c.origins)
    assert len({tuple(o.flatten().tolist()) for o in a.origins}) > 1  # volumes differ


def test_out_size_resizes_every_crop() -> None:
    views = voco_views(volumes(2, (6, 12, 12)), 3, 2, out_size=8, generator=gen())
    assert views.crops.shape == (2, 11, 1, 8, 8, 8)
    assert views.base.shape == (2, 9, 1, 8, 8, 8) and views.random.shape == (2, 2, 1, 8, 8, 8)


@pytest.mark.parametrize(
    "kwargs", [{"num_base": 1}, {"num_random": 0}, {"depth": 7}, {"num_base": 13}]
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        voco_views(volumes(1, (6, 12, 12)), **kwargs)
    with pytest.raises(ValueError):
        VoCoAugment(flip_p=1.5)
