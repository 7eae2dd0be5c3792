"""Anatomy decomposer views: cells, geometry, augmentation probabilities, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medfoundry.pretext import AnatomyAugment, decompose_views

NO_INTENSITY = {"jitter_p": 0.0, "blur_p": 0.0}


def grid_image(n: int, size: int = 64, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, 1, size, size) images whose n x n cells have distinct constant values."""
    values = torch.linspace(-1.5, 1.5, n * n).reshape(n, n)
    cell = size // n
    img = values.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return img[None, None].repeat(batch, 1, 1, 1), values


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("n_views", [1, 2, 3])
def test_shapes_and_dtype(channels: int, n_views: int) -> None:
    x = torch.randn(3, channels, 64, 48)
    views = decompose_views(x, 2, n_views=n_views, out_size=32, generator=gen())
    assert len(views) == n_views
    for v in views:
        assert v.shape == (3, channels, 32, 32)
        assert v.dtype == x.dtype
        assert torch.isfinite(v).all()


def test_color_views_keep_channels_equal_for_gray_rgb() -> None:
    """Jitter and blur act identically on every channel (no hue/saturation on gray RGB)."""
    x = torch.randn(4, 1, 64, 64).repeat(1, 3, 1, 1)
    aug = AnatomyAugment(jitter_p=1.0, blur_p=1.0)
    for v in decompose_views(x, 0, out_size=32, aug=aug, generator=gen()):
        assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 0], v[:, 2])


@pytest.mark.parametrize("level", [2, 4])
def test_all_views_come_from_the_chosen_cell(level: int) -> None:
    img, values = grid_image(level, batch=64)
    aug = AnatomyAugment(**NO_INTENSITY)
    views, cells = decompose_views(
        img, level, out_size=24, aug=aug, generator=gen(level), return_cells=True
    )
    assert cells.shape == (64, 2)
    expected = values[cells[:, 0], cells[:, 1]].view(-1, 1, 1, 1)
    for v in views:  # every pixel of both views holds the chosen cell's value: no leakage
        torch.testing.assert_close(v, expected.expand_as(v), atol=1e-5, rtol=0)
    # cells are drawn uniformly: with 64 samples, every cell of a 2x2 grid appears
    if level == 2:
        assert len({tuple(c) for c in cells.tolist()}) == 4


def test_constant_padding_only_fills_outside_the_cell() -> None:
    img, values = grid_image(2, batch=32)
    aug = AnatomyAugment(padding=-2.0, **NO_INTENSITY)
    views, cells = decompose_views(img, 2, out_size=24, aug=aug, generator=gen(), return_cells=True)
    expected = values[cells[:, 0], cells[:, 1]].view(-1, 1, 1, 1)
    for v in views:
        is_cell = (v - expected).abs() < 1e-5
        is_fill = (v + 2.0).abs() < 1e-5
        assert (is_cell | is_fill).all()
        assert is_fill.any()  # +-30 degree rotations reach outside the crop box somewhere


def test_cells_are_uniform() -> None:
    x = torch.zeros(4000, 1, 8, 8)
    aug = AnatomyAugment(**NO_INTENSITY)
    _, cells = decompose_views(x, 4, out_size=2, aug=aug, generator=gen(), return_cells=True)
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).float()
    assert counts.min() > 4000 / 16 * 0.7 and counts.max() < 4000 / 16 * 1.3


