"""Crop boxes and crop sampling for Eve."""

from __future__ import annotations

import pytest
import torch

from medfoundry.embed.crops import centred_boxes, dense_centres, grid_boxes, random_boxes, sub_grid
from medfoundry.embed.sampling import crop_resize


def test_grid_boxes_per_scale_stay_inside_and_have_their_side():
    boxes, scales = grid_boxes(100, 200, grid=4, scales=[1.0, 0.5, 0.25])
    # scale 1 on a non-square image: crops of 100 slide along x only (4 distinct, 1 row)
    side = boxes[:, 2] - boxes[:, 0]
    assert torch.allclose(side, scales * 100)
    assert torch.allclose(boxes[:, 3] - boxes[:, 1], side)
    assert (boxes[:, :2] >= -1e-4).all() and (boxes[:, 2] <= 200 + 1e-4).all()
    assert (boxes[:, 3] <= 100 + 1e-4).all()
    assert (scales == 1.0).sum() == 4  # 4 x-centres x 1 y-centre
    assert (scales == 0.5).sum() == 16 and (scales == 0.25).sum() == 16
    with pytest.raises(ValueError, match="scale"):
        grid_boxes(10, 10, 2, [1.5])


def test_whole_image_is_one_crop_on_a_square_image():
    boxes, _ = grid_boxes(64, 64, grid=3, scales=[1.0])
    assert boxes.tolist() == [[0.0, 0.0, 64.0, 64.0]]


def test_sub_grid_tiles_the_box_exactly():
    box = torch.tensor([[10.0, 20.0, 70.0, 50.0]])
    parts = sub_grid(box, rows=3, cols=2)[0]  # (6, 4)
    assert parts.shape == (6, 4)
    area = ((parts[:, 2] - parts[:, 0]) * (parts[:, 3] - parts[:, 1])).sum()
    assert torch.isclose(area, torch.tensor(60.0 * 30.0))
    assert parts[0].tolist() == [10.0, 20.0, 40.0, 30.0]  # row-major: top-left first
    assert parts[1].tolist() == [40.0, 20.0, 70.0, 30.0]
    assert parts[-1].tolist() == [40.0, 40.0, 70.0, 50.0]


def test_dense_centres_and_random_boxes():
    c = dense_centres(32, 48, stride=8)
    assert c.shape == (4 * 6, 2)
    assert c[0].tolist() == [4.0, 4.0] and c[1].tolist() == [12.0, 4.0]
    b = random_boxes(50, 80, 20, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(b[:, 2] - b[:, 0], torch.full((20,), 25.0))
    assert (b[:, 0] >= 0).all() and (b[:, 2] <= 80).all() and (b[:, 3] <= 50).all()
    assert centred_boxes(torch.tensor([[5.0, 6.0]]), 4.0).tolist() == [[3.0, 4.0, 7.0, 8.0]]


def test_crop_resize_cuts_the_region_the_box_names_at_any_working_size():
    # stored image 8x8 with a value = column index; held at 16x16 (working size) for sampling
    stored = torch.arange(8.0).repeat(8, 1)[None, None]  # (1, 1, 8, 8)
    work = torch.nn.functional.interpolate(stored, size=16, mode="nearest")
    sizes = torch.tensor([[8, 8]])
    box = torch.tensor([[4.0, 0.0, 8.0, 8.0]])  # right half
    for images in (stored, work):
        crop = crop_resize(images, sizes, torch.tensor([0]), box, out_size=4)
        assert crop.shape == (1, 1, 4, 4)
        assert crop.min() >= 4.0 - 1e-5  # nothing of the left half
    whole = crop_resize(stored, sizes, torch.tensor([0]), torch.tensor([[0.0, 0, 8, 8]]), 8)
    assert torch.allclose(whole, stored)  # the whole box at the stored size is the identity
