"""evaluate/baselines.py: the mean-mask reference predictor on constructed masks."""

from __future__ import annotations

import pytest
import torch

from medfoundry.evaluate.baselines import mean_mask_dice, mean_mask_prediction
from medfoundry.metrics.segmentation import dice_score


def _box(h: int, w: int, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """(h, w) float mask with ones in rows r0:r1, columns c0:c1."""
    m = torch.zeros(h, w)
    m[r0:r1, c0:c1] = 1.0
    return m


def test_identical_training_masks_predict_themselves_exactly():
    mask = torch.stack([_box(8, 8, 1, 5, 2, 7), _box(8, 8, 0, 2, 0, 8)])  # (S=2, H, W)
    train = mask.expand(3, -1, -1, -1)
    assert torch.equal(mean_mask_prediction(train), mask.bool())
    test = torch.stack([mask, mask])  # the test images share that mask: Dice exactly 1
    assert torch.equal(mean_mask_dice(train, test), torch.ones(2, 2, dtype=torch.float64))


def test_majority_vote_and_dice_against_each_test_mask():
    a, b, c = _box(6, 6, 0, 4, 0, 4), _box(6, 6, 0, 4, 2, 6), _box(6, 6, 2, 6, 0, 4)
    train = torch.stack([a, b, c])[:, None]  # (3, 1, 6, 6)
    votes = a + b + c
    assert torch.equal(mean_mask_prediction(train)[0], votes >= 2)  # mean > 0.5 <=> 2 of 3
    test = torch.stack([a, torch.zeros(6, 6), torch.ones(6, 6)])[:, None]
    got = mean_mask_dice(train, test)
    pred = (votes >= 2)[None, None].expand(3, 1, 6, 6)
    assert got.shape == (3, 1) and got.dtype == torch.float64
    assert torch.allclose(got, dice_score(pred, test))
    inter, p_sum = float(((votes >= 2) & a.bool()).sum()), float((votes >= 2).sum())
    assert got[0, 0] == pytest.approx(2 * inter / (p_sum + float(a.sum())))
    assert got[1, 0] == 0.0  # empty test mask, non-empty prediction


def test_half_coverage_is_background_and_empty_pairs_score_one():
    train = torch.stack([_box(4, 4, 0, 2, 0, 4), torch.zeros(4, 4)])[:, None]  # mean 0.5 / 0
    assert not mean_mask_prediction(train).any()  # 0.5 is not more than half
    assert torch.equal(
        mean_mask_dice(train, torch.zeros(2, 1, 4, 4)), torch.ones(2, 1, dtype=torch.float64)
    )


def test_shape_errors():
    with pytest.raises(ValueError, match="training masks"):
        mean_mask_prediction(torch.zeros(0, 1, 4, 4))
    with pytest.raises(ValueError, match="differ"):
        mean_mask_dice(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4))