def test_level_zero_is_the_whole_image() -> None:
    x = torch.randn(3, 1, 64, 64)
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "rotation": 0.0, **NO_INTENSITY}
    views, cells = decompose_views(
        x, 0, out_size=32, aug=AnatomyAugment(antialias=False, **whole), return_cells=True
    )
    assert (cells == 0).all()
    ref = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    for v in views:
        torch.testing.assert_close(v, ref)
    # with antialiasing (the default), the whole image is shrunk like an antialiased resize
    views = decompose_views(x, 0, out_size=32, aug=AnatomyAugment(**whole))
    ref = F.interpolate(x, size=32, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(views[0], ref)


def test_antialias_suppresses_aliasing() -> None:
    checker = ((torch.arange(256)[:, None] + torch.arange(256)[None, :]) % 2).float() * 2 - 1
    x = checker[None, None].repeat(4, 1, 1, 1)
    plain = AnatomyAugment(antialias=False, rotation=0.0, **NO_INTENSITY)
    smooth = AnatomyAugment(antialias=True, rotation=0.0, **NO_INTENSITY)
    aliased = decompose_views(x, 0, out_size=16, aug=plain, generator=gen())[0]
    clean = decompose_views(x, 0, out_size=16, aug=smooth, generator=gen())[0]
    assert clean.abs().mean() < 0.1 * aliased.abs().mean()


def test_no_flip_left_right_order_is_kept() -> None:
    """Bright left half, dark right half: every row of every view is non-increasing.

    Crops, +-30 degree rotations and jitter (positive factors) keep that order; a horizontal
    flip would reverse it.
    """
    x = torch.ones(1, 1, 64, 64)
    x[..., 32:] = -1.0
    x = x.repeat(200, 1, 1, 1)
    aug = AnatomyAugment(blur_p=0.0)  # reflect-padded blur may bend rows at the border
    views = decompose_views(x, 0, out_size=32, aug=aug, generator=gen())
    for v in views:
        steps = v[..., 1:] - v[..., :-1]
        assert (steps <= 1e-5).all()
        assert (steps < -0.1).any()
        left, right = v[..., :16].mean(), v[..., 16:].mean()
        assert left > right + 0.3


def test_views_are_independent() -> None:
    x = torch.randn(8, 1, 64, 64)
    v1, v2 = decompose_views(x, 2, out_size=32, generator=gen())
    assert not torch.allclose(v1, v2)
    assert ((v1 - v2).abs().flatten(1).amax(1) > 1e-3).all()  # per sample, not just overall


def test_seeded_generator_is_deterministic() -> None:
    x = torch.randn(4, 1, 64, 64)
    a = decompose_views(x, 4, out_size=32, generator=gen(7))
    b = decompose_views(x, 4, out_size=32, generator=gen(7))
    c = decompose_views(x, 4, out_size=32, generator=gen(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.allclose(a[0], c[0])


def _changed_fraction(
    x: torch.Tensor, base: AnatomyAugment, on: AnatomyAugment, out_size: int = 16
) -> float:
    """Fraction of views that differ between two augment settings under the same seed."""
    ref = torch.cat(decompose_views(x, 0, out_size=out_size, aug=base, generator=gen(3)))
    out = torch.cat(decompose_views(x, 0, out_size=out_size, aug=on, generator=gen(3)))
    return ((ref - out).abs().flatten(1).amax(1) > 1e-4).float().mean().item()


def test_jitter_probability() -> None:
    x = torch.randn(1500, 1, 32, 32) * 0.5
    base = AnatomyAugment(**NO_INTENSITY)
    frac = _changed_fraction(x, base, AnatomyAugment(jitter_p=0.8, blur_p=0.0))
    assert abs(frac - 0.8) < 0.04  # 3000 views: std ~0.007


def test_blur_probability_and_effect() -> None:
    # sigma is given for a 224-pixel view: (3.5, 7) at 224 is (1, 2) pixels at 64
    x = torch.randn(1000, 1, 32, 32) * 0.5
    base = AnatomyAugment(**NO_INTENSITY)
    on = AnatomyAugment(jitter_p=0.0, blur_p=0.5, blur_sigma=(3.5, 7.0))
    assert abs(_changed_fraction(x, base, on, out_size=64) - 0.5) < 0.04
    # blur lowers high-frequency energy
    always = AnatomyAugment(jitter_p=0.0, blur_p=1.0, blur_sigma=(3.5, 7.0))
    sharp = decompose_views(x[:64], 0, out_size=64, aug=base, generator=gen())[0]
    soft = decompose_views(x[:64], 0, out_size=64, aug=always, generator=gen())[0]
    assert soft.diff(dim=-1).abs().mean() < 0.7 * sharp.diff(dim=-1).abs().mean()


def test_jitter_acts_in_normalised_space() -> None:
    """Brightness scales about black (-2), contrast about the view mean, then [-2, 2] clip."""
    x = torch.full((500, 1, 16, 16), 0.5)
    aug = AnatomyAugment(jitter_p=1.0, blur_p=0.0)
    v = torch.cat(decompose_views(x, 0, out_size=8, aug=aug, generator=gen()))
    per_view = v.flatten(1)
    assert (per_view.std(1) < 1e-5).all()  # a constant image stays constant (contrast is a no-op)
    values = per_view[:, 0]
    # brightness in [0.6, 1.4] about -2: 0.5 -> -2 + b * 2.5 in [-0.5, 1.5]
    assert values.min() >= -0.5 - 1e-5 and values.max() <= 1.5 + 1e-5
    assert values.max() - values.min() > 1.5
    assert v.min() >= -2.0 and v.max() <= 2.0


def test_rejects_bad_arguments() -> None:
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError):
        decompose_views(x[0], 0)
    with pytest.raises(ValueError):
        decompose_views(x, -1)
    with pytest.raises(ValueError):
        decompose_views(x, 16)
    with pytest.raises(ValueError):
        AnatomyAugment(scale=(0.5, 0.2))
    with pytest.raises(ValueError):
        AnatomyAugment(padding="zeros")


def test_half_precision_images() -> None:
    x = torch.randn(2, 1, 64, 64)
    ref = decompose_views(x, 2, out_size=32, generator=gen())
    low = decompose_views(x.bfloat16(), 2, out_size=32, generator=gen())
    assert low[0].dtype == torch.bfloat16
    torch.testing.assert_close(low[0].float(), ref[0], atol=0.05, rtol=0.05)
