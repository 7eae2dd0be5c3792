"""Collapse signals on constructed embeddings: collapsed, uniform, dimensional, shortcut-like."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medfoundry.methods.signals import age_cosines, mean_length, retrieval_top1, spread


def uniform(n: int = 512, d: int = 64, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_uniform_embeddings_spread_and_have_a_short_mean() -> None:
    z = uniform()
    assert spread(z).item() == pytest.approx(1.0, abs=0.05)
    assert mean_length(z).item() < 3.0 / math.sqrt(512)


def test_collapsed_embeddings_have_no_spread_and_unit_mean() -> None:
    z = uniform(1, 64).repeat(256, 1) + 1e-4 * uniform(256, 64, seed=1)
    assert spread(z).item() < 0.01
    assert mean_length(z).item() > 0.999


def test_dimensional_collapse_lowers_spread_but_not_the_mean() -> None:
    z = uniform(512, 64)
    z[:, 4:] = 0.0  # four live dimensions out of 64
    assert mean_length(z).item() < 0.2
    assert spread(z).item() < 0.35  # ~ 4 / 64 * sqrt(64 / 4)


def test_near_collapsed_start_of_the_shortcut() -> None:
    # one shared direction plus a little per-image noise: what a random network gives
    shared = uniform(1, 128)
    z = shared + 0.1 * uniform(256, 128, seed=2)
    assert mean_length(z).item() > 0.98
    assert spread(z).item() < 0.2


def test_retrieval_is_one_for_identical_and_chance_for_unrelated_keys() -> None:
    q = uniform(128, 32)
    assert retrieval_top1(q, q + 0.01 * uniform(128, 32, seed=3)).item() == 1.0
    hits = [retrieval_top1(q, uniform(128, 32, seed=10 + s)).item() for s in range(20)]
    assert sum(hits) / len(hits) < 4.0 / 128  # chance is 1/128
    # collapsed keys: nothing to retrieve by
    shared = uniform(1, 32).repeat(128, 1)
    assert retrieval_top1(q, shared + 1e-3 * uniform(128, 32, seed=4)).item() < 0.1


def test_age_cosines_find_a_fresh_key_shortcut() -> None:
    q = uniform(64, 16)
    direction = F.normalize(q.mean(0), dim=0)
    queue = uniform(800, 16, seed=5)
    ptr = 300  # the newest key was written at 299, the oldest is at 300
    same = age_cosines(q, queue, ptr)
    assert abs(same[0] - same[1]).item() < 0.05  # one distribution: no gap
    fresh = queue.clone()
    newest = (ptr - 1 - torch.arange(100)) % 800
    fresh[newest] = F.normalize(direction + 0.3 * uniform(100, 16, seed=6), dim=1)
    new, old = age_cosines(q, fresh, ptr).tolist()
    assert new > old + 0.1  # the newest keys point where the queries point


def test_signals_need_no_gradient_and_handle_tiny_batches() -> None:
    z = uniform(8, 4).requires_grad_()
    assert not spread(z).requires_grad and not mean_length(z).requires_grad
    assert math.isnan(spread(z[:1]).item())
