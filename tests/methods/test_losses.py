"""InfoNCE and Adam's purposive pruner loss against per-sample reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medfoundry.methods.losses import (
    info_nce,
    pruner_loss_from_similarities,
    purposive_pruner_loss,
)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def reference_pruned(q, k, queue, t, threshold):
    """Per-sample loop, written from the paper's description: keep negatives with cos < thr."""
    losses, pruned = [], 0
    for i in range(q.shape[0]):
        pos = float(q[i] @ k[i])
        neg = [float(q[i] @ key) for key in queue]
        kept = [c for c in neg if c < threshold]
        pruned += len(neg) - len(kept)
        logits = [pos / t] + [c / t for c in kept]
        top = max(logits)
        lse = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(lse - pos / t)
    return sum(losses) / len(losses), pruned / (q.shape[0] * queue.shape[0])


def test_info_nce_matches_cross_entropy_by_hand() -> None:
    q, k, queue = unit(4, 8), unit(4, 8, seed=1), unit(16, 8, seed=2)
    t = 0.2
    expected = 0.0
    for i in range(4):
        logits = torch.cat([(q[i] @ k[i])[None], queue @ q[i]]) / t
        expected += -torch.log_softmax(logits, 0)[0] / 4
    torch.testing.assert_close(info_nce(q, k, queue, t), expected)


def test_threshold_above_one_equals_info_nce() -> None:
    q, k, queue = unit(8, 16), unit(8, 16, seed=1), unit(64, 16, seed=2)
    loss, frac = purposive_pruner_loss(q, k, queue, 0.2, threshold=1.01)
    torch.testing.assert_close(loss, info_nce(q, k, queue, 0.2))
    assert frac.item() == 0.0


def test_negative_identical_to_query_is_pruned() -> None:
    q, k, queue = unit(4, 8), unit(4, 8, seed=1), unit(32, 8, seed=2)
    queue = torch.cat([queue, q[1:2]])  # a copy of query 1 sits in the queue
    loss, frac = purposive_pruner_loss(q, k, queue, 0.2, threshold=0.8)
    ref_loss, ref_frac = reference_pruned(q, k, queue, 0.2, 0.8)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert frac.item() == pytest.approx(ref_frac)
    assert ref_frac >= 1 / (4 * 33)  # at least the copy was pruned
    # and pruning changed the loss: the unpruned InfoNCE is larger (the copy was a hard negative)
    assert info_nce(q, k, queue, 0.2).item() > loss.item() + 0.1


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.8])
def test_matches_reference_loop(threshold: float) -> None:
    q, k, queue = unit(6, 4), unit(6, 4, seed=1), unit(40, 4, seed=2)  # low D: many high cosines
    loss, frac = purposive_pruner_loss(q, k, queue, 0.2, threshold)
    ref_loss, ref_frac = reference_pruned(q, k, queue, 0.2, threshold)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5)
    assert frac.item() == pytest.approx(ref_frac)
    assert 0.0 < ref_frac < 1.0


def test_positive_is_never_pruned() -> None:
    q = unit(4, 8)
    k = q.clone()  # cos(q, k) = 1 >= threshold
    queue = q.repeat(5, 1)  # every negative of sample i includes copies of q_i
    loss, frac = purposive_pruner_loss(q, k, queue, 0.2, threshold=0.8)
    ref_loss, ref_frac = reference_pruned(q, k, queue, 0.2, 0.8)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert frac.item() == pytest.approx(ref_frac)
    # with everything pruned, only the positive is left: the loss of a 1-way softmax is 0
    all_pruned, frac = purposive_pruner_loss(q, k, unit(3, 8, seed=5), 0.2, threshold=-1.0)
    assert all_pruned.item() == pytest.approx(0.0, abs=1e-6)
    assert frac.item() == 1.0


@pytest.mark.parametrize("threshold", [0.8, -1.0])  # -1: every negative of every row pruned
def test_gradients_are_finite_when_negatives_are_pruned(threshold: float) -> None:
    q = unit(8, 16).requires_grad_(True)
    k = unit(8, 16, seed=1)
    queue = torch.cat([q.detach().repeat(4, 1), unit(8, 16, seed=2)])
    loss, _ = purposive_pruner_loss(q, k, queue, 0.2, threshold=threshold)
    loss.backward()
    assert torch.isfinite(q.grad).all()
    if threshold > 0:
        assert q.grad.abs().sum() > 0
    else:  # only the positive is left: loss 0, gradient 0
        assert loss.item() == 0.0 and q.grad.abs().max() == 0.0


def test_bf16_inputs_are_safe() -> None:
    q, k, queue = unit(16, 32), unit(16, 32, seed=1), unit(4096, 32, seed=2)
    ref, _ = purposive_pruner_loss(q, k, queue, 0.2, threshold=0.3)
    low, _ = purposive_pruner_loss(q.bfloat16(), k.bfloat16(), queue.bfloat16(), 0.2, 0.3)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert low.item() == pytest.approx(ref.item(), rel=0.05)
    nce = info_nce(q.bfloat16(), k.bfloat16(), queue, 0.2)  # fp32 queue with bf16 queries
    assert torch.isfinite(nce)


def test_from_similarities_matches_and_leaves_inputs_alone() -> None:
    q, k, queue = unit(6, 4), unit(6, 4, seed=1), unit(40, 4, seed=2)
    l_pos, l_neg = (q * k).sum(1), q @ queue.t()
    before = l_neg.clone()
    loss, frac = pruner_loss_from_similarities(l_pos, l_neg, 0.2, 0.3)
    ref_loss, ref_frac = purposive_pruner_loss(q, k, queue, 0.2, 0.3)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(frac, ref_frac)
    assert torch.equal(l_neg, before)
