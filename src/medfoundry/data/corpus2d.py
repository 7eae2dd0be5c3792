"""Build a 2D pretraining corpus (8-bit PNGs + manifest.csv + corpus.json) from mixed sources.

``build_corpus_2d`` (CLI: ``medfoundry prepare-2d``) scans each source folder recursively
(``medfoundry.data.discover``): every 2D file becomes one corpus image, every volume is cut into
slices along ``axis`` (``medfoundry.data.slicing``); ``resolve_modality`` decides CT or not.
Bad input stops the build with an ``InputError`` naming the file.

Rules (modality, intensity, skips, size, output, completeness, errors): docs/rules/corpus2d.md.
"""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from medfoundry.data.corpus2d_check import (
    CORPUS_FILE,
    CORPUS_FORMAT,
    CORPUS_MANIFEST,
    MANIFEST_ERRORS,
    PNG_SOFTWARE,
    is_own_product,
    read_corpus_info,
)
from medfoundry.data.discover import CorpusInput, file_stem, find_inputs
from medfoundry.data.normalize import (
    XRAY_NORMALIZATION,
    parse_ct_window,
    percentile_bounds,
    range_to_unit,
    window_to_unit,
)
from medfoundry.data.slicing import (
    AXES,
    CT_FOREGROUND_HU,
    MIN_FOREGROUND,
    UNIT_FOREGROUND,
    fit_square,
    skip_reasons,
    volume_slices,
)
from medfoundry.errors import InputError
from medfoundry.io import ImageData, read_dicom_series, read_image, supported_extensions
from medfoundry.runtime import atomic_save, atomic_write_json, atomic_write_text

MANIFEST_COLUMNS = [
    "file",
    "source",
    "input",
    "modality",
    "modality_from",
    "slice_index",
    "axis",
    "window",
    "intensity",
    "original_shape",
    "spacing",
    "bytes",
]
#: An "unknown" volume with a minimum at or below this is CT in HU.
HU_DETECT_MIN = -500.0
VOLUME_PERCENTILES = (0.5, 99.5)

# (name, intensity description, function: array -> [0, 1])
Mapping = tuple[str, str, Any]


def _fmt(values: Sequence[float]) -> str:
    """Numbers as "3x0.977x0.977" for the manifest."""
    return "x".join(f"{float(v):.4g}" for v in values)


def resolve_modality(image: ImageData, default: str) -> tuple[str, str]:
    """The modality to treat an input as, and where it came from (tag/option/hu_range/none)."""
    if image.modality != "unknown":
        return image.modality, "tag"
    if len(image.spatial_shape) == 3:
        if default.lower() != "unknown":
            return default.upper(), "option"
        if float(image.array.min()) <= HU_DETECT_MIN:
            return "CT", "hu_range"
    return "unknown", "none"


def _ct_mappings(windows: Sequence[tuple[str, float, float]]) -> list[Mapping]:
    """One mapping per CT window."""
    return [
        (
            name,
            f"window {level - width / 2:g}..{level + width / 2:g} HU",
            lambda a, level=level, width=width: window_to_unit(a, level, width),
        )
        for name, level, width in windows
    ]


def _range_mapping(low: float, high: float, what: str) -> list[Mapping]:
    """A single mapping of [low, high] to [0, 1]."""
    return [("", f"{what} {low:.4g}..{high:.4g}", lambda a: range_to_unit(a, low, high))]


def _png_bytes(unit: np.ndarray) -> bytes:
    """Encode a [0, 1] image as an 8-bit grayscale PNG marked as ``prepare-2d``'s."""
    u8 = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    marker = PngInfo()
    marker.add_text("Software", PNG_SOFTWARE)
    # compress_level 3: 2.4x faster than 6
    Image.fromarray(u8).save(buffer, format="PNG", compress_level=3, pnginfo=marker)
    return buffer.getvalue()


class _CorpusWriter:
    """Writes PNGs with unique names and collects manifest rows and counts."""

    def __init__(self, out_dir: Path, size: int, ct_mappings: list[Mapping]) -> None:
        self.out_dir = out_dir
        self.size = size
        self.ct_mappings = ct_mappings
        self.rows: list[dict[str, str]] = []
        self._stems: set[Path] = set()

    def unique_stem(self, folder: Path, name: str) -> Path:
        """``folder/name`` (relative to the corpus), suffixed -2, -3, ... when already taken."""
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "image"
        stem, n = folder / safe, 1
        while stem in self._stems:
            n += 1
            stem = folder / f"{safe}-{n}"
        self._stems.add(stem)
        return stem

    def write(self, rel: Path, unit: np.ndarray, spacing: tuple[float, float], row: dict) -> None:
        """Fit ``unit`` to the square, write it as PNG at ``rel``, remember its manifest row."""
        data = _png_bytes(fit_square(unit, spacing, self.size))
        atomic_save(self.out_dir / rel, lambda tmp: tmp.write_bytes(data))
        self.rows.append({"file": rel.as_posix(), **row, "bytes": str(len(data))})


