"""EpochShuffle: one order per (seed, epoch); under DDP each rank its own share of it."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

import medfoundry.train.resume as resume
from medfoundry.train.resume import EpochShuffle


def _as_rank(monkeypatch, r: int, world: int) -> None:
    monkeypatch.setattr(resume, "rank", lambda: r)
    monkeypatch.setattr(resume, "world_size", lambda: world)


def test_one_process_order_depends_on_seed_and_epoch_only():
    a, b = EpochShuffle(10, seed=3), EpochShuffle(10, seed=3)
    assert list(a) == list(b) and sorted(a) == list(range(10)) and len(a) == 10
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(10))
    a.set_epoch(0)
    a.skip = 4
    assert list(a) == first[4:] and list(a) == first  # skip applies to one pass only


@pytest.mark.parametrize("n", [10, 11, 1])
def test_ranks_split_each_epoch_without_overlap(monkeypatch, n):
    world = 3
    full = list(EpochShuffle(n, seed=5))
    parts = []
    for r in range(world):
        _as_rank(monkeypatch, r, world)
        sampler = EpochShuffle(n, seed=5)
        parts.append(list(sampler))
        assert len(sampler) == len(parts[-1]) == -(-n // world)
    padded = (full * world)[: -(-n // world) * world]
    assert sorted(sum(parts, [])) == sorted(padded)  # every index, padding only to even out
    if n % world == 0:
        assert sorted(sum(parts, [])) == list(range(n))
    _as_rank(monkeypatch, 1, world)
    s = EpochShuffle(n, seed=5)
    s.skip = 1
    assert list(s) == parts[1][1:]  # a resume skips this rank's finished samples


def test_workers_split_the_indices_of_a_pass(monkeypatch):
    _as_rank(monkeypatch, 0, 2)
    sampler = EpochShuffle(12, seed=0)
    loader = DataLoader(list(range(12)), batch_size=2, sampler=sampler, num_workers=2)
    seen = [int(v) for batch in loader for v in batch]
    assert seen == list(sampler) and len(seen) == 6
