"""Contrastive losses of MoCo-v2 and Adam as pure functions of (queries, keys, queue), and the
deep-supervision weighting of a network's several outputs (PCT-Net, MIS-FM / PyMIC).

All contrastive inputs are L2-normalised embeddings: ``q`` and ``k`` are (B, D), ``queue`` is
(K, D). The similarities are computed in the inputs' dtype (so bf16 autocast keeps the big
``B x K`` matmul fast) and the softmax in float32 (a log-sum-exp over 65536 logits is not safe
in bf16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _similarities(q: Tensor, k: Tensor, queue: Tensor) -> tuple[Tensor, Tensor]:
    """Raw cosines: positives (B,) and negatives (B, K), in float32."""
    l_pos = (q * k.to(q.dtype)).sum(dim=1).float()  # (B,)
    l_neg = (q @ queue.to(q.dtype).t()).float()  # (B, K)
    return l_pos, l_neg


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo's InfoNCE: cross-entropy of ``[q.k, q.queue] / T`` with the positive at index 0."""
    l_pos, l_neg = _similarities(q, k, queue)
    logits = torch.cat([l_pos[:, None], l_neg], dim=1) / temperature  # (B, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)


def purposive_pruner_loss(
    q: Tensor, k: Tensor, queue: Tensor, temperature: float, threshold: float = 0.8
) -> tuple[Tensor, Tensor]:
    """Adam's purposive pruner: InfoNCE without the negatives that are too similar to the query.

    For each sample, the queue keys whose *raw* cosine with the query is ``>= threshold`` are
    removed from the softmax; the positive is always kept. Fully vectorised: one masked
    log-sum-exp over the (B, K) negatives, combined with the positive by ``logaddexp``.

    Pruned logits are set to the most negative float32 instead of -inf. Their softmax weight
    is exactly 0 either way (``exp`` underflows), but a row whose negatives are *all* pruned
    (e.g. near collapse) would give ``-inf - -inf = NaN`` in the log-sum-exp backward; with the
    finite fill its gradient is 0 and its loss is exactly 0 (only the positive is left).
    The (B, K) logits are updated in place: on CPU, allocating fresh 64 MiB buffers at
    B=256, K=65536 costs more than the arithmetic.

    Returns:
        (loss averaged over the batch, fraction of the B x K negatives pruned; no gradient).
    """
    l_pos, l_neg = _similarities(q, k, queue)
    return _pruned_nce(l_pos, l_neg, temperature, threshold, inplace=True)


def pruner_loss_from_similarities(
    l_pos: Tensor, l_neg: Tensor, temperature: float, threshold: float = 0.8
) -> tuple[Tensor, Tensor]:
    """``purposive_pruner_loss`` given raw cosines: positives (B,) and negatives (B, K).

    The inputs are not modified. This is the interface of the reference's loss module, which
    receives the similarities from the model.
    """
    return _pruned_nce(l_pos.float(), l_neg.float(), temperature, threshold, inplace=False)


def _pruned_nce(
    l_pos: Tensor, l_neg: Tensor, temperature: float, threshold: float, inplace: bool
) -> tuple[Tensor, Tensor]:
    pruned = l_neg >= threshold  # (B, K), decided on raw cosines, before the temperature
    fill = torch.finfo(l_neg.dtype).min
    if inplace:
        neg_logits = l_neg.div_(temperature).masked_fill_(pruned, fill)
    else:
        neg_logits = (l_neg / temperature).masked_fill_(pruned, fill)
    pos_logits = l_pos / temperature
    lse = torch.logaddexp(pos_logits, torch.logsumexp(neg_logits, dim=1))  # over [pos, kept]
    loss = (lse - pos_logits).mean()
    return loss, torch.count_nonzero(pruned) / pruned.numel()


def deep_supervision_weights(n: int) -> list[float]:
    """Weights 1 / 2^i of ``n`` outputs, normalised to sum to 1 (PyMIC's ``deep_sup``)."""
    raw = [0.5**i for i in range(n)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(
    outputs: Tensor | Sequence[Tensor], target: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """``sum_i w_i * loss_fn(outputs[i], target)``; a single tensor is just ``loss_fn``.

    The outputs must already have the target's spatial size (``PCTNet`` upsamples them).
    """
    if isinstance(outputs, Tensor):
        return loss_fn(outputs, target)
    weights = deep_supervision_weights(len(outputs))
    losses = [w * loss_fn(out, target) for w, out in zip(weights, outputs, strict=True)]
    return torch.stack(losses).sum()
