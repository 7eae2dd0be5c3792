"""Segmentation metrics, vectorised over images and structures.

Dice convention: for an image where BOTH the prediction and the reference of a structure are
empty, the Dice is `empty_value` (default 1.0: nothing to find, nothing found). A structure
present in only one of them scores 0.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_bool(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.dtype == torch.bool else t > 0.5


def dice_score(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    empty_value: float = 1.0,
) -> torch.Tensor:
    """Dice per image and structure: binary (N, K, *spatial) inputs -> float64 (N, K).

    Non-boolean inputs are binarised at 0.5 (pass probabilities thresholded as you like, or
    0/1 masks). Both empty -> `empty_value`.
    """
    p = _as_bool(pred)
    t = _as_bool(target).to(p.device)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != reference shape {tuple(t.shape)}")
    if p.ndim < 3:
        raise ValueError(f"expected (N, K, *spatial) masks, got shape {tuple(p.shape)}")
    p = p.flatten(2)
    t = t.flatten(2)
    inter = (p & t).sum(-1, dtype=torch.float64)
    total = p.sum(-1, dtype=torch.float64) + t.sum(-1, dtype=torch.float64)
    dice = 2.0 * inter / total.clamp_min(1.0)
    return torch.where(total == 0, torch.full_like(dice, float(empty_value)), dice).cpu()


def dice_from_probabilities(
    probs: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    threshold: float = 0.5,
    empty_value: float = 1.0,
) -> torch.Tensor:
    """Dice (N, K) of probabilities thresholded at `threshold` (> threshold is foreground)."""
    return dice_score(torch.as_tensor(probs) > threshold, target, empty_value=empty_value)
