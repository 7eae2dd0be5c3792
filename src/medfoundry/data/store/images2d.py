"""The 2D store: fixed-size uint8 images in memory-mapped shards, read by index without decoding.

A store folder (written by ``medfoundry.data.store.images2d_build``) holds:

- ``shard_00000.npy``, ``shard_00001.npy``, ...: uint8 arrays (n, size, size), C order, every
  shard ``shard_size`` images but the last; image ``i`` is row ``i % shard_size`` of shard
  ``i // shard_size``;
- ``index.csv``: one row per image in store order (``INDEX_COLUMNS``: its file relative to the
  corpus, source, original input, group (patient) id, modality, original spacing, ...);
- ``store2d.json``: format, version, ``complete`` (false until the last file is written), size,
  count, shard layout and sizes, the indices of constant images, and the corpus it came from.

Order: images are in the order ``collect_images`` lists the corpus folder (sorted paths), so
index ``i`` of the store is image ``i`` of a pretraining run on the folder, and the same seeded
train/validation split selects the same images. ``Store2DDataset`` turns an image into the
tensor ``load_2d`` makes of its PNG (``image2d.image_to_tensor``: the same code, bit for bit).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medfoundry.data.image2d import image_to_tensor, warn_constant
from medfoundry.errors import InputError

STORE2D_FILE = "store2d.json"
STORE2D_FORMAT = "medfoundry 2D store"
STORE2D_VERSION = 1
STORE2D_INDEX = "index.csv"
STORE2D_DIR = "store2d"  # where ``prepare-2d --store`` puts it, inside the corpus folder
DEFAULT_SHARD_SIZE = 4096
INDEX_COLUMNS = [
    "index",
    "file",
    "source",
    "input",
    "group",
    "modality",
    "spacing",
    "original_shape",
    "axis",
    "slice_index",
    "window",
]
_REBUILD = "rebuild it (medfoundry prepare-2d --store, or build_store2d)"


def shard_name(k: int) -> str:
    """The file name of shard ``k``."""
    return f"shard_{k:05d}.npy"


def is_store2d(path: str | Path) -> bool:
    """Whether ``path`` is a 2D store folder (holds ``store2d.json``, finished or not)."""
    return (Path(path) / STORE2D_FILE).is_file()


class Store2D:
    """An open 2D store: ``len``, and ``store[i]`` the (size, size) uint8 image ``i``."""

    def __init__(self, root: str | Path, info: dict[str, Any]) -> None:
        self.root = Path(root)
        self.info = info
        self.size = int(info["size"])
        self.shard_size = int(info["shard_size"])
        self._count = int(info["count"])
        self._maps: dict[int, np.ndarray] = {}
        self._index: list[dict[str, str]] | None = None

    def __len__(self) -> int:
        return self._count

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memory maps (a DataLoader worker maps its own)."""
        return {**self.__dict__, "_maps": {}, "_index": None}

    def shard(self, k: int) -> np.ndarray:
        """Shard ``k`` as a read-only (n, size, size) uint8 memory map (kept open)."""
        if k not in self._maps:
            self._maps[k] = np.load(self.root / self.info["shards"][k]["file"], mmap_mode="r")
        return self._maps[k]

    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i``: a (size, size) uint8 view of its shard's memory map."""
        i = int(i)
        if i < 0:
            i += self._count
        if not 0 <= i < self._count:
            raise IndexError(f"{self.root}: image {i} out of range (0..{self._count - 1})")
        return self.shard(i // self.shard_size)[i % self.shard_size]

    @property
    def index(self) -> list[dict[str, str]]:
        """The rows of ``index.csv`` (``INDEX_COLUMNS``), in store order (read on first use)."""
        if self._index is None:
            with open(self.root / STORE2D_INDEX, newline="", encoding="utf-8") as f:
                self._index = list(csv.DictReader(f))
        return self._index

    @property
    def constant(self) -> list[int]:
        """Indices of the constant images (every pixel equal)."""
        return [int(i) for i in self.info.get("constant", [])]

    def name(self, i: int) -> str:
        """Image ``i``'s file relative to its corpus, for messages."""
        return self.index[i]["file"]

    def warn_constant(self) -> None:
        """One warning naming the constant images, as ``load_images`` warns of a folder's."""
        warn_constant([self.name(i) for i in self.constant])


def _check_shards(root: Path, info: dict[str, Any]) -> None:
    """Every shard present, of the recorded shape and dtype (its header; no pixel is read)."""
    size, step = int(info["size"]), int(info["shard_size"])
    shards = info["shards"]
    if sum(int(s["count"]) for s in shards) != int(info["count"]):
        raise InputError(root / STORE2D_FILE, "shard counts do not add up to count; " + _REBUILD)
    for k, shard in enumerate(shards):
        path = root / shard["file"]
        expected = (int(shard["count"]), size, size)
        if k < len(shards) - 1 and expected[0] != step:
            raise InputError(root / STORE2D_FILE, f"shard {k} is not shard_size long; {_REBUILD}")
        try:
            array = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise InputError(path, f"missing (a shard of the 2D store); {_REBUILD}") from None
        except (OSError, ValueError) as e:
            raise InputError(path, f"not a readable shard ({e}); {_REBUILD}") from e
        if array.dtype != np.uint8 or array.shape != expected:
            raise InputError(
                path, f"is {array.dtype} {array.shape}, expected uint8 {expected}; {_REBUILD}"
            )
    if not (root / STORE2D_INDEX).is_file():
        raise InputError(root / STORE2D_INDEX, f"missing (the 2D store's index); {_REBUILD}")


def read_store2d_info(root: str | Path) -> dict[str, Any] | None:
    """``root/store2d.json`` when it is a 2D store's (either state), else None."""
    try:
        info = json.loads((Path(root) / STORE2D_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("format") == STORE2D_FORMAT else None


def open_store2d(root: str | Path) -> Store2D:
    """Open a 2D store folder (``InputError`` naming it if it is not one, is unfinished, or a
    shard is missing or of the wrong shape)."""
    root = Path(root)
    path = root / STORE2D_FILE
    if not path.is_file():
        raise InputError(root, f"not a 2D store: no {STORE2D_FILE} (make one: prepare-2d --store)")
    info = read_store2d_info(root)
    if info is None:
        raise InputError(path, f"not a 2D store's {STORE2D_FILE} (unreadable or another format)")
    if info.get("version") != STORE2D_VERSION:
        raise InputError(
            path, f"2D store version {info.get('version')}, expected {STORE2D_VERSION}"
        )
    if not info.get("complete"):
        raise InputError(root, f"incomplete 2D store (its build stopped); {_REBUILD}")
    _check_shards(root, info)
    return Store2D(root, info)


class Store2DDataset(Dataset):
    """Images of a 2D store as model-ready (channels, size, size) float32 tensors, exactly as
    ``load_2d`` reads the same image's PNG (resized the same way when ``size`` differs from the
    store's). ``indices`` selects and orders the images (default: all)."""

    def __init__(
        self,
        store: Store2D,
        size: int,
        channels: int = 1,
        normalization: dict[str, Any] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.store = store
        self.size = int(size)
        self.channels = int(channels)
        self.normalization = dict(normalization) if normalization is not None else None
        self.indices = list(range(len(store))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        i = self.indices[k]
        array = np.asarray(self.store[i], dtype=np.float32)[None]  # (1, S, S), as read_image
        where = f"{self.store.root}[{i}]"
        return image_to_tensor(array, self.size, self.channels, self.normalization, where)
