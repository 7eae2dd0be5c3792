"""Checks and helpers on 3D stores as a task uses them: is a folder a store, open it or
prepare it from an MSD folder, its label classes, a test store that matches the training store,
and the seeded train / validation split of its cases. (A checkpoint's recorded preprocessing
against a store: ``zoo.adapt3d.check_preprocessing``.)"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfoundry.data.store.build import prepare_store
from medfoundry.data.store.cases import is_msd_layout
from medfoundry.data.store.reader import STORE_FILE, Store, open_store
from medfoundry.data.store.settings import describe_diff, prepare_kwargs, preprocessing_diff
from medfoundry.errors import InputError

__all__ = [
    "is_store",
    "label_classes",
    "open_or_prepare",
    "open_test_store",
    "split_validation",
]


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a 3D store folder (holds ``store.json``)."""
    return (Path(path) / STORE_FILE).is_file()


def open_or_prepare(
    data: str | Path, store_dir: Path, settings: dict[str, Any], progress: bool = False
) -> Store:
    """``data`` itself when it is a store, else the store prepared from it into ``store_dir``
    (reused when already there with the same settings)."""
    if is_store(data):
        return open_store(data)
    if not is_msd_layout(Path(data)):
        raise InputError(
            data,
            "not a 3D store (no store.json) nor an nnU-Net/MSD folder (imagesTr/, labelsTr/); "
            "for 2D segmentation use an images/ + masks/<structure>/ folder",
        )
    prepare_store(data, store_dir, progress=progress, **settings)
    return open_store(store_dir)


def label_classes(store: Store) -> tuple[list[int], list[str]]:
    """Foreground label values of a store and their names (dataset.json, else ``c<value>``)."""
    named = store.info.get("labels") or {}
    present = store.info.get("counts", {}).get("label_classes") or []
    values = sorted({int(k) for k in named} | {int(v) for v in present})
    values = [v for v in values if v > 0]
    if not values:
        raise InputError(store.root, "no foreground label value in the store's labels")
    return values, [str(named.get(str(v), f"c{v}")) for v in values]


def open_test_store(test_data: str | Path, store: Store, out: Path, progress: bool) -> Store:
    """The test store (an MSD folder prepared into ``<out>/test_store`` with the training
    store's settings), checked before training: same preprocessing, same label values and
    names, at least one labeled case; else one line naming both stores."""
    test = open_or_prepare(
        test_data, out / "test_store", prepare_kwargs(store.preprocessing), progress
    )
    diff = preprocessing_diff(store.preprocessing, test.preprocessing)
    if diff:
        raise InputError(
            test.root,
            f"preprocessed differently from the training store {store.root} "
            f"({describe_diff(store.preprocessing, test.preprocessing, diff)})",
        )
    train_labels = dict(zip(*label_classes(store), strict=True))
    test_labels = dict(zip(*label_classes(test), strict=True))
    if test_labels != train_labels:

        def show(labels: dict[int, str]) -> str:
            return ", ".join(f"{v}={n}" for v, n in labels.items())

        raise InputError(
            test.root,
            f"labels {show(test_labels)} differ from the training store {store.root} "
            f"({show(train_labels)})",
        )
    if not test.labeled_indices:
        raise InputError(test.root, "no labeled case to test on")
    return test


def split_validation(
    indices: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) case indices; at least one validation case when there are two or
    more cases, and at least one training case."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val = min(max(1, int(round(n * float(val_fraction)))), n - 1) if n > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])
