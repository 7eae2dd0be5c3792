"""Adam-v2 views: concentric crops, the part grid, area bins, the anchor square, one resample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medfoundry.pretext.adam_v2 import (
    AdamV2Augment,
    concentric_views,
    multicrop_views,
)

# geometry only: no intensity change, no clipping, no antialiasing pre-shrink
PLAIN = {
    "jitter_p": 0.0,
    "global_blur_p": (0.0, 0.0),
    "local_blur_p": 0.0,
    "x0_blur_p": 0.0,
    "x1_blur_p": 0.0,
    "clip": None,
    "antialias": False,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coordinates(batch: int, hgt: int = 96, wid: int = 96) -> torch.Tensor:
    """(batch, 2, H, W): channel 0 holds each pixel centre's x, channel 1 its y (pixels)."""
    yy, xx = torch.meshgrid(torch.arange(hgt) + 0.5, torch.arange(wid) + 0.5, indexing="ij")
    return torch.stack([xx, yy])[None].repeat(batch, 1, 1, 1).float()


@pytest.mark.parametrize("granularity", [0, 1, 2])
def test_shapes(granularity: int) -> None:
    x = torch.randn(3, 1, 64, 64)
    aug = AdamV2Augment(n_local=3, local_size=12, part_size=20)
    mc = multicrop_views(x, granularity, 24, aug, gen())
    assert mc.globals.shape == (3, 2, 1, 24, 24) and mc.locals.shape == (3, 3, 1, 12, 12)
    cv = concentric_views(x, granularity, 24, aug, gen())
    assert cv.x0.shape == cv.x1.shape == (3, 1, 24, 24)
    assert cv.locals.shape == (3, 3, 1, 12, 12) and cv.parts.shape == (3, 4, 1, 20, 20)
    assert cv.boxes.shape == (3, 5, 4) and cv.whole.shape == (3, 4)
    for t in (*mc[:2], cv.x0, cv.x1, cv.locals, cv.parts):
        assert torch.isfinite(t).all() and t.dtype == x.dtype


@pytest.mark.parametrize("granularity", [0, 1, 2])
def test_concentric_views_share_the_centre_of_the_whole(granularity: int) -> None:
    """Boxes and pixels: the mean sample position of x0, x1 and every local crop (rotated or
    not) is the whole's centre; a randomly placed crop would miss it."""
    x = coordinates(16)
    aug = AdamV2Augment(n_local=4, local_size=16, **PLAIN)  # lcd_rotation stays 10 degrees
    v = concentric_views(x, granularity, 32, aug, gen(granularity))
    centre = v.whole[:, :2] + v.whole[:, 2:] / 2  # (B, 2)
    torch.testing.assert_close(v.boxes[..., :2], centre[:, None].expand(-1, 6, -1))
    for view in (v.x0, v.x1, *v.locals.unbind(1)):
        torch.testing.assert_close(view.mean(dim=(2, 3)), centre, atol=0.05, rtol=0)


def test_crop_boxes_are_what_the_pixels_show() -> None:
    """Unrotated, a crop of width w at S pixels spans w (1 - 1/S) of the x ramp."""
    x = coordinates(8)
    aug = AdamV2Augment(n_local=2, local_size=16, lcd_rotation=0.0, **PLAIN)
    v = concentric_views(x, 0, 32, aug, gen(3))
    views = [(v.x1, 32), (v.locals[:, 0], 16), (v.locals[:, 1], 16)]
    for i, (view, size) in enumerate(views, start=1):
        span_x = view[:, 0].amax(dim=(1, 2)) - view[:, 0].amin(dim=(1, 2))
        span_y = view[:, 1].amax(dim=(1, 2)) - view[:, 1].amin(dim=(1, 2))
        torch.testing.assert_close(span_x, v.boxes[:, i, 2] * (1 - 1 / size), atol=1e-3, rtol=0)
        torch.testing.assert_close(span_y, v.boxes[:, i, 3] * (1 - 1 / size), atol=1e-3, rtol=0)


