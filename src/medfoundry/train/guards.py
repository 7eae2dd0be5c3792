"""Stop a pretraining stage that has collapsed instead of burning its remaining epochs.

Adam's purposive pruner removes every queue key whose cosine with the query is >= 0.8. When the
embeddings are not yet discriminative (a short or weak level-0 stage, a small dataset), most keys
pass that threshold, the loss loses its negatives, nothing pushes embeddings apart any more and
they converge: the pruned fraction climbs to 1 and the loss to exactly 0. From there no gradient
flows, so the rest of the stage is wasted and its "best" validation loss (0) is meaningless.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from medfoundry.errors import MedfoundryError


class PruningCollapseGuard(Callback):
    """Raise when the pruned fraction of negatives stays >= `max_fraction` for `patience` steps."""

    def __init__(self, max_fraction: float = 0.99, patience: int = 50, where: str = "") -> None:
        self.max_fraction = float(max_fraction)
        self.patience = int(patience)
        self.where = where
        self.streak = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        value = trainer.callback_metrics.get("train/pruned_fraction_step")
        if value is None or self.patience <= 0:
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
