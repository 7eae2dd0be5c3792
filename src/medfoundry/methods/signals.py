"""Label-free collapse signals of a batch of embeddings: does a representation spread or not?

A falling contrastive loss says little (a shortcut can lower it, see docs/representation.md);
these statistics say whether the embeddings themselves tell images apart. All take embeddings
(N, D) and L2-normalise them first; all are cheap (no N x N work except the retrieval, which
is B x B) and need no gradient.

* ``spread``: mean over dimensions of the per-dimension std of the normalised embeddings,
  times sqrt(D). Embeddings spread uniformly on the sphere give about 1; one vector for every
  image (complete collapse) gives 0; a few dominant directions (dimensional collapse) give a
  value well below 1.
* ``mean_length``: the length of the mean normalised embedding. About 1/sqrt(N) for
  embeddings spread over the sphere, 1 when every image maps to one direction.
  (``sum of per-dimension variances = 1 - mean_length**2``.)
* ``retrieval_top1``: the share of queries whose most similar key among the batch's keys is
  their own (chance: 1/N). Every key of a batch comes from the same key encoder at the same
  step, so no key-freshness cue helps here: only telling images apart does.
* ``age_cosines``: the mean cosine of the queries with the newest and the oldest part of a
  queue of negatives. Negatives drawn from the same distribution give equal values; a clear
  gap means the queue's age is visible to the network (the MoCo key-freshness shortcut).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def spread(z: Tensor) -> Tensor:
    """Mean per-dimension std of L2-normalised ``z`` (N, D), relative to 1/sqrt(D) (0-d)."""
    zn = F.normalize(z.detach().float(), dim=1)
    if zn.shape[0] < 2:
        return torch.full((), float("nan"), device=z.device)
    return zn.std(dim=0).mean() * math.sqrt(zn.shape[1])


@torch.no_grad()
def mean_length(z: Tensor) -> Tensor:
    """Length of the mean of the L2-normalised rows of ``z`` (N, D) (0-d)."""
    return F.normalize(z.detach().float(), dim=1).mean(dim=0).norm()


@torch.no_grad()
def retrieval_top1(q: Tensor, k: Tensor) -> Tensor:
    """Share of rows i of ``q`` (N, D) whose most cosine-similar row of ``k`` (N, D) is row i."""
    qn = F.normalize(q.detach().float(), dim=1)
    kn = F.normalize(k.detach().float(), dim=1)
    hits = (qn @ kn.t()).argmax(dim=1) == torch.arange(qn.shape[0], device=qn.device)
    return hits.float().mean()


@torch.no_grad()
def age_cosines(q: Tensor, queue: Tensor, ptr: int | Tensor, fraction: float = 0.125) -> Tensor:
    """Mean cosine of ``q`` (N, D) with the newest and the oldest ``fraction`` of a ring-buffer
    ``queue`` (K, D) whose next write position is ``ptr``; returns (2,) = (newest, oldest).

    Computed as mean(q) . mean(queue rows of the part), which equals the mean of all the
    pairwise cosines of the part at the cost of one (K, D) mean.
    """
    size = queue.shape[0]
    n = max(1, int(round(size * fraction)))
    ptr = int(ptr)
    newest = (ptr - 1 - torch.arange(n, device=queue.device)) % size  # age 0 .. n-1
    oldest = (ptr + torch.arange(n, device=queue.device)) % size  # the next to be overwritten
    qm = F.normalize(q.detach().float(), dim=1).mean(dim=0)
    qf = queue.detach().float()
    return torch.stack([qm @ qf[newest].mean(dim=0), qm @ qf[oldest].mean(dim=0)])


def embedding_signals(z: Tensor) -> dict[str, Tensor]:
    """``spread`` and ``mean_length`` of one set of embeddings, keyed as the logs name them."""
    return {"spread": spread(z), "mean_length": mean_length(z)}
