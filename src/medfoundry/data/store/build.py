"""Build a preprocessed 3D store (``.npy`` volumes + ``store.json``) for fast random crops.

``prepare_store`` (CLI: ``medfoundry prepare``) takes an nnU-Net/MSD folder or a plain folder of
volumes (``medfoundry.data.store.cases``) and writes, per case, the volume resampled, normalised and
cropped to its foreground; bad input stops it with an ``InputError`` naming the file, and a
complete store built with the same settings is reused. Also exported here: ``open_store``,
``Store``, ``CropBatch`` (``data.store.reader``) and ``StoreCropDataset``.

Rules (axes, spacing, intensity, crop, storage, empty labels, skips, errors, reuse):
docs/rules/store3d.md.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medfoundry.data.corpus2d import HU_DETECT_MIN
from medfoundry.data.slicing import CT_FOREGROUND_HU, UNIT_FOREGROUND
from medfoundry.data.store.cases import Case3D, dataset_labels, find_cases, inputs_fingerprint
from medfoundry.data.store.dataset import StoreCropDataset
from medfoundry.data.store.files import check_store_files, file_check
from medfoundry.data.store.foreground import CROP_MARGIN
from medfoundry.data.store.preprocess import VolumeSettings, ct_range, preprocess_volume
from medfoundry.data.store.reader import (
    STORE_FILE,
    STORE_FORMAT,
    STORE_VERSION,
    CropBatch,
    Store,
    open_store,
)
from medfoundry.data.store.resample import grid_affine
from medfoundry.data.store.spacing import median_spacing, probe_spacing
from medfoundry.errors import InputError
from medfoundry.io import AXIS_ORDER, ImageData, read_image
from medfoundry.runtime import atomic_save, atomic_write_json

__all__ = ["CropBatch", "Store", "StoreCropDataset", "open_store", "prepare_store"]

IMAGE_DTYPE = np.float16
LABEL_DTYPE = np.uint8
#: Label voxels kept per case as centres of foreground crops (drawn uniformly).
MAX_FOREGROUND_VOXELS = 10_000
#: Largest difference (mm) allowed between an image's and its label's voxel->mm affines.
AFFINE_TOLERANCE = 1e-3


def _target(target_spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """A validated (D, H, W) target spacing, or None for the dataset median."""
    if target_spacing is None:
        return None
    values = [float(v) for v in target_spacing]
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(None, f"target spacing must be 3 positive mm values, got {target_spacing}")
    return values[0], values[1], values[2]


def _read_label(case: Case3D, image: ImageData, names: dict[int, str] | None) -> np.ndarray:
    """The case's label as a (D, H, W) uint8 map on its image's grid (checked)."""
    assert case.label is not None
    label = read_image(case.label, ndim=3)
    if label.spatial_shape != image.spatial_shape:
        raise InputError(
            case.label,
            f"label shape {label.spatial_shape} (D, H, W) differs from its image "
            f"{case.source} shape {image.spatial_shape}",
        )
    image_affine = np.asarray(image.meta["affine"], dtype=np.float64)
    label_affine = np.asarray(label.meta["affine"], dtype=np.float64)
    gap = float(np.abs(image_affine - label_affine).max())
    if gap > AFFINE_TOLERANCE:
        raise InputError(
            case.label,
            f"label geometry (voxel->mm affine) differs from its image {case.source} by up to "
            f"{gap:.4g} mm (spacing {tuple(round(s, 4) for s in label.spacing)} vs "
            f"{tuple(round(s, 4) for s in image.spacing)}); resample the label onto the image",
        )
    values = label.array[0]
    if not np.array_equal(values, np.round(values)) or values.min() < 0 or values.max() > 255:
        raise InputError(case.label, "label values must be integers in 0..255")
    out = values.astype(LABEL_DTYPE)
    if names is not None:
        extra = sorted(set(np.unique(out).tolist()) - set(names))
        if extra:
            raise InputError(
                case.label, f"label values {extra} are not in dataset.json labels {names}"
            )
    return out


def _save_npy(out: Path, name: str, array: np.ndarray, checks: dict[str, Any]) -> int:
    """Write ``array`` as ``out/name`` (.npy) atomically; record its size and checksum in
    ``checks`` (``files.file_check``); return the file size."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array))
        checks[name] = file_check(tmp)

    atomic_save(out / name, write)
    return int(checks[name]["bytes"])


