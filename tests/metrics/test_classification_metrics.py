"""AUC against a pairwise reference, with ties."""

from __future__ import annotations

import math

import torch

from medfoundry.metrics.classification import accuracy, roc_auc


def _pairwise_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60,), generator=g).float()  # many ties
    labels = torch.rand(60, generator=g) > 0.4
    assert math.isclose(
        roc_auc(scores, labels), _pairwise_auc(scores.tolist(), labels.tolist()), abs_tol=1e-12
    )


def test_auc_extremes_and_single_class():
    labels = torch.tensor([0, 0, 1, 1]).bool()
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert math.isnan(roc_auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]).bool()))
    assert accuracy(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])) == 2 / 3
