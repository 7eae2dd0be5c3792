"""Dice metric against hand-computed values, including the empty-mask convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfoundry.metrics.segmentation import dice_from_probabilities, dice_score


def test_dice_hand_computed():
    pred = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    target = torch.zeros_like(pred)
    # image 0, structure 0: pred 4 px, target 2 px, overlap 2 -> 2*2/(4+2) = 2/3
    pred[0, 0, 0, :4] = True
    target[0, 0, 0, :2] = True
    # image 0, structure 1: disjoint 1 px each -> 0
    pred[0, 1, 1, 1] = True
    target[0, 1, 2, 2] = True
    # image 1, structure 0: identical 3 px -> 1
    pred[1, 0, 3, :3] = True
    target[1, 0, 3, :3] = True
    # image 1, structure 1: both empty -> 1 (convention)
    d = dice_score(pred, target)
    assert d.shape == (2, 2)
    assert d.dtype == torch.float64
    expected = torch.tensor([[2 / 3, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(d, expected)


def test_empty_conventions():
    empty = np.zeros((1, 1, 3, 3), dtype=np.uint8)
    full = np.ones((1, 1, 3, 3), dtype=np.uint8)
    assert dice_score(empty, empty).item() == 1.0
    assert dice_score(empty, empty, empty_value=float("nan")).isnan().item()
    assert dice_score(full, empty).item() == 0.0  # false positive on an absent structure
    assert dice_score(empty, full).item() == 0.0  # missed structure


def test_probabilities_thresholded_and_shape_checked():
    probs = torch.tensor([[[[0.9, 0.6], [0.4, 0.1]]]])
    target = torch.tensor([[[[1, 0], [0, 0]]]])
    # pred {0,1}, target {0}: 2*1/(2+1)
    assert dice_from_probabilities(probs, target).item() == pytest.approx(2 / 3)
    assert dice_from_probabilities(probs, target, threshold=0.7).item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        dice_score(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
