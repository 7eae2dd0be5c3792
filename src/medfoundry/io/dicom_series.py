"""A DICOM series (one single-slice file per slice, e.g. a CT or MR scan) as one 3D volume.

Rules:

- The files are those directly in the folder that are DICOM (``.dcm``/``.dicom`` suffix, or the
  ``DICM`` preamble); hidden files and ``DICOMDIR`` are skipped. All must share one
  SeriesInstanceUID (an empty UID counts as one value), else an ``InputError`` naming the folder.
- **Damaged slices**: a file beside the slices that looks like one of them (their suffix, none,
  or a DICOM-UID name such as ``1.2.840.5``) but is not DICOM (zero bytes, no ``DICM`` header:
  an interrupted copy) is an ``InputError`` naming that file, never dropped silently; so is a
  slice that does not decode (truncated), before the slices are compared with each other.
- Each slice is decoded by ``dataset_to_image`` (``medfoundry.io.dicom``): its own Rescale
  Slope/Intercept is applied, so CT comes out in HU; a CT slice without them is an error.
- Slices are sorted by ImagePositionPatient projected on the slice normal (row x column
  direction of ImageOrientationPatient). All slices must share orientation, size and pixel
  spacing. The slice spacing is the median gap between sorted positions; a gap that differs
  from it by more than 10% (missing slices) or a repeated position is an ``InputError``.
- Spacing (D, H, W): slice spacing, then PixelSpacing (row spacing, column spacing). A
  one-slice series uses SpacingBetweenSlices, else SliceThickness, else 1 mm.
- The grid is flipped/transposed to the package's (D, H, W) convention
  (``medfoundry.io.orientation``); ``meta["affine"]`` maps (d, h, w, 1) to LPS mm.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medfoundry.errors import InputError
from medfoundry.io.dicom import (
    DICOM_EXTENSIONS,
    dataset_to_image,
    has_dicom_preamble,
    normalize_modality,
    read_dicom_dataset,
)
from medfoundry.io.image import ImageData
from medfoundry.io.orientation import AXIS_ORDER, axis_codes, to_canonical

#: A gap between sorted slice positions may differ this much (relative) from the median gap.
GAP_TOLERANCE = 0.10


def is_dicom_file(path: Path) -> bool:
    """True for a non-hidden file with a DICOM suffix or the ``DICM`` preamble (not DICOMDIR)."""
    name = path.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or not path.is_file():
        return False
    return path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_preamble(path)


def dicom_files_in(folder: str | Path) -> list[Path]:
    """Sorted DICOM files directly inside ``folder`` (not recursive); a damaged slice beside
    them is an ``InputError`` naming it (``check_damaged_slices``)."""
    root = Path(folder)
    files = sorted(p for p in root.iterdir() if is_dicom_file(p))
    if files:
        check_damaged_slices(root, files)
    return files


_UID_NAME = re.compile(r"\d+(\.\d+)+")  # a file named by its SOP Instance UID


def _looks_like_slice(path: Path, suffixes: set[str]) -> bool:
    """A visible file named like the series' slices: their suffix, or a DICOM-UID name."""
    name = path.name
    if name.startswith(".") or name.upper() == "DICOMDIR" or not path.is_file():
        return False
    return path.suffix.lower() in suffixes or bool(_UID_NAME.fullmatch(name))


def check_damaged_slices(folder: Path, files: Sequence[Path]) -> None:
    """Raise an ``InputError`` naming the first file in ``folder`` that is named like the DICOM
    ``files`` but is not DICOM itself (zero bytes, or no ``DICM`` header): a damaged slice
    would otherwise be left out, leaving a gap (or a shorter volume) without a word."""
    known = set(files)
    suffixes = {f.suffix.lower() for f in files}
    for path in sorted(folder.iterdir()):
        if path in known or not _looks_like_slice(path, suffixes) or is_dicom_file(path):
            continue
        size = path.stat().st_size
        what = (
            "empty file (0 bytes)"
            if size == 0
            else f"not a DICOM file ({size} bytes, no DICM header)"
        )
        raise InputError(
            path,
            f"{what} among the {len(files)} slices of the DICOM series in {folder}: a damaged "
            "or incompletely copied slice; copy it again or remove it",
        )