def test_area_bins_and_aspect_ranges_are_respected() -> None:
    aug = AdamV2Augment(n_local=8, local_size=8)
    v = concentric_views(torch.zeros(256, 1, 64, 64), 1, 16, aug, gen(1))
    area = v.boxes[..., 2] * v.boxes[..., 3] / (v.whole[:, None, 2] * v.whole[:, None, 3])
    aspect = (v.boxes[..., 2] / v.whole[:, None, 2]) / (v.boxes[..., 3] / v.whole[:, None, 3])
    torch.testing.assert_close(area[:, 0], torch.ones(256))  # x0 is the whole
    eps = 1e-5
    assert ((area[:, 1] >= 0.8 - eps) & (area[:, 1] <= 1.0 + eps)).all()  # x1
    bins = aug.local_bins
    assert bins[0] == (0.05, 0.1) and bins[-1] == (0.7, 0.8) and len(bins) == 8
    for i, (lo, hi) in enumerate(bins):
        a = area[:, 2 + i]
        assert ((a >= lo - eps) & (a <= hi + eps)).all(), (i, a.min(), a.max())
        assert a.max() - a.min() > 0.3 * (hi - lo)  # drawn across the bin, not one value
        r_lo, r_hi = aug.local_ratios[i % 2]
        r = aspect[:, 2 + i]
        fell_back = (r - 1).abs() < eps  # the square fallback of a bin's smallest area
        assert (((r >= r_lo - eps) & (r <= r_hi + eps)) | fell_back).all()
    # the views fill the bins in order: a larger bin gives a larger crop
    assert (area[:, 3:].mean(0) > area[:, 2:-1].mean(0)).all()


def test_fewer_local_crops_merge_the_reference_bins() -> None:
    assert AdamV2Augment(n_local=4).local_bins == ((0.05, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8))
    assert AdamV2Augment(n_local=1).local_bins == ((0.05, 0.8),)
    with pytest.raises(ValueError, match="local_bins"):
        AdamV2Augment(n_local=9)
    with pytest.raises(ValueError, match="local_bins"):
        AdamV2Augment(n_local=2, local_bins=[[0.1, 0.2]])


