"""Contrastive losses of MoCo-v2 and Adam as pure functions of (queries, keys, queue).

All inputs are L2-normalised embeddings: ``q`` and ``k`` are (B, D), ``queue`` is (K, D). The
similarities are computed in the inputs' dtype (so bf16 autocast keeps the big ``B x K`` matmul
fast) and the softmax in float32 (a log-sum-exp over 65536 logits is not safe in bf16).
"""

from __future__ import annotations

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
    removed from the softmax (their logits become -inf); the positive is always kept, so every
    row keeps at least one finite logit and the loss and its gradient stay finite. One masked
    log-sum-exp over the whole (B, 1 + K) matrix, no loop over samples.

    Returns:
        (loss averaged over the batch, fraction of the B x K negatives pruned; no gradient).
    """
    l_pos, l_neg = _similarities(q, k, queue)
    pruned = l_neg >= threshold  # (B, K), decided before the temperature
    neg_logits = (l_neg / temperature).masked_fill(pruned, float("-inf"))
    pos_logits = l_pos / temperature
    logits = torch.cat([pos_logits[:, None], neg_logits], dim=1)  # (B, 1 + K)
    loss = (torch.logsumexp(logits, dim=1) - pos_logits).mean()
    return loss, pruned.float().mean()
