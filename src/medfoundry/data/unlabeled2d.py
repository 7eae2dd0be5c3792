"""Unlabeled 2D image sets for pretraining: decoded once, checked, normalised, kept as tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medfoundry.data.corpus2d_check import check_image_folder
from medfoundry.data.image2d import load_2d, warn_constant
from medfoundry.data.manifest import scan_images
from medfoundry.errors import InputError


def collect_images(sources: Sequence[str | Path]) -> list[Path]:
    """All image files under the given folders (or the files themselves), de-duplicated, sorted.

    A folder that is (part of) a ``prepare-2d`` corpus must be complete and undamaged
    (``medfoundry.data.corpus2d_check.check_image_folder``); a plain image folder is taken as is.
    """
    paths: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_file():
            paths.append(src)
        elif src.is_dir():
            found = scan_images(src)
            check_image_folder(src, found)
            paths.extend(found)
        else:
            raise InputError(src, "no such file or folder")
    return sorted(set(paths))


def load_images(
    paths: Sequence[Path],
    size: int,
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
    progress: bool = True,
    desc: str = "loading images",
) -> torch.Tensor:
    """Decode, check and normalise every image into one (N, C, size, size) float tensor.

    Every file is read before training starts, so a bad file stops the run with its name
    before any checkpoint is written; constant images are accepted with one warning naming
    them.
    """
    if not paths:
        raise InputError(None, "no images to load")
    out = torch.empty((len(paths), channels, size, size), dtype=torch.float32)
    constant: list[Path] = []
    for i, path in enumerate(tqdm(paths, desc=desc, disable=not progress, leave=False)):
        out[i] = load_2d(
            path, size, channels=channels, normalization=normalization, constant=constant
        )
    warn_constant(constant)
    return out


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor; items are (C, H, W) tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]