def _new_counts(path: Path) -> dict[str, Any]:
    """Zeroed counters of one source (or of the totals)."""
    return {
        "path": str(path),
        "inputs_2d": 0,
        "volumes": 0,
        "slices": 0,
        "images": 0,
        "inputs_by_modality": Counter(),
        "images_by_modality": Counter(),
        "skipped": Counter(),
        "ignored_files": 0,
    }


def _process_2d(
    image: ImageData, modality: str, base: dict, stem: Path, writer: _CorpusWriter, counts: dict
) -> None:
    """One 2D image -> one PNG per mapping (CT windows, else per-image percentile range)."""
    gray = image.array.mean(axis=0) if image.channels > 1 else image.array[0]
    counts["inputs_2d"] += 1
    if float(gray.max()) == float(gray.min()):
        counts["skipped"]["constant"] += 1
        return
    if modality == "CT":
        mappings = writer.ct_mappings
    else:
        low, high = percentile_bounds(
            gray, XRAY_NORMALIZATION["lower"], XRAY_NORMALIZATION["upper"]
        )
        mappings = _range_mapping(low, high, "percentile 0.5-99.5 per image")
    for name, intensity, fn in mappings:
        rel = stem.parent / (stem.name + (f"_{name}" if name else "") + ".png")
        row = base | {"slice_index": "", "axis": "", "window": name, "intensity": intensity}
        writer.write(rel, fn(gray), image.spacing, row)
        counts["images"] += 1
        counts["images_by_modality"][modality] += 1


def _process_volume(
    image: ImageData,
    modality: str,
    axis: str,
    base: dict,
    stem: Path,
    writer: _CorpusWriter,
    counts: dict,
) -> None:
    """One volume -> its non-skipped slices along ``axis``, one PNG per mapping each."""
    slices, pixel_spacing = volume_slices(image.array[0], image.spacing, axis)
    counts["volumes"] += 1
    counts["slices"] += len(slices)
    if modality == "CT":
        foreground = slices > CT_FOREGROUND_HU
        mappings = writer.ct_mappings
    else:
        low, high = percentile_bounds(slices, *VOLUME_PERCENTILES)
        foreground = range_to_unit(slices, low, high) > UNIT_FOREGROUND
        mappings = _range_mapping(low, high, "percentile 0.5-99.5 per volume")
    for index, reason in enumerate(skip_reasons(slices, foreground, MIN_FOREGROUND)):
        if reason is not None:
            counts["skipped"][reason] += 1
            continue
        for name, intensity, fn in mappings:
            suffix = f"_{axis}{index:04d}" + (f"_{name}" if name else "")
            rel = stem.parent / (stem.name + suffix + ".png")
            row = base | {"slice_index": str(index), "axis": axis, "window": name}
            writer.write(rel, fn(slices[index]), pixel_spacing, row | {"intensity": intensity})
            counts["images"] += 1
            counts["images_by_modality"][modality] += 1


def _read_input(item: CorpusInput) -> ImageData:
    """Decode one input (a file, or the files of one DICOM series)."""
    if item.kind == "dicom_series":
        return read_dicom_series(item.paths)
    return read_image(item.paths[0])


def _process_source(
    source: Path,
    label: str,
    axis: str,
    modality_default: str,
    writer: _CorpusWriter,
    progress: bool,
) -> dict[str, Any]:
    """Write the corpus images of one source folder (or file); return its counts."""
    inputs, ignored = find_inputs(source)
    if not inputs:
        looked = ", ".join(sorted(supported_extensions()))
        raise InputError(
            source,
            f"no readable image, volume or DICOM files found (looked for {looked}, "
            "DICOM files with a 'DICM' header)",
        )
    counts = _new_counts(source)
    counts["ignored_files"] = ignored
    for item in tqdm(inputs, desc=label, disable=not progress, leave=False):
        image = _read_input(item)
        modality, modality_from = resolve_modality(image, modality_default)
        counts["inputs_by_modality"][modality] += 1
        where = item.paths[0].parent if item.kind == "dicom_series" else item.paths[0]
        base = {
            "source": label,
            "input": str(where),
            "modality": modality,
            "modality_from": modality_from,
            "original_shape": "x".join(str(s) for s in image.spatial_shape),
            "spacing": _fmt(image.spacing),
        }
        stem = writer.unique_stem(Path(label) / item.rel_dir, item.name)
        if len(image.spatial_shape) == 3:
            _process_volume(image, modality, axis, base, stem, writer, counts)
        else:
            _process_2d(image, modality, base, stem, writer, counts)
    if counts["images"] == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(counts["skipped"].items()))
        raise InputError(source, f"no corpus images: every image/slice was skipped ({reasons})")
    return counts


