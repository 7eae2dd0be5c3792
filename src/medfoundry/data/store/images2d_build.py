"""Write a 2D store (format: ``medfoundry.data.store.images2d``) from a finished 2D corpus.

``build_store2d`` (CLI: ``medfoundry prepare-2d --store``) reads a ``prepare-2d`` corpus after
it is complete: it lists the images the way pretraining lists the folder (``collect_images``,
which also refuses an unfinished or damaged corpus), decodes each PNG once with the reader
``load_2d`` uses, and copies its pixels into the shards. Reading the PNGs back, rather than
writing the store while the corpus is built, keeps ``build_corpus_2d`` as it is, works for any
corpus already on disk, and makes the store hold the PNGs' pixels by construction. Rules:

- every image must be a ``size`` x ``size`` 8-bit gray PNG (what ``prepare-2d`` writes) listed in
  ``manifest.csv``; another image in the folder (a pretraining run would read it, the store
  would not) is refused, naming it;
- the index keeps each image's manifest fields; ``group`` is the patient id of a 2D input
  (``patient_id_from_name``) or the volume a slice was cut from, prefixed with its source;
  ``spacing`` is empty for inputs whose format has none (PNG, JPEG, ...);
- completeness: ``store2d.json`` says ``"complete": false`` before the first shard and is
  rewritten with ``"complete": true`` last, after ``index.csv``; every file is written
  atomically, so a stopped build is refused by ``open_store2d`` and replaced by ``overwrite``.

``write_store2d`` is the writer under it, for any source of uint8 images (the benchmark writes
synthetic stores with it).
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from medfoundry.data.corpus2d_check import (
    CORPUS_FILE,
    CORPUS_MANIFEST,
    MANIFEST_ERRORS,
    read_corpus_info,
)
from medfoundry.data.discover import file_stem
from medfoundry.data.image2d import is_constant
from medfoundry.data.manifest import patient_id_from_name
from medfoundry.data.store.images2d import (
    DEFAULT_SHARD_SIZE,
    INDEX_COLUMNS,
    STORE2D_DIR,
    STORE2D_FILE,
    STORE2D_FORMAT,
    STORE2D_INDEX,
    STORE2D_VERSION,
    read_store2d_info,
    shard_name,
)
from medfoundry.data.unlabeled2d import collect_images
from medfoundry.errors import InputError
from medfoundry.io import read_image
from medfoundry.io.raster import RASTER_EXTENSIONS
from medfoundry.runtime import atomic_save, atomic_write_json, atomic_write_text, is_temp_file

#: An image with its index row (``INDEX_COLUMNS`` but ``index``).
Item = tuple[np.ndarray, dict[str, str]]


def _prepare_store_dir(out_dir: Path, overwrite: bool) -> None:
    """An empty folder for the store; an old store, finished or not, is replaced only when
    ``overwrite`` (never a folder holding anything else)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        info = read_store2d_info(out_dir)
        only_temps = all(is_temp_file(p) for p in out_dir.iterdir())
        if not overwrite:
            state = "an unfinished" if info is not None and not info.get("complete") else "a"
            what = f"holds {state} 2D store" if info is not None else "is not empty"
            raise InputError(out_dir, f"{what}; choose a new folder, or overwrite it")
        if info is None and not only_temps:
            raise InputError(
                out_dir, f"is not empty and holds no {STORE2D_FILE}; refusing to delete it"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _fill_shard(tmp: Path, items: Iterator[Item], n: int, size: int, first: int, out: dict) -> None:
    """Write the next ``n`` images of ``items`` as an (n, size, size) uint8 .npy at ``tmp``."""
    shard = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
    for j in range(n):
        try:
            array, row = next(items)
        except StopIteration:
            raise InputError(None, f"only {first + j} images, {out['count']} announced") from None
        if array.dtype != np.uint8 or array.shape != (size, size):
            where = row.get("file") or f"image {first + j}"
            raise InputError(
                where, f"is {array.dtype} {array.shape}, expected uint8 ({size}, {size})"
            )
        shard[j] = array
        if is_constant(array):
            out["constant"].append(first + j)
        out["rows"].append({"index": str(first + j), **row})
    shard.flush()
    del shard


def write_store2d(
    out_dir: str | Path,
    size: int,
    count: int,
    items: Iterable[Item],
    shard_size: int = DEFAULT_SHARD_SIZE,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``count`` (size, size) uint8 images with their index rows into a store at
    ``out_dir``; ``extra`` goes into ``store2d.json`` (which is returned)."""
    start = time.perf_counter()
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(None, f"shard size must be a positive integer, got {shard_size!r}")
    if count < 1:
        raise InputError(out_dir, "no images to store")
    out = Path(out_dir)
    _prepare_store_dir(out, overwrite)
    header = {"format": STORE2D_FORMAT, "version": STORE2D_VERSION}
    atomic_write_json(out / STORE2D_FILE, {**header, "complete": False})
    written: dict[str, Any] = {"count": count, "rows": [], "constant": []}
    stream = iter(tqdm(items, total=count, desc="2D store", disable=not progress, leave=False))
    shards = []
    for k, first in enumerate(range(0, count, shard_size)):
        n = min(shard_size, count - first)
        name = shard_name(k)
        atomic_save(
            out / name,
            lambda tmp, n=n, first=first: _fill_shard(tmp, stream, n, size, first, written),
        )
        shards.append({"file": name, "count": n})
    if next(stream, None) is not None:
        raise InputError(None, f"more images than the {count} announced")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(written["rows"])
    atomic_write_text(out / STORE2D_INDEX, buffer.getvalue(), errors=MANIFEST_ERRORS)
    info = {
        **header,
        "complete": True,
        "size": size,
        "count": count,
        "dtype": "uint8",
        "layout": "image i = row i % shard_size of shard i // shard_size, (n, size, size) C order",
        "shard_size": shard_size,
        "shards": shards,
        "index": STORE2D_INDEX,
        "constant": written["constant"],
        **(extra or {}),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(out / STORE2D_FILE, info)  # last: marks the store complete
    return info


def _manifest_rows(corpus: Path) -> dict[str, dict[str, str]]:
    """The corpus's manifest rows by file (relative, POSIX)."""
    with open(corpus / CORPUS_MANIFEST, newline="", encoding="utf-8", errors=MANIFEST_ERRORS) as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def _index_row(rel: str, row: dict[str, str]) -> dict[str, str]:
    """An image's index fields from its manifest row (rules: module doc)."""
    source, where = row.get("source", ""), row.get("input", "")
    name = Path(where).name
    if row.get("axis"):  # a slice: its volume (file or DICOM series folder) is its group
        group = file_stem(name)
    else:
        group = patient_id_from_name(name) if name else ""
    suffix = Path(name).suffix.lower()
    return {
        "file": rel,
        "source": source,
        "input": where,
        "group": f"{source}/{group}" if group else "",
        "modality": row.get("modality", ""),
        "spacing": "" if suffix in RASTER_EXTENSIONS else row.get("spacing", ""),
        "original_shape": row.get("original_shape", ""),
        "axis": row.get("axis", ""),
        "slice_index": row.get("slice_index", ""),
        "window": row.get("window", ""),
    }


def _corpus_items(corpus: Path, paths: list[Path], size: int) -> Iterator[Item]:
    """Each corpus PNG's pixels (decoded by ``read_image``, as ``load_2d`` reads them)."""
    rows = _manifest_rows(corpus)
    for path in paths:
        rel = path.relative_to(corpus).as_posix()
        row = rows.get(rel)
        if row is None:
            raise InputError(
                path,
                f"not listed in {corpus / CORPUS_MANIFEST}: pretraining on the folder would read "
                "it, the store would not; remove it or rebuild the corpus",
            )
        image = read_image(path, ndim=2)
        shape = tuple(image.array.shape)
        if shape != (1, size, size) or image.meta.get("bit_depth") != 8:
            raise InputError(
                path, f"is {'x'.join(map(str, shape))}, not a {size}x{size} 8-bit gray corpus image"
            )
        yield image.array[0].astype(np.uint8), _index_row(rel, row)


def build_store2d(
    corpus_dir: str | Path,
    out_dir: str | Path | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the 2D store of the finished ``prepare-2d`` corpus at ``corpus_dir`` into
    ``out_dir`` (default ``corpus_dir/store2d``); returns its ``store2d.json``."""
    corpus = Path(corpus_dir)
    info = read_corpus_info(corpus)
    if info is None:
        raise InputError(corpus, f"not a 2D corpus: no {CORPUS_FILE} (make one: prepare-2d)")
    paths = collect_images([corpus])  # refuses an unfinished or damaged corpus
    size = int(info["settings"]["size"])
    out = corpus / STORE2D_DIR if out_dir is None else Path(out_dir)
    corpus_summary = {
        "path": str(corpus.resolve()),
        "images": info.get("images"),
        "settings": info.get("settings"),
        "order": "sorted corpus paths, as collect_images lists the folder",
    }
    return write_store2d(
        out,
        size,
        len(paths),
        _corpus_items(corpus, paths, size),
        shard_size=shard_size,
        extra={"corpus": corpus_summary},
        overwrite=overwrite,
        progress=progress,
    )
