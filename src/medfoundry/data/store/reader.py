"""Open a prepared 3D store and read random crops out of it through memory maps.

A store folder (written by ``medfoundry.data.store.build.prepare_store``) holds ``store.json``,
``images/<id>.npy`` (float16, (D, H, W), [0, 1]), ``labels/<id>.npy`` (uint8, (D, H, W)) for
labeled cases, and ``foreground/<id>.npy`` (uint16, (K, 3)): up to 10,000 label voxels drawn
uniformly, the centres of foreground crops. Crops are read with ``np.load(mmap_mode="r")`` and
slicing, so only the pages under the crop are read from disk; volumes smaller than the crop are
zero-padded (rules: ``medfoundry.data.store.crops``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medfoundry.data.store.crops import centred_starts, random_starts, read_padded
from medfoundry.data.store.files import check_store_files
from medfoundry.errors import InputError

STORE_FILE = "store.json"
STORE_FORMAT = "medfoundry 3D store"
STORE_VERSION = 1
#: store.json settings that describe the data a model sees (recorded with checkpoints).
PREPROCESSING_KEYS = (
    "axis_order",
    "target_spacing",
    "modality",
    "normalization",
    "resampling",
    "crop_foreground",
    "crop_margin",
    "foreground",
    "image_dtype",
    "label_dtype",
    "padding",
)
_MAX_OPEN = 4096  # memory maps kept open per store (well under the kernel's map limit)


class CropBatch(NamedTuple):
    """Crops of several cases: images (N, 1, d, h, w) float32, labels (N, 1, d, h, w) uint8 or
    None, and each crop's start (N, 3) in its case's voxels (negative: padded)."""

    images: np.ndarray
    labels: np.ndarray | None
    starts: np.ndarray


def crop_size(size: int | Sequence[int]) -> tuple[int, int, int]:
    """A crop size as three positive ints (an int means a cube)."""
    dims = [int(size)] * 3 if isinstance(size, int | np.integer) else [int(s) for s in size]
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"crop size must be 3 positive integers, got {size!r}")
    return dims[0], dims[1], dims[2]


class Store:
    """A prepared 3D store: case records, memory-mapped volumes and random crops."""

    def __init__(self, root: str | Path, info: dict[str, Any]) -> None:
        self.root = Path(root)
        self.info = info
        self.cases: list[dict[str, Any]] = list(info["cases"])
        self._shapes = np.asarray([c["shape"] for c in self.cases], dtype=np.int64).reshape(-1, 3)
        self._maps: dict[tuple[str, int], np.ndarray] = {}
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without open memory maps (a DataLoader worker reopens its own)."""
        return {**self.__dict__, "_maps": {}, "_foreground": {}}

    @property
    def case_ids(self) -> list[str]:
        """Case ids in store order."""
        return [c["id"] for c in self.cases]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The settings a model trained on this store depends on (for its checkpoint)."""
        settings = self.info["settings"]
        return {k: settings[k] for k in PREPROCESSING_KEYS if k in settings}

    @property
    def labeled_indices(self) -> list[int]:
        """Indices of the cases that have a label."""
        return [i for i, c in enumerate(self.cases) if c.get("label_file")]

    def has_label(self, i: int) -> bool:
        """Whether case ``i`` has a label."""
        return bool(self.cases[i].get("label_file"))

    def _map(self, kind: str, i: int) -> np.ndarray:
        """The (D, H, W) memory map of case ``i``'s image or label (cached)."""
        key = (kind, int(i))
        if key not in self._maps:
            if len(self._maps) >= _MAX_OPEN:
                self._maps.clear()
            self._maps[key] = np.load(self.root / self.cases[i][f"{kind}_file"], mmap_mode="r")
        return self._maps[key]

    def image(self, i: int, mmap: bool = True) -> np.ndarray:
        """Case ``i``'s image, (1, D, H, W) float16 in [0, 1]: a read-only memmap, or in memory."""
        if mmap:
            return self._map("image", i)[None]
        return np.load(self.root / self.cases[i]["image_file"])[None]

    def label(self, i: int, mmap: bool = True) -> np.ndarray | None:
        """Case ``i``'s label, (1, D, H, W) uint8, or None for an unlabeled case."""
        if not self.has_label(i):
            return None
        if mmap:
            return self._map("label", i)[None]
        return np.load(self.root / self.cases[i]["label_file"])[None]

    def foreground_voxels(self, i: int) -> np.ndarray:
        """(K, 3) label voxels of case ``i`` to centre crops on (empty: none or no label)."""
        if i not in self._foreground:
            name = self.cases[i].get("foreground_file")
            self._foreground[i] = (
                np.load(self.root / name) if name else np.zeros((0, 3), dtype=np.uint16)
            )
        return self._foreground[i]

    def random_crops(
        self,
        indices: Sequence[int] | np.ndarray,
        size: int | Sequence[int],
        generator: np.random.Generator,
        foreground_prob: float = 0.0,
    ) -> CropBatch:
        """One crop of ``size`` voxels per case index, drawn with ``generator``.

        A share ``foreground_prob`` of the crops is centred on a random foreground voxel of the
        label (cases without one fall back to a uniform crop). Labels come back only when every
        case has one.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        dims = crop_size(size)
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"foreground_prob must be in [0, 1], got {foreground_prob}")
        shapes = self._shapes[idx]  # (N, 3)
        starts = random_starts(shapes, dims, generator)  # (N, 3)
        if foreground_prob > 0:
            wanted = generator.random(idx.size) < foreground_prob  # (N,)
            pick = generator.random(idx.size)  # (N,) which foreground voxel, as a fraction
            for k in np.flatnonzero(wanted):
                voxels = self.foreground_voxels(int(idx[k]))
                if len(voxels):
                    centre = voxels[min(int(pick[k] * len(voxels)), len(voxels) - 1)]
                    starts[k] = centred_starts(centre[None], shapes[k : k + 1], dims)[0]
        images = np.zeros((idx.size, 1, *dims), dtype=np.float32)
        with_labels = idx.size > 0 and all(self.has_label(int(i)) for i in idx)
        labels = np.zeros((idx.size, 1, *dims), dtype=np.uint8) if with_labels else None
        for k, i in enumerate(idx.tolist()):  # one memory-mapped read per case
            read_padded(self._map("image", i), starts[k], images[k, 0])
            if labels is not None:
                read_padded(self._map("label", i), starts[k], labels[k, 0])
        return CropBatch(images, labels, starts)


def open_store(root: str | Path) -> Store:
    """Open a store folder written by ``prepare_store`` (``InputError`` if it is not one, is
    unfinished, or a file is missing or of the wrong size: ``data.store.files``)."""
    path = Path(root) / STORE_FILE
    if not path.is_file():
        raise InputError(root, f"not a 3D store: no {STORE_FILE} (make one: medfoundry prepare)")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not readable: {e}") from e
    if info.get("format") != STORE_FORMAT:
        raise InputError(path, f"not a 3D store (format {info.get('format')!r})")
    if info.get("version") != STORE_VERSION:
        raise InputError(path, f"store version {info.get('version')}, expected {STORE_VERSION}")
    if not info.get("complete"):
        raise InputError(root, "incomplete store (its build stopped); run medfoundry prepare again")
    check_store_files(root, info)
    return Store(root, info)
