"""Reference predictors that need no training, to tell a learned segmenter from a shape prior.

`mean_mask_dice`: every test image gets the same prediction, the pixel-wise mean of the k
training masks thresholded at 0.5 (a pixel is foreground when more than half of the training
masks cover it). On aligned chest X-rays this constant atlas already scores high on the large
structures, so a network that does not beat it has learned nothing image-specific.
"""

from __future__ import annotations

import torch

from medfoundry.metrics.segmentation import dice_score

MEAN_MASK = "mean mask"  # the row name of the mean-mask reference in benchmark summaries


def mean_mask_prediction(train_masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, S, H, W) 0-1 training masks -> (S, H, W) bool: their pixel-wise mean > `threshold`."""
    if train_masks.ndim < 3 or train_masks.shape[0] == 0:
        raise ValueError(
            f"need (N >= 1, S, *spatial) training masks, got {tuple(train_masks.shape)}"
        )
    return train_masks.float().mean(0) > threshold


def mean_mask_dice(
    train_masks: torch.Tensor, test_masks: torch.Tensor, threshold: float = 0.5
) -> torch.Tensor:
    """Dice (N_test, S) float64 of the mean training mask (`mean_mask_prediction`) predicted for
    every test mask (N_test, S, H, W); both-empty pairs score 1 as in `dice_score`."""
    pred = mean_mask_prediction(train_masks, threshold)
    if pred.shape != test_masks.shape[1:]:
        raise ValueError(
            f"training masks {tuple(train_masks.shape[1:])} and test masks "
            f"{tuple(test_masks.shape[1:])} differ in structures or size"
        )
    return dice_score(pred.unsqueeze(0).expand_as(test_masks), test_masks)