def _floats(ds: pydicom.Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    """A multi-valued numeric tag as ``n`` finite floats, else an ``InputError``."""
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (n,) or not np.isfinite(out).all():
        raise InputError(path, f"missing or invalid {keyword}: cannot place the slice in a volume")
    return out


def _common_folder(files: Sequence[Path]) -> Path:
    """The folder that holds the files (their common parent), for error messages."""
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def _check_same(values: list[Any], what: str, folder: Path, files: Sequence[Path]) -> None:
    """Raise an ``InputError`` naming the folder when one slice's value differs from the first."""
    first = values[0]
    for value, f in zip(values, files, strict=True):
        if not np.allclose(value, first, atol=1e-4):
            raise InputError(
                folder, f"slices differ in {what}: {files[0].name} {first}, {f.name} {value}"
            )


def _sort_and_spacing(
    positions: np.ndarray, normal: np.ndarray, folder: Path, files: Sequence[Path]
) -> tuple[np.ndarray, float | None]:
    """Order of the slices along the normal, and the median gap (None for one slice)."""
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(order) < 2:
        return order, None
    sorted_along = along[order]
    gaps = np.diff(sorted_along)
    step = float(np.median(gaps))
    tiny = gaps < max(1e-3, 1e-3 * abs(step))
    if tiny.any():
        i = int(np.argmax(tiny))
        a, b = files[order[i]].name, files[order[i + 1]].name
        raise InputError(
            folder,
            f"two slices at the same position {sorted_along[i]:.3f} mm ({a}, {b}): "
            "duplicated files or several acquisitions in one series",
        )
    off = np.abs(gaps - step) > GAP_TOLERANCE * step
    if off.any():
        i = int(np.argmax(off))
        raise InputError(
            folder,
            f"irregular slice positions: gap of {gaps[i]:.3f} mm between "
            f"{files[order[i]].name} and {files[order[i + 1]].name} where the series spacing is "
            f"{step:.3f} mm (missing slices?)",
        )
    return order, step


def _number(value: Any) -> float | None:
    """A DS tag value as a float, None when absent or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _one_slice_thickness(ds: pydicom.Dataset) -> float:
    """Slice extent for a one-slice series: SpacingBetweenSlices, SliceThickness, else 1 mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value) and value > 0:
            return value
    return 1.0


def read_dicom_series(source: str | Path | Sequence[str | Path]) -> ImageData:
    """Read a DICOM series (a folder, or a list of its files) into a (1, D, H, W) ``ImageData``."""
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(folder, "not a folder (expected a DICOM series folder)")
        files = dicom_files_in(folder)
        if not files:
            raise InputError(folder, "no DICOM files in the folder (expected a DICOM series)")
    else:
        files = sorted(Path(f) for f in source)
        if not files:
            raise InputError(None, "no DICOM files given")
        folder = _common_folder(files)
        for parent in sorted({f.parent for f in files}):
            check_damaged_slices(parent, [f for f in files if f.parent == parent])

    datasets = [read_dicom_dataset(f) for f in files]
    # decode first: a truncated slice is an error naming it, not a "mixed series" of its folder
    slices = [dataset_to_image(ds, f) for ds, f in zip(datasets, files, strict=True)]
    uids = sorted({str(ds.get("SeriesInstanceUID") or "") for ds in datasets})
    if len(uids) > 1:
        shown = ", ".join(u or "(empty)" for u in uids[:3]) + (", ..." if len(uids) > 3 else "")
        raise InputError(
            folder,
            f"mixed DICOM series: {len(uids)} different SeriesInstanceUIDs ({shown}); "
            "expected one series per folder",
        )
    for image, f in zip(slices, files, strict=True):
        if image.channels != 1:
            raise InputError(f, f"{image.channels}-channel slice; a volume needs grayscale slices")

    pairs = list(zip(datasets, files, strict=True))
    orientations = [_floats(ds, "ImageOrientationPatient", 6, f) for ds, f in pairs]
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, f) for ds, f in pairs])
    _check_same(orientations, "ImageOrientationPatient", folder, files)
    _check_same([im.spatial_shape for im in slices], "size (rows, columns)", folder, files)
    _check_same([im.spacing for im in slices], "PixelSpacing", folder, files)

    row_dir, col_dir = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row_dir, col_dir)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InputError(files[0], "ImageOrientationPatient is not two orthogonal unit vectors")
    order, step = _sort_and_spacing(positions, normal, folder, files)

    row_spacing, col_spacing = slices[0].spacing
    affine = np.eye(4)
    affine[:3, 0] = row_dir * col_spacing  # i: along a row (column index)
    affine[:3, 1] = col_dir * row_spacing  # j: down a column (row index)
    if step is None:
        affine[:3, 2] = normal * _one_slice_thickness(datasets[0])
    else:
        affine[:3, 2] = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    affine[:3, 3] = positions[order[0]]

    stack = np.stack([slices[i].array[0] for i in order])  # (k, j, i)
    array, affine_dhw, spacing = to_canonical(stack.transpose(2, 1, 0), affine)
    if step is not None:  # spacing along the normal, not the (tilted) step vector
        d_axis = int(np.argmax(np.abs(affine_dhw[:3, :3].T @ normal)))
        spacing = tuple(step if a == d_axis else s for a, s in enumerate(spacing))

    first = datasets[order[0]]
    meta: dict[str, Any] = {
        "format": "DICOM series",
        "affine": affine_dhw.tolist(),
        "axis_order": AXIS_ORDER,
        "original_orientation": axis_codes(affine),
        "n_files": len(files),
        "series_instance_uid": uids[0] or None,
        "modality_tag": str(first.get("Modality") or "") or None,
        "slice_thickness": _number(first.get("SliceThickness")),
        "modality_lut": slices[order[0]].meta.get("modality_lut"),
        "spacing_known": True,
        "value_range": None,
    }
    return ImageData(
        array=array[None],
        spacing=tuple(float(s) for s in spacing),
        modality=normalize_modality(first.get("Modality")),
        source=str(source if isinstance(source, str | Path) else folder),
        meta=meta,
    )
