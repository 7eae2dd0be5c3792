"""MoCo-v2 with Adam's anatomy decomposer and purposive pruner (one class, two settings).

``build_method("moco", ...)`` is plain MoCo-v2 (whole-image views, InfoNCE). ``build_method("adam",
...)`` is Adam-v1: the caller trains level 0, then 2, then 4 (``set_level``), each stage
warm-started from the previous one; at ``level > 0`` the loss is the purposive pruner loss.

Differences from the reference (``Eden/Adam-v1``), on purpose:

* ``forward(images, update=False)`` (validation) changes neither the key encoder (no EMA step,
  and in training mode its BatchNorm running statistics are left untouched too) nor the queue.
  The reference's validation loop enqueued validation keys and took an EMA step (its defect 3).
* No shuffle-BN. Shuffle-BN exists only under DDP and the reference refuses to run without it;
  here one code path serves one process and many. Known risk (MoCo paper, sec. 3.3): with
  BatchNorm, the keys of the current batch share batch statistics with their queries while the
  queue's keys do not, a cue a network can in principle exploit to spot the positive ("BN
  cheating"). Nothing here counters it; it is untested at the Adam recipe's scale. Symptom to
  watch: training loss falling fast while the validation loss (eval-mode BN) and downstream
  results do not improve. Remedies if it shows: per-rank key shuffling under DDP, or a
  backbone without batch statistics (GroupNorm).
* The queue is initialised from a fixed seed, so every rank starts with the same queue without
  any communication; under DDP the keys of all ranks are gathered before enqueueing, so the
  queues stay identical. The queue is a buffer: with DDP's default ``broadcast_buffers=True`` it
  is re-broadcast from rank 0 every step (32 MiB at K=65536, D=128); since the queues are
  identical anyway, ``broadcast_buffers=False`` is safe for the queue and cheaper (BatchNorm
  running statistics then stay per rank; rank 0's are the ones saved).
* Any queue size works (wrap-around enqueue); the reference asserted ``K % global_batch == 0``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfoundry.methods.distributed import concat_all_gather
from medfoundry.methods.losses import info_nce, purposive_pruner_loss
from medfoundry.methods.signals import age_cosines, mean_length, retrieval_top1, spread
from medfoundry.methods.spec import RETRIEVAL_PANEL, MethodSpec, Panel
from medfoundry.methods.stateless import call_keeping_buffers
from medfoundry.nets.heads import mlp_projector
from medfoundry.nets.split_bn import split_batchnorm
from medfoundry.pretext.anatomy import AnatomyAugment, decompose_views


class MoCo(nn.Module):
    """MoCo-v2 query/key encoders, a queue of keys, and Adam's anatomy views and pruner.

    Args:
        backbone: the query backbone; ``backbone(x) -> (B, D)`` with ``backbone.out_dim == D``.
        proj_hidden, proj_dim: the 2-layer MLP projector (no BN, as in the reference, unless
            ``proj_bn``).
        queue_size: number of negative keys K (any value, need not divide the batch).
        momentum: EMA factor m of the key encoder (``key = m key + (1 - m) query``).
        momentum_end: with a value, m follows a cosine from ``momentum`` to ``momentum_end``
            over the stage (BYOL's schedule; the trainer calls ``set_progress``).
        proj_bn: BatchNorm after the projector's hidden layer (MoCo-v3, SimCLR).
        symmetric: the loss of both view orders, (q1, k2) and (q2, k1), both keys enqueued.
        bn_splits: BatchNorm statistics per ``bn_splits`` sub-batches and the key batch
            shuffled before its encoder: shuffle-BN in one process (``nets.split_bn``).
        temperature: softmax temperature T (0.2 in the Adam recipe).
        prune_threshold: cosine at or above which queue keys are pruned at levels > 0; None
            disables pruning (InfoNCE at every level).
        level: anatomy decomposer level (grid side; 0 = whole image).
        out_size: side of the generated views.
        augment: view augmentation parameters, or a dict of them (default: the Adam recipe).
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        prune_threshold: float | None = 0.8,
        level: int = 0,
        out_size: int = 224,
        augment: AnatomyAugment | dict | None = None,
        momentum_end: float | None = None,
        proj_bn: bool = False,
        symmetric: bool = False,
        bn_splits: int = 1,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if momentum_end is not None and not 0.0 <= momentum_end <= 1.0:
            raise ValueError(f"momentum_end must be in [0, 1], got {momentum_end}")
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
        self.base_momentum = float(momentum)
        self.momentum_end = None if momentum_end is None else float(momentum_end)
        self.momentum = float(momentum)
        self.symmetric = bool(symmetric)
        self.bn_splits = int(bn_splits)
        self.temperature = float(temperature)
        self.prune_threshold = None if prune_threshold is None else float(prune_threshold)
        self.out_size = int(out_size)
        if isinstance(augment, dict):
            augment = AnatomyAugment(**augment)
        self.augment = augment or AnatomyAugment()
        self.level = 0
        self.set_level(level)

        self.backbone = split_batchnorm(backbone, self.bn_splits)
        self.projector = split_batchnorm(
            mlp_projector(int(backbone.out_dim), proj_hidden, proj_dim, bn=proj_bn),
            self.bn_splits,
        )
        self.key_backbone = copy.deepcopy(self.backbone)
        self.key_projector = copy.deepcopy(self.projector)
        for p in self._key_params():
            p.requires_grad_(False)

        self.register_buffer("queue", torch.empty(queue_size, proj_dim))  # (K, D), unit rows
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.reset_queue()

    # --- state ------------------------------------------------------------------------------
    def set_level(self, level: int) -> None:
        """Switch the anatomy decomposer level (0 -> 2 -> 4 for Adam)."""
        if int(level) != level or level < 0:
            raise ValueError(f"level must be an integer >= 0, got {level!r}")
        self.level = int(level)

    def set_progress(self, progress: float) -> None:
        """Where the stage is (0 at its start, 1 at its end): sets the EMA momentum."""
        if self.momentum_end is None:
            return
        p = min(1.0, max(0.0, float(progress)))
        cos = 0.5 * (1.0 + math.cos(math.pi * p))
        self.momentum = self.momentum_end - (self.momentum_end - self.base_momentum) * cos

    @torch.no_grad()
    def reset_queue(self, seed: int = 0) -> None:
        """Refill the queue with random unit vectors (fixed seed: the same on every rank).

        Call it when warm-starting the next level: the old keys were made at another level.
        """
        gen = torch.Generator().manual_seed(seed)
        fresh = torch.randn(self.queue.shape, generator=gen)
        self.queue.copy_(F.normalize(fresh, dim=1))
        self.queue_ptr.zero_()

    def export_backbone(self) -> dict[str, Tensor]:
        """The query backbone's weights (what downstream tasks fine-tune), detached copies."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def _query_params(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _key_params(self) -> list[Tensor]:
        return [*self.key_backbone.parameters(), *self.key_projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the key encoder: ``key = m * key + (1 - m) * query`` (parameters only)."""
        key, query = self._key_params(), [p.detach() for p in self._query_params()]
        torch._foreach_lerp_(key, query, 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (N, D) into the ring buffer at ``queue_ptr``, wrapping around.

        Equivalent to writing the keys one by one; when N > K only the last K survive.
        """
        size = self.queue.shape[0]
        n = keys.shape[0]
        skip = max(0, n - size)
        keys = keys[skip:]
        idx = (self.queue_ptr + skip + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue.index_copy_(0, idx, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    # --- forward ------------------------------------------------------------------------------
    def _keys(self, views: Tensor, keep_state: bool) -> Tensor:
        """Key embeddings; with ``keep_state`` in training mode, BN statistics are not updated.

        With split BatchNorm in training mode the batch is shuffled before the encoder and
        restored after it, so a key never shares its sub-batch statistics with its query.
        """
        if self.bn_splits > 1 and self.key_backbone.training:
            perm = torch.randperm(views.shape[0], device=views.device)
            out = _encode(self.key_backbone, self.key_projector, views[perm], keep_state)
            return out[perm.argsort()]
        return _encode(self.key_backbone, self.key_projector, views, keep_state)

    def forward(
        self, images: Tensor, update: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss, collapse signals and statistics for a batch of images (B, C, H, W).

        ``update=True`` (training) takes the EMA step before computing the keys and enqueues
        the (all-rank) keys after the loss; ``update=False`` (validation) changes neither.
        The signals (``methods.signals``) are of the query embeddings: ``spread``,
        ``mean_length``, ``retrieval`` (top-1 of each query among the batch's keys) and
        ``neg_new`` / ``neg_old`` (mean cosine with the newest / oldest eighth of the queue).
        """
        with torch.no_grad():
            view_q, view_k = decompose_views(
                images, self.level, 2, self.out_size, self.augment, generator
            )
        if self.symmetric:  # both orders in one pass of each encoder
            view_q, view_k = torch.cat([view_q, view_k]), torch.cat([view_k, view_q])
        q = F.normalize(self._queries(view_q, keep_state=not update), dim=1)  # (B', D)
        with torch.no_grad():
            if update:
                self.momentum_update()
            k = F.normalize(self._keys(view_k, keep_state=not update), dim=1)  # (B', D)
        # The loss saves the queue for backward; it is modified in place below, so use a copy.
        queue = self.queue.clone() if update else self.queue
        if self.level == 0 or self.prune_threshold is None:
            loss = info_nce(q, k, queue, self.temperature)
            pruned = torch.zeros((), device=q.device)
        else:
            loss, pruned = purposive_pruner_loss(
                q, k, queue, self.temperature, self.prune_threshold
            )
        with torch.no_grad():
            b = images.shape[0]
            qf = q.detach().float()
            pos_sim = (qf * k.float()).sum(dim=1).mean()
            neg_sim = qf.mean(dim=0) @ queue.float().mean(dim=0)  # = mean of q @ queue.T
            neg_new, neg_old = age_cosines(qf, queue, self.queue_ptr)
            stats = {
                "spread": spread(qf[:b]),
                "mean_length": mean_length(qf[:b]),
                "retrieval": retrieval_top1(qf[:b], k[:b]),
                "neg_new": neg_new,
                "neg_old": neg_old,
            }
        if update:
            self.enqueue(concat_all_gather(k))
        return {
            "loss": loss,
            "pruned_fraction": pruned,
            "pos_sim": pos_sim,
            "neg_sim": neg_sim,
            **stats,
        }

    def _queries(self, views: Tensor, keep_state: bool) -> Tensor:
        """Query embeddings (B, D), unnormalised."""
        return _encode(self.backbone, self.projector, views, keep_state)


def _encode(backbone: nn.Module, projector: nn.Module, views: Tensor, keep_state: bool) -> Tensor:
    """``projector(backbone(views))``; with ``keep_state`` in training mode the BatchNorm
    running statistics stay as they are (validation must not move them)."""
    if keep_state and backbone.training:
        return call_keeping_buffers(nn.Sequential(backbone, projector), views)
    return projector(backbone(views))


def build_moco(backbone: nn.Module, **kwargs: Any) -> MoCo:
    """MoCo-v2, Adam's main baseline: whole-image views (level 0), plain InfoNCE."""
    if kwargs.pop("prune_threshold", None) is not None:
        raise ValueError("moco does not prune negatives: prune_threshold must be None")
    if kwargs.pop("level", 0) != 0:
        raise ValueError("moco uses whole-image views: level must be 0")
    return MoCo(backbone, prune_threshold=None, level=0, **kwargs)


# The curves of MoCo and Adam (after the loss panel).
CONTRASTIVE_PANELS = (
    Panel(
        "cosine: positive (solid) vs negatives (dashed)",
        (("train/pos_sim_step", "-"), ("train/neg_sim_step", "--")),
        (-1.05, 1.05),
    ),
    Panel(
        "negatives by age: newest (solid) vs oldest (dashed) 1/8 of the queue",
        (("train/neg_new_step", "-"), ("train/neg_old_step", "--")),
        (-1.05, 1.05),
    ),
    RETRIEVAL_PANEL,
    Panel("pruned fraction of negatives", (("train/pruned_fraction_step", "-"),), (-0.02, 1.02)),
)

SPEC = MethodSpec(
    name="moco",
    order=30,
    factory=build_moco,
    section="moco",
    takes_views=True,
    forced_options=(("prune_threshold", None),),
    logs_retrieval=True,
    curve_panels=CONTRASTIVE_PANELS,
)
