"""Foreground-balanced training patches from a labeled 3D store (nnU-Net-style oversampling).

Training step ``k`` gets a batch of ``batch_size`` patches: cases drawn uniformly with
replacement from the training cases, and a share ``foreground_fraction`` of the patches centred
on a random foreground (label > 0) voxel, the others placed uniformly. Which patches are
foreground-centred follows a fixed schedule over the run's patch numbers ``j = k * B + b``:
patch ``j`` is when ``ceil((j + 1) f) > ceil(j f)``, so any first ``n`` patches hold exactly
``ceil(n f)`` of them (also with batch size 1, where nnU-Net's per-batch rounding gives none).
A case whose label is empty has no foreground voxel: its foreground-centred patch falls back to
a uniform one (the store's rule). Volumes smaller than the patch are zero-padded, never cropped
smaller (``medfoundry.data.store.crops``). Step ``k``'s randomness is ``default_rng([seed, k])``,
so a batch is the same in any worker and order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medfoundry.data.store.reader import Store, crop_size


def foreground_flags(start: int, count: int, fraction: float) -> np.ndarray:
    """(count,) bool: which of patches ``start .. start + count - 1`` are foreground-centred."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"foreground_fraction must be in [0, 1], got {fraction}")
    j = np.arange(start, start + count, dtype=np.float64)
    # rounding guards 3 * (1/3) = 0.999... from landing one patch late
    return np.ceil(np.round((j + 1) * fraction, 9)) > np.ceil(np.round(j * fraction, 9))


def patch_batch(
    store: Store,
    cases: np.ndarray,
    flags: np.ndarray,
    size: Sequence[int],
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (B, 1, d, h, w) float32 and labels (B, 1, d, h, w) uint8 of ``cases``; patches
    with ``flags`` are centred on a foreground voxel, the others uniform."""
    dims = crop_size(tuple(int(s) for s in size))
    images = np.zeros((len(cases), 1, *dims), dtype=np.float32)
    labels = np.zeros((len(cases), 1, *dims), dtype=np.uint8)
    for wanted, prob in ((flags, 1.0), (~flags, 0.0)):
        if wanted.any():
            crops = store.random_crops(cases[wanted], dims, generator, foreground_prob=prob)
            if crops.labels is None:
                raise ValueError("patch_batch: every training case needs a label")
            images[wanted], labels[wanted] = crops.images, crops.labels
    return images, labels


class PatchBatches(Dataset):
    """``steps`` batches of foreground-balanced patches; item k = (images, labels) tensors
    (B, 1, d, h, w) float32 / int64 (use a DataLoader with ``batch_size=None``)."""

    def __init__(
        self,
        store: Store,
        indices: Sequence[int],
        size: Sequence[int],
        batch_size: int,
        steps: int,
        foreground_fraction: float = 1.0 / 3.0,
        seed: int = 0,
    ) -> None:
        if not indices:
            raise ValueError("PatchBatches: no training cases")
        unlabeled = [int(i) for i in indices if not store.has_label(int(i))]
        if unlabeled:
            raise ValueError(f"PatchBatches: cases without a label: {unlabeled[:5]}")
        foreground_flags(0, 1, foreground_fraction)  # validates the fraction
        self.store = store
        self.indices = np.asarray([int(i) for i in indices], dtype=np.int64)
        self.size = crop_size(tuple(int(s) for s in size))
        self.batch_size = int(batch_size)
        self.steps = int(steps)
        self.fraction = float(foreground_fraction)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < self.steps:
            raise IndexError(k)
        rng = np.random.default_rng([self.seed, int(k)])
        cases = self.indices[rng.integers(0, len(self.indices), self.batch_size)]  # (B,)
        flags = foreground_flags(k * self.batch_size, self.batch_size, self.fraction)  # (B,)
        images, labels = patch_batch(self.store, cases, flags, self.size, rng)
        return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class StoreVolumes(Dataset):
    """Whole labeled volumes of a store: item i = (image (1, D, H, W) float32, label
    (1, D, H, W) int64) of case ``indices[i]`` (shapes differ: use batch size 1)."""

    def __init__(self, store: Store, indices: Sequence[int]) -> None:
        self.store = store
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.indices[i]
        label = self.store.label(case, mmap=False)
        if label is None:
            raise ValueError(f"StoreVolumes: case {self.store.case_ids[case]} has no label")
        image = self.store.image(case, mmap=False).astype(np.float32)
        return torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))
