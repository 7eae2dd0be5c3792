"""The representation-collapse guard: stops on retrieval at chance or a unit mean embedding,
never during warm-up, and not on a healthy run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medfoundry.errors import MedfoundryError
from medfoundry.train.guards import RepresentationCollapseGuard


def feed(guard: RepresentationCollapseGuard, steps: int, retrieval: float, length: float) -> None:
    batch = torch.zeros(64, 1, 4, 4)
    for i in range(steps):
        trainer = SimpleNamespace(
            callback_metrics={
                "train/retrieval_step": torch.tensor(retrieval),
                "train/mean_length_step": torch.tensor(length),
            },
            global_step=i,
        )
        guard.on_train_batch_end(trainer, None, None, batch, i)


def test_retrieval_at_chance_stops_after_warmup_and_patience() -> None:
    guard = RepresentationCollapseGuard(warmup_steps=30, patience=10, where="run/stage0")
    feed(guard, 39, retrieval=1 / 64, length=0.5)  # warm-up + 9 bad steps: not yet
    with pytest.raises(MedfoundryError, match="retrieval stayed at chance"):
        feed(guard, 1, retrieval=1 / 64, length=0.5)


def test_unit_mean_embedding_stops_with_its_own_message() -> None:
    guard = RepresentationCollapseGuard(warmup_steps=5, patience=5)
    with pytest.raises(MedfoundryError, match="nearly one direction"):
        feed(guard, 20, retrieval=0.5, length=0.99)


def test_a_healthy_run_and_a_disabled_guard_do_not_stop() -> None:
    feed(RepresentationCollapseGuard(warmup_steps=5, patience=5), 200, retrieval=0.4, length=0.3)
    feed(RepresentationCollapseGuard(warmup_steps=0, patience=0), 200, retrieval=0.0, length=1.0)
    # a collapsed start that recovers during warm-up is fine
    guard = RepresentationCollapseGuard(warmup_steps=100, patience=20)
    feed(guard, 80, retrieval=1 / 64, length=0.99)
    feed(guard, 200, retrieval=0.3, length=0.4)
