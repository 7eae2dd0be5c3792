"""Classification metrics on tensors: ROC AUC (rank-based, ties averaged) and accuracy."""

from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary ROC AUC = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U), NaN if one class."""
    scores = scores.detach().double().flatten().cpu()  # on CPU: any device's scores, one result
    labels = labels.detach().flatten().bool().cpu()
    n_pos = int(labels.sum())
    n_neg = int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of predictions equal to the labels."""
    return float((pred.flatten() == labels.flatten()).double().mean())
