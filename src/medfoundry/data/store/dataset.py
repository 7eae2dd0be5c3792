"""A torch ``Dataset`` of random crops from a 3D store, reproducible per (seed, epoch, index).

Item ``k`` is crop number ``k % crops_per_volume`` of case ``indices[k // crops_per_volume]``;
its randomness comes from ``np.random.default_rng([seed, epoch, k])``, so the same item is the
same crop in any worker, process or order, and ``set_epoch`` draws new crops. Items are
``image`` (1, d, h, w) float32 tensors, or ``(image, label)`` with a (1, d, h, w) int64 label
when every selected case has a label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medfoundry.data.store.reader import Store, crop_size


class StoreCropDataset(Dataset):
    """Random (optionally foreground-centred) crops of the cases of a 3D store."""

    def __init__(
        self,
        store: Store,
        size: int | Sequence[int],
        crops_per_volume: int = 1,
        foreground_prob: float = 0.0,
        seed: int = 0,
        indices: Sequence[int] | None = None,
    ) -> None:
        if crops_per_volume < 1:
            raise ValueError(f"crops_per_volume must be >= 1, got {crops_per_volume}")
        self.store = store
        self.size = crop_size(size)
        self.crops_per_volume = int(crops_per_volume)
        self.foreground_prob = float(foreground_prob)
        self.seed = int(seed)
        self.epoch = 0
        self.indices = list(range(len(store))) if indices is None else [int(i) for i in indices]
        self.with_labels = bool(self.indices) and all(store.has_label(i) for i in self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of another epoch (call before each epoch, in the main process)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices) * self.crops_per_volume

    def __getitem__(self, k: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= k < len(self):
            raise IndexError(k)
        case = self.indices[k // self.crops_per_volume]
        rng = np.random.default_rng([self.seed, self.epoch, k])
        batch = self.store.random_crops([case], self.size, rng, self.foreground_prob)
        image = torch.from_numpy(batch.images[0])  # (1, d, h, w)
        if not self.with_labels or batch.labels is None:
            return image
        return image, torch.from_numpy(batch.labels[0].astype(np.int64))  # (1, d, h, w)