def _prepare_out_dir(out_dir: Path, sources: Sequence[Path], overwrite: bool) -> None:
    """Create an empty output folder; replace an old corpus, finished or not, only when
    ``overwrite`` (what counts as one: ``corpus2d_check.is_own_product``)."""
    resolved = out_dir.resolve()
    for src in sources:
        if resolved == src.resolve() or src.resolve() in resolved.parents:
            raise InputError(out_dir, f"is inside the source {src}; choose a folder outside it")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            info = read_corpus_info(out_dir)
            if info is not None and info.get("complete") is False:
                raise InputError(out_dir, "holds an unfinished corpus; rerun with --overwrite")
            raise InputError(
                out_dir, "is not empty; choose a new folder, or --overwrite an old corpus"
            )
        if not is_own_product(out_dir):
            raise InputError(
                out_dir,
                f"is not empty and holds no {CORPUS_FILE} nor only a stopped build's PNGs; "
                "refusing to delete it",
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _source_labels(sources: Sequence[Path]) -> list[str]:
    """A unique, readable name per source (its folder or file name, suffixed -2, ...)."""
    labels: list[str] = []
    for src in sources:
        resolved = src.resolve()
        name = (file_stem(resolved.name) if resolved.is_file() else resolved.name) or "source"
        label, n = name, 1
        while label in labels:
            n += 1
            label = f"{name}-{n}"
        labels.append(label)
    return labels


def _plain(counts: dict[str, Any]) -> dict[str, Any]:
    """Counters as sorted plain dicts, for JSON."""
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in counts.items()}


def _write_manifest(out_dir: Path, rows: list[dict[str, str]]) -> None:
    """manifest.csv with one row per PNG, columns ``MANIFEST_COLUMNS``; an input's name that is
    not UTF-8 is written as its own bytes (``MANIFEST_ERRORS``, read back the same way)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / CORPUS_MANIFEST, buffer.getvalue(), errors=MANIFEST_ERRORS)


def build_corpus_2d(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    size: int = 224,
    ct_windows: Sequence[str] = ("wide",),
    axis: str = "axial",
    modality: str = "unknown",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a 2D corpus of ``size``² 8-bit PNGs from 2D files and volumes (rules:
    docs/rules/corpus2d.md).

    Returns the summary also written to ``out_dir/corpus.json``.
    """
    start = time.perf_counter()
    paths = [Path(s) for s in sources]
    if not paths:
        raise InputError(None, "no sources given")
    if not isinstance(size, int) or size < 8:
        raise InputError(None, f"size must be an integer >= 8, got {size!r}")
    if axis not in AXES:
        raise InputError(None, f"unknown slice axis {axis!r}; expected one of {', '.join(AXES)}")
    try:
        windows = [parse_ct_window(w) for w in ct_windows]
    except ValueError as e:
        raise InputError(None, str(e)) from e
    if not windows:
        raise InputError(None, "no CT window given")
    for p in paths:
        if not p.exists():
            raise InputError(p, "no such file or folder")
    out = Path(out_dir)
    _prepare_out_dir(out, paths, overwrite)
    atomic_write_json(out / CORPUS_FILE, {"format": CORPUS_FORMAT, "complete": False})

    writer = _CorpusWriter(out, size, _ct_mappings(windows))
    per_source: dict[str, dict[str, Any]] = {}
    for src, label in zip(paths, _source_labels(paths), strict=True):
        per_source[label] = _process_source(src, label, axis, modality, writer, progress)

    totals = _new_counts(out)
    del totals["path"]
    for counts in per_source.values():
        for key, value in counts.items():
            if key != "path":
                totals[key] += value
    summary = {
        "format": CORPUS_FORMAT,
        "complete": True,
        "images": totals["images"],
        "totals": _plain(totals),
        "sources": {label: _plain(c) for label, c in per_source.items()},
        "settings": {
            "size": size,
            "axis": axis,
            "ct_windows": {name: [level, width] for name, level, width in windows},
            "modality_default": modality,
            "hu_detect_min": HU_DETECT_MIN,
            "volume_percentiles": list(VOLUME_PERCENTILES),
            "image_percentiles": [XRAY_NORMALIZATION["lower"], XRAY_NORMALIZATION["upper"]],
            "skip_rule": {
                "min_foreground_fraction": MIN_FOREGROUND,
                "ct_foreground_hu": CT_FOREGROUND_HU,
                "other_foreground_unit": UNIT_FOREGROUND,
            },
            "resize": "keep physical aspect, pad with the image minimum",
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    _write_manifest(out, writer.rows)
    atomic_write_json(out / CORPUS_FILE, summary)  # last: marks the corpus complete
    return summary
