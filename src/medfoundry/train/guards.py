"""Stop a pretraining stage that has collapsed instead of burning its remaining epochs.

Adam's purposive pruner removes every queue key whose cosine with the query is >= 0.8. When the
embeddings are not yet discriminative (a short or weak level-0 stage, a small dataset), most keys
pass that threshold, the loss loses its negatives, nothing pushes embeddings apart any more and
they converge: the pruned fraction climbs to 1 and the loss to exactly 0. From there no gradient
flows, so the rest of the stage is wasted and its "best" validation loss (0) is meaningless.

Under DDP (several devices or nodes) every rank logs the signals of its own batch (training step
metrics are not synced), so each guard averages them over the ranks before deciding: a guard
that stopped one rank alone would leave the others waiting in their next collective, a hang
instead of an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from medfoundry.errors import MedfoundryError


def step_signals(trainer: L.Trainer, keys: Sequence[str]) -> dict[str, float]:
    """``trainer.callback_metrics[key]`` of each of ``keys`` present, as floats; under DDP their
    mean over the ranks (one all-reduce of ``len(keys)`` values), so every rank sees the same."""
    metrics = trainer.callback_metrics
    values = [float(metrics[k]) if metrics.get(k) is not None else math.nan for k in keys]
    if getattr(trainer, "world_size", 1) > 1:
        local = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
        values = trainer.strategy.reduce(local, reduce_op="mean").tolist()
    return {k: v for k, v in zip(keys, values, strict=True) if not math.isnan(v)}


class PruningCollapseGuard(Callback):
    """Raise when the pruned fraction of negatives stays >= `max_fraction` for `patience` steps."""

    def __init__(self, max_fraction: float = 0.99, patience: int = 50, where: str = "") -> None:
        self.max_fraction = float(max_fraction)
        self.patience = int(patience)
        self.where = where
        self.streak = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.patience <= 0:
            return
        value = step_signals(trainer, ["train/pruned_fraction_step"]).get(
            "train/pruned_fraction_step"
        )
        if value is None:
            return
        self.streak = self.streak + 1 if float(value) >= self.max_fraction else 0
        if self.streak >= self.patience:
            raise MedfoundryError(
                f"{self.where}: collapsed at step {trainer.global_step}: the pruner removed "
                f">= {self.max_fraction:.0%} of negatives for {self.patience} steps in a row, so "
                "the loss has no negatives left. Train the previous level longer, lower "
                "moco.momentum for short runs, or raise moco.prune_threshold "
                "(set pretrain guard.collapse_patience=0 to disable this check)."
            )


class RepresentationCollapseGuard(Callback):
    """Stop a contrastive stage whose embeddings do not tell images apart after warm-up.

    Signals (logged by the method every step, see `medfoundry.methods.signals`), each smoothed
    by an exponential moving average over about 20 steps:

    * ``retrieval``: within-batch top-1 of each query's own key; collapsed when it stays at or
      below ``chance_factor`` x chance (1 / batch) for ``patience`` steps;
    * ``mean_length``: length of the mean normalised query; collapsed when it stays at or
      above ``max_mean_length`` (every image near one direction) for ``patience`` steps.

    Nothing is checked during the first ``warmup_steps`` steps of the stage (a network starts
    near-collapsed: its random features are nearly one vector); None: a quarter of the stage's
    optimiser steps on each rank (at least 100), read from the trainer when training starts
    (under DDP a rank takes 1 / world of the batches, so a count from the data alone is too long).
    """

    def __init__(
        self,
        warmup_steps: int | None = 200,
        patience: int = 100,
        chance_factor: float = 2.0,
        max_mean_length: float = 0.95,
        where: str = "",
    ) -> None:
        self.warmup_steps = int(warmup_steps) if warmup_steps is not None else None
        self.patience = int(patience)
        self.chance_factor = float(chance_factor)
        self.max_mean_length = float(max_mean_length)
        self.where = where
        self.smooth: dict[str, float] = {}
        self.streaks = {"retrieval": 0, "mean_length": 0}
        self.steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.warmup_steps is None:
            total = trainer.estimated_stepping_batches
            total = int(total) if math.isfinite(total) else 0
            self.warmup_steps = max(100, total // 4)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.patience <= 0:
            return
        self.steps += 1
        signals = step_signals(trainer, [f"train/{key}_step" for key in self.streaks])
        for key in self.streaks:
            v = signals.get(f"train/{key}_step")
            if v is not None:
                prev = self.smooth.get(key)
                self.smooth[key] = v if prev is None else 0.95 * prev + 0.05 * v
        if self.steps <= (self.warmup_steps if self.warmup_steps is not None else 100):
            return
        chance = 1.0 / max(1, int(batch.shape[0]))
        limit = self.chance_factor * chance
        bad = {
            "retrieval": self.smooth.get("retrieval", 1.0) <= limit,
            "mean_length": self.smooth.get("mean_length", 0.0) >= self.max_mean_length,
        }
        for key, is_bad in bad.items():
            self.streaks[key] = self.streaks[key] + 1 if is_bad else 0
        if self.streaks["retrieval"] >= self.patience:
            self._stop(
                trainer,
                f"within-batch retrieval stayed at chance ({self.smooth['retrieval']:.3f} <= "
                f"{self.chance_factor:g} x 1/{int(batch.shape[0])})",
            )
        if self.streaks["mean_length"] >= self.patience:
            self._stop(
                trainer,
                f"the mean normalised embedding has length {self.smooth['mean_length']:.3f} "
                f"(>= {self.max_mean_length}): every image maps to nearly one direction",
            )

    def _stop(self, trainer: L.Trainer, signal: str) -> None:
        raise MedfoundryError(
            f"{self.where}: collapsed at step {trainer.global_step} after "
            f"{self.warmup_steps} warm-up steps: {signal} for {self.patience} steps in a row. "
            "See docs/representation.md for recipes that learn (set pretrain "
            "guard.representation_patience=0 to disable this check)."
        )
