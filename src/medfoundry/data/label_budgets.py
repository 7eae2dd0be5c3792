"""Label budgets for label-efficiency benchmarks: seeded, patient-aware subsets of class folders.

Rules (what the benchmark documents):

- A budget is a count of labeled images (`8`: balanced, 8 / n_classes per class) or a percent
  of the labeled pool's patients (`"10%"`: whole patients, stratified by class).
- Validation: per class, `round(fraction * patients)` patients (at least 1, at most
  `max_patients`), drawn once per repeat; their images leave the labeled pool of every budget.
- Count budgets take n / n_classes images per class from distinct patients first (a second image
  of a patient only once every patient of the class has one in the subset).
- Percent budgets take, per class, `max(1, round(p / 100 * patients))` patients and all their
  images, so both classes are present and no patient is split; 100 % is the whole pool.
- A patient's class (for stratification) is the most frequent label of its images (ties: the
  lowest label); Kermany patients have a single class.
- Seeds come from `subset_seed(base_seed, repeat, budget)`, so every arm and mode of a benchmark
  draws the same subsets, and a budget's subsets do not depend on which other budgets run.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfoundry.data.manifest import ClassificationItem
from medfoundry.errors import InputError, MedfoundryError


@dataclass(frozen=True)
class Budget:
    """A label budget: `count` images (balanced) or `percent` of the pool's patients."""

    label: str
    count: int | None = None
    percent: float | None = None


def parse_budget(value: int | float | str) -> Budget:
    """`8` / `"8"` -> 8 images; `"10%"` -> 10 % of the patients (0 < p <= 100)."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            p = float(text[:-1])
            if not 0 < p <= 100:
                raise ValueError
            return Budget(label=f"{p:g}%", percent=p)
        n = int(text)
        if n < 1 or str(n) != text:
            raise ValueError
        return Budget(label=str(n), count=n)
    except ValueError:
        raise MedfoundryError(
            f"budget {value!r}: expected a positive image count (8) or a percent of the "
            "training patients ('10%', at most 100%)"
        ) from None


def subset_seed(base_seed: int, repeat: int, name: str) -> int:
    """Seed of the subset `name` (a budget label or "validation") in a repeat; order-free."""
    entropy = [int(base_seed), int(repeat), zlib.crc32(name.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def patient_classes(items: Sequence[ClassificationItem]) -> dict[str, int]:
    """Each patient's class: the most frequent label of its images (ties: the lowest label)."""
    counts: dict[str, Counter[int]] = {}
    for it in items:
        counts.setdefault(it.group, Counter())[it.label] += 1
    return {g: min(c, key=lambda label: (-c[label], label)) for g, c in counts.items()}


def _patients_by_class(items: Sequence[ClassificationItem]) -> dict[int, list[str]]:
    """Sorted patient ids per class (sorted so that seeds, not file order, decide draws)."""
    out: dict[int, list[str]] = {}
    for group, label in sorted(patient_classes(items).items()):
        out.setdefault(label, []).append(group)
    return out


def split_validation(
    items: Sequence[ClassificationItem],
    fraction: float,
    max_patients: int | None,
    seed: int,
    classes: Sequence[str],
    source: str | Path | None = None,
) -> tuple[list[ClassificationItem], list[ClassificationItem]]:
    """(labeled pool, validation): whole patients, stratified by class, at least one per class."""
    rng = np.random.default_rng(seed)
    by_class = _patients_by_class(items)
    val_groups: set[str] = set()
    for label, name in enumerate(classes):
        groups = by_class.get(label, [])
        if len(groups) < 2:
            raise InputError(
                source,
                f"class {name!r} has {len(groups)} patient(s); validation and training need "
                "at least 2",
            )
        n = max(1, int(round(fraction * len(groups))))
        if max_patients is not None:
            n = min(n, int(max_patients))
        n = min(n, len(groups) - 1)
        val_groups.update(groups[i] for i in rng.permutation(len(groups))[:n])
    pool = [it for it in items if it.group not in val_groups]
    val = [it for it in items if it.group in val_groups]
    return pool, val


def draw_budget(
    pool: Sequence[ClassificationItem],
    budget: Budget,
    seed: int,
    classes: Sequence[str],
    source: str | Path | None = None,
) -> list[ClassificationItem]:
    """The labeled subset of `pool` for `budget` (rules in the module docstring), seeded."""
    rng = np.random.default_rng(seed)
    if budget.percent is not None:
        by_class = _patients_by_class(pool)
        chosen: set[str] = set()
        for label in range(len(classes)):
            groups = by_class.get(label, [])
            n = max(1, int(round(budget.percent / 100 * len(groups))))
            chosen.update(groups[i] for i in rng.permutation(len(groups))[:n])
        return [it for it in pool if it.group in chosen]
    assert budget.count is not None
    if budget.count % len(classes):
        raise MedfoundryError(
            f"budget {budget.label}: {budget.count} images cannot be split evenly over "
            f"{len(classes)} classes"
        )
    per_class = budget.count // len(classes)
    out: list[ClassificationItem] = []
    for label, name in enumerate(classes):
        members = [it for it in pool if it.label == label]
        if len(members) < per_class:
            raise InputError(
                source,
                f"budget {budget.label} needs {per_class} {name} images but the labeled pool "
                f"(training images minus validation) has only {len(members)}",
            )
        order = rng.permutation(len(members))
        # the k-th image of its patient in the shuffled order: distinct patients come first
        seen: Counter[str] = Counter()
        rank = []
        for i in order:
            rank.append(seen[members[i].group])
            seen[members[i].group] += 1
        picked = order[np.argsort(np.asarray(rank), kind="stable")[:per_class]]
        out += [members[i] for i in sorted(picked)]
    return out