@pytest.mark.parametrize("granularity", [0, 1, 2])
def test_parts_tile_the_whole_exactly(granularity: int) -> None:
    """Parts at their native size are slices of the image; resized, they are the slices
    resized; the 4 parts put together are the whole."""
    x = torch.randn(4, 1, 64, 64)
    native = 64 // 2**granularity // 2
    for size in (native, 12):
        aug = AdamV2Augment(n_local=1, local_size=8, part_size=size, **PLAIN)
        v = concentric_views(x, granularity, 16, aug, gen(granularity))
        for i in range(4):
            x0, y0, w, h = (int(t) for t in v.whole[i].tolist())
            whole = x[i : i + 1, :, y0 : y0 + h, x0 : x0 + w]
            for k in range(4):
                r, c = divmod(k, 2)
                part = whole[..., r * h // 2 : (r + 1) * h // 2, c * w // 2 : (c + 1) * w // 2]
                if size != native:
                    part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
                torch.testing.assert_close(v.parts[i, k], part[0], atol=1e-4, rtol=0)
            if size == native:
                top = torch.cat([v.parts[i, 0], v.parts[i, 1]], dim=-1)
                bottom = torch.cat([v.parts[i, 2], v.parts[i, 3]], dim=-1)
                torch.testing.assert_close(
                    torch.cat([top, bottom], dim=-2), whole[0], atol=1e-4, rtol=0
                )


@pytest.mark.parametrize("granularity", [1, 2])
def test_the_whole_keeps_its_margin_from_the_border(granularity: int) -> None:
    x = torch.zeros(200, 1, 100, 80)
    v = concentric_views(x, granularity, 16, AdamV2Augment(n_local=0, whole_margin=0.1), gen())
    x0, y0, w, h = v.whole.unbind(1)
    assert (w == 80 // 2**granularity).all() and (h == 100 // 2**granularity).all()
    assert (x0 >= 8).all() and (y0 >= 10).all()
    assert (x0 + w <= 72).all() and (y0 + h <= 90).all()
    assert (x0 == x0.round()).all() and len(set(x0.tolist())) > 3  # integer, random
    g0 = concentric_views(x, 0, 16, AdamV2Augment(n_local=0), gen())
    assert g0.whole[:, :2].eq(0).all() and g0.whole[0, 2:].tolist() == [80, 100]


@pytest.mark.parametrize("granularity", [0, 1, 2])
def test_multicrop_views_stay_inside_one_square(granularity: int) -> None:
    x = coordinates(16, 96, 80)
    aug = AdamV2Augment(n_local=3, local_size=12, **PLAIN)  # rotation stays 30 degrees
    v = multicrop_views(x, granularity, 24, aug, gen(granularity))
    side = 80 // 2**granularity
    assert (v.square[:, 2:] == side).all()
    lo, hi = v.square[:, :2], v.square[:, :2] + side
    for view in (*v.globals.unbind(1), *v.locals.unbind(1)):
        pos = view.flatten(2)  # (B, 2, S*S) sample positions
        assert (pos >= lo[..., None] + 0.5 - 1e-3).all() and (
            pos <= hi[..., None] - 0.5 + 1e-3
        ).all()
    if granularity > 0:
        assert len(set(v.square[:, 0].tolist())) > 3  # the square moves over the image


def test_one_resample_for_all_views(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.grid_sample

    def counting(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "grid_sample", counting)
    x = torch.randn(3, 1, 64, 64)
    aug = AdamV2Augment(n_local=2, local_size=16, part_size=20)
    multicrop_views(x, 1, 32, aug, gen())
    concentric_views(x, 1, 32, aug, gen())
    assert len(calls) == 2  # every view of the batch in one call each
    assert calls[1][2] == 2 * 32 * 32 + 2 * 16 * 16 + 4 * 20 * 20  # x0, x1, locals, parts


def test_seeded_and_deterministic() -> None:
    x = torch.randn(4, 1, 64, 64)
    aug = AdamV2Augment(n_local=2, local_size=16)
    a, b = concentric_views(x, 1, 32, aug, gen(5)), concentric_views(x, 1, 32, aug, gen(5))
    assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))
    c = concentric_views(x, 1, 32, aug, gen(6))
    assert not torch.equal(a.x1, c.x1)
    m1, m2 = multicrop_views(x, 0, 32, aug, gen(5)), multicrop_views(x, 0, 32, aug, gen(5))
    assert torch.equal(m1.globals, m2.globals) and torch.equal(m1.locals, m2.locals)


def test_blur_probabilities_per_view() -> None:
    """Stage L: the first global view is always blurred (p = 1), the second never (p = 0)."""
    x = torch.randn(32, 1, 64, 64)
    same_crop = {"global_scale": (1.0, 1.0), "ratio": (1.0, 1.0), "rotation": 0.0}
    aug = AdamV2Augment(
        n_local=0,
        global_blur_p=(1.0, 0.0),
        jitter_p=0.0,
        blur_sigma=(3.0, 7.0),
        antialias=False,
        **same_crop,
    )
    v = multicrop_views(x, 0, 64, aug, gen())
    roughness = (v.globals[..., 1:] - v.globals[..., :-1]).abs().mean(dim=(2, 3, 4))  # (B, 2)
    assert (roughness[:, 0] < 0.9 * roughness[:, 1]).all()
    plain = multicrop_views(
        x, 0, 64, AdamV2Augment(**{**vars(aug), "global_blur_p": (0, 0)}), gen()
    )
    torch.testing.assert_close(plain.globals[:, 1], v.globals[:, 1])  # the unblurred view
