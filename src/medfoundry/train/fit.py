"""The one fit loop of the downstream trainings (classification, 2D and 3D segmentation).

A downstream run trains for a fixed number of steps on random batches, validates every
``val_every`` steps, keeps the weights with the best validation score (``BestWeights``) and
ends holding them; without a validation set it keeps the final weights. The caller builds the
network and the Lightning module (seeded first), this module the batches and the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from medfoundry.train.engine import BestWeights, make_trainer


def step_batches(dataset: Dataset, steps: int, batch_size: int, seed: int) -> DataLoader:
    """``steps`` batches of ``batch_size`` samples drawn with replacement, in a seeded order."""
    sampler = RandomSampler(
        range(len(dataset)),  # type: ignore[arg-type]
        replacement=True,
        num_samples=steps * batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)


@dataclass
class Fitted:
    """What a fit did: the kept weights' score and step, the validation history, timings."""

    best: BestWeights | None
    seconds: float
    steps: int

    @property
    def restored(self) -> bool:
        """Whether the module holds best-by-validation weights (else: the final ones)."""
        return self.best is not None and self.best.best_state is not None

    @property
    def history(self) -> list[tuple[int, float]]:
        """(step, score) of every validation when weights were kept, else empty."""
        return list(self.best.history) if self.restored else []  # type: ignore[union-attr]


def fit_best(
    module: L.LightningModule,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    steps: int,
    monitor: str,
    val_every: int,
    precision: str,
    accelerator: str,
    devices: Any = 1,
    progress: bool = False,
    out_dir: Path | None = None,
    log_every: int | None = None,
    grad_clip: float | None = None,
    max_epochs: int | None = None,
    callbacks: Sequence[Any] = (),
) -> Fitted:
    """Train ``module`` for ``steps`` steps; with ``val_loader``, validate every ``val_every``
    steps and end with the weights of the best ``monitor`` (higher is better).

    ``out_dir`` receives Lightning's CSV logs only (never checkpoints).
    """
    has_val = val_loader is not None
    best = BestWeights(monitor, mode="max") if has_val else None
    extra: dict[str, Any] = {}
    if log_every is not None:
        extra["log_every_n_steps"] = log_every
    if max_epochs is not None:
        extra["max_epochs"] = max_epochs
    trainer = make_trainer(
        out_dir,
        max_steps=steps,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        progress=progress,
        check_val_every_n_epoch=None if has_val else 1,
        val_check_interval=val_every if has_val else None,
        save_checkpoints=False,
        callbacks=[*callbacks, *([best] if best is not None else [])],
        gradient_clip_val=grad_clip,
        **extra,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    seconds = round(time.perf_counter() - start, 2)
    fitted = Fitted(best, seconds, int(trainer.global_step))
    if fitted.restored:
        best.restore(module)  # type: ignore[union-attr]
    return fitted


def fitted_info(fitted: Fitted, score_key: str = "best_val_dice") -> dict[str, Any]:
    """The info keys a downstream run reports: timings, steps and, when validation kept
    weights, their score (``score_key``), step and the validation history."""
    info: dict[str, Any] = {"train_seconds": fitted.seconds, "steps": fitted.steps}
    if fitted.restored:
        best = fitted.best
        info[score_key] = best.best_score  # type: ignore[union-attr]
        info["best_step"] = best.best_step  # type: ignore[union-attr]
        info["val_history"] = [[s, round(v, 5)] for s, v in fitted.history]
    return info