def _foreground_voxels(label: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``MAX_FOREGROUND_VOXELS`` (K, 3) uint16 label voxels, drawn uniformly."""
    flat = np.flatnonzero(label)  # (K,)
    if flat.size > MAX_FOREGROUND_VOXELS:
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(flat, MAX_FOREGROUND_VOXELS, replace=False))
    voxels = np.stack(np.unravel_index(flat, label.shape), axis=1)  # (K, 3)
    return voxels.astype(np.uint16)  # indices < 65536: half the disk of int32


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the data folder when inside it (posix), else as given."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _process_case(
    case: Case3D,
    number: int,
    data: Path,
    out: Path,
    options: dict[str, Any],
    names: dict[int, str] | None,
) -> dict[str, Any]:
    """Read, normalise, resample, crop and write one case; return its record (or a skip)."""
    image = case.read()
    shape = image.spatial_shape
    if min(shape) < 2:
        raise InputError(
            case.source, f"has shape {shape} (D, H, W): a single slice, expected a 3D volume"
        )
    base = {"id": case.id, "split": case.split, "image": _relative(case.source, data)}
    base["label"] = None if case.label is None else _relative(case.label, data)
    label = None if case.label is None else _read_label(case, image, names)  # (D, H, W)
    done = preprocess_volume(image, options["volume"], label)
    if done is None:
        return base | {"skipped": "constant"}
    array, label, box = done.array, done.label, done.box  # cropped (d, h, w), [0, 1]
    modality, modality_from, intensity = done.modality, done.modality_from, done.intensity
    new_shape = done.inverse.resampled_shape
    affine = grid_affine(image.meta["affine"], shape, new_shape, box[:, 0])
    record = base | {
        "modality": modality,
        "modality_from": modality_from,
        "original_shape": list(shape),
        "original_spacing": [round(float(s), 6) for s in image.spacing],
        "resampled_shape": list(new_shape),
        "spacing": [
            round(n * s / m, 6) for n, s, m in zip(shape, image.spacing, new_shape, strict=True)
        ],
        "crop_box": box.tolist(),
        "shape": list(array.shape),
        "affine": np.round(affine, 6).tolist(),
        "intensity": intensity,
        "image_file": f"images/{case.id}.npy",
    }
    checks: dict[str, Any] = {}
    nbytes = _save_npy(out, record["image_file"], array.astype(IMAGE_DTYPE), checks)
    if label is not None:
        voxels = _foreground_voxels(label, seed=number)
        record |= {
            "label_file": f"labels/{case.id}.npy",
            "label_classes": sorted(int(v) for v in np.unique(label)),
            "empty_label": len(voxels) == 0,
            "foreground_voxels": int(np.count_nonzero(label)),
        }
        nbytes += _save_npy(out, record["label_file"], label, checks)
        if len(voxels):
            record["foreground_file"] = f"foreground/{case.id}.npy"
            nbytes += _save_npy(out, record["foreground_file"], voxels, checks)
    return record | {"bytes": nbytes, "file_checks": checks}


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the settings that differ between two stores."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _prepare_out_dir(
    out: Path, data: Path, settings: dict[str, Any], overwrite: bool
) -> dict[str, Any] | None:
    """Make ``out`` ready for a new store; return the old summary when it can be reused."""
    resolved, source = out.resolve(), data.resolve()
    if resolved == source or source in resolved.parents or resolved in source.parents:
        raise InputError(out, f"overlaps the data folder {data}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            old = json.loads((out / STORE_FILE).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("format") != STORE_FORMAT:
            raise InputError(out, f"is not empty and holds no {STORE_FILE}; refusing to use it")
        same, complete = old.get("settings") == settings, bool(old.get("complete"))
        if same and complete and not overwrite:
            check_store_files(out, old, checksum=True)  # a damaged store is never "up to date"
            return old
        if complete and not same and not overwrite:
            diff = ", ".join(_settings_diff(old.get("settings") or {}, settings))
            raise InputError(
                out,
                f"holds a different store (settings differ: {diff}); choose a new folder, "
                "or --overwrite to replace it",
            )
        shutil.rmtree(out)  # an unfinished store (a build that stopped), or --overwrite
    out.mkdir(parents=True, exist_ok=True)
    return None


def _warn_cases(records: list[dict[str, Any]], what: str, consequence: str) -> None:
    """One warning naming the cases in ``records`` (the first ten)."""
    if not records:
        return
    ids = ", ".join(r["id"] for r in records[:10]) + (", ..." if len(records) > 10 else "")
    warnings.warn(f"{len(records)} case(s) {what} ({ids}); {consequence}", stacklevel=3)


def prepare_store(
    data: str | Path,
    out_dir: str | Path,
    target_spacing: Sequence[float] | None = None,
    modality: str = "auto",
    ct_clip: Sequence[float] | str = (-1000.0, 1000.0),
    mr_percentiles: Sequence[float] = (0.5, 99.5),
    crop_foreground: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write a 3D store of the volumes under ``data`` to ``out_dir`` (rules: docs/rules/store3d.md).

    Returns the summary also written to ``out_dir/store.json``.
    """
    start = time.perf_counter()
    data_path, out = Path(data), Path(out_dir)
    target = _target(target_spacing)
    ct_hu = ct_range(ct_clip)
    lower, upper = (float(v) for v in mr_percentiles)
    if not 0.0 <= lower < upper <= 100.0:
        raise InputError(None, f"MR percentiles need 0 <= low < high <= 100, got {mr_percentiles}")
    modality_default = "unknown" if modality.lower() in ("auto", "unknown") else modality.upper()
    cases, layout = find_cases(data_path)
    names = dataset_labels(data_path) if layout == "msd" else None

    spacing_from = "given"
    if target is None:
        spacings = [
            probe_spacing(c) for c in tqdm(cases, desc="spacing", disable=not progress, leave=False)
        ]
        target, spacing_from = median_spacing(spacings), f"median of {len(cases)} images"
    settings: dict[str, Any] = {
        "data": str(data_path.resolve()),
        "layout": layout,
        "inputs_fingerprint": inputs_fingerprint(cases),
        "axis_order": AXIS_ORDER,
        "target_spacing": list(target),
        "modality": "auto" if modality_default == "unknown" else modality_default,
        "normalization": {
            "CT": {"name": "ct_clip", "hu": list(ct_hu), "to": [0.0, 1.0]},
            "other": {"name": "percentile_minmax", "lower": lower, "upper": upper, "to": [0, 1]},
            "ct_detect_min_hu": HU_DETECT_MIN,
        },
        "resampling": {"image": "trilinear", "label": "nearest", "keeps": "physical extent"},
        "crop_foreground": bool(crop_foreground),
        "crop_margin": CROP_MARGIN,
        "foreground": {"ct_hu": CT_FOREGROUND_HU, "other_unit": UNIT_FOREGROUND},
        "image_dtype": np.dtype(IMAGE_DTYPE).name,
        "label_dtype": np.dtype(LABEL_DTYPE).name,
        "padding": 0.0,
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from store.json
    reused = _prepare_out_dir(out, data_path, settings, overwrite)
    if reused is not None:
        return reused | {"reused": True}
    header = {"format": STORE_FORMAT, "version": STORE_VERSION, "complete": False}
    atomic_write_json(out / STORE_FILE, header | {"settings": settings})

    options = {
        "volume": VolumeSettings(
            target_spacing=target,
            modality_default=modality_default,
            ct_range=ct_hu,
            mr_percentiles=(lower, upper),
            crop_foreground=bool(crop_foreground),
        )
    }
    records, skipped = [], []
    for number, case in enumerate(tqdm(cases, desc="prepare", disable=not progress)):
        record = _process_case(case, number, data_path, out, options, names)
        (skipped if "skipped" in record else records).append(record)
    if not records:
        raise InputError(data_path, f"every volume was skipped ({len(skipped)} constant volumes)")
    empty = [r for r in records if r.get("empty_label")]
    _warn_cases(empty, "with an empty label kept", "their foreground crops are random crops")
    _warn_cases(skipped, "skipped: constant volume", "they are not in the store")

    classes = sorted({v for r in records for v in r.get("label_classes", [])})
    summary = header | {
        "complete": True,
        "settings": settings,
        "target_spacing_from": spacing_from,
        "labels": {str(k): v for k, v in names.items()} if names else None,
        "counts": {
            "cases": len(records),
            "labeled": sum("label_file" in r for r in records),
            "empty_labels": len(empty),
            "skipped": len(skipped),
            "by_modality": dict(sorted(Counter(r["modality"] for r in records).items())),
            "by_split": dict(sorted(Counter(r["split"] for r in records).items())),
            "label_classes": classes,
        },
        "bytes": sum(r["bytes"] for r in records),
        "seconds": round(time.perf_counter() - start, 2),
        "cases": records,
        "skipped": skipped,
    }
    atomic_write_json(out / STORE_FILE, summary)
    return summary
