"""Find the inputs of a corpus under a folder: 2D image files, volume files, DICOM series.

A DICOM file is a slice of a series when its Modality is cross-sectional (anything but a
projection radiograph, XR/MG) and it has ImagePositionPatient and ImageOrientationPatient; the
slices of one folder are grouped by SeriesInstanceUID, each group being one volume (a folder of
N CT slices is one volume, not N images). Every other DICOM file is a 2D image. Files with
a suffix that ``medfoundry.io.read_image`` knows are inputs; other files are counted as ignored.
Hidden files and folders (names starting with ".") and DICOMDIR are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medfoundry.errors import InputError
from medfoundry.io.dicom import DICOM_EXTENSIONS, normalize_modality, read_dicom_dataset
from medfoundry.io.dicom_series import is_dicom_file
from medfoundry.io.registry import reader_for_name, supported_extensions

_PROJECTION = frozenset({"XR", "MG"})


@dataclass
class CorpusInput:
    """One input: a file (2D image or volume) or the files of one DICOM series."""

    kind: str  # "file" or "dicom_series"
    paths: list[Path]
    rel_dir: Path  # folder of the input relative to the source root
    name: str  # stem for output names
    meta: dict = field(default_factory=dict)


def file_stem(name: str) -> str:
    """File name without its (possibly double) image suffix: a.nii.gz -> a."""
    lower = name.lower()
    for suffix in sorted(supported_extensions(), key=len, reverse=True):
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _is_slice(path: Path) -> tuple[bool, str]:
    """Whether a DICOM file is a slice of a cross-sectional series, and its SeriesInstanceUID."""
    ds = read_dicom_dataset(path, stop_before_pixels=True)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    placed = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    cross = normalize_modality(ds.get("Modality")) not in _PROJECTION
    return placed and cross and frames == 1, str(ds.get("SeriesInstanceUID") or "")


def _folder_inputs(folder: Path, rel_dir: Path, names: list[str]) -> tuple[list[CorpusInput], int]:
    """The inputs among the files ``names`` directly in ``folder``, and the ignored count."""
    inputs: list[CorpusInput] = []
    series: dict[str, list[Path]] = {}
    ignored = 0
    for name in names:
        path = folder / name
        if name.startswith(".") or name.upper() == "DICOMDIR" or not path.is_file():
            continue
        if reader_for_name(name) is not None and path.suffix.lower() not in DICOM_EXTENSIONS:
            inputs.append(CorpusInput("file", [path], rel_dir, file_stem(name)))
        elif is_dicom_file(path):
            is_slice, uid = _is_slice(path)
            if is_slice:
                series.setdefault(uid, []).append(path)
            else:
                inputs.append(CorpusInput("file", [path], rel_dir, file_stem(name)))
        else:
            ignored += 1
    for k, (uid, files) in enumerate(sorted(series.items())):
        name = folder.name if len(series) == 1 else f"{folder.name}_series{k + 1}"
        inputs.append(
            CorpusInput("dicom_series", sorted(files), rel_dir.parent, name, {"uid": uid})
        )
    return inputs, ignored


def find_inputs(source: str | Path) -> tuple[list[CorpusInput], int]:
    """All corpus inputs under ``source`` (a folder, searched recursively, or one file), and
    the number of ignored files. Raises ``InputError`` when it does not exist."""
    root = Path(source)
    if root.is_file():
        return _folder_inputs(root.parent, Path(), [root.name])
    if not root.is_dir():
        raise InputError(source, "no such file or folder")
    inputs: list[CorpusInput] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        found, skipped = _folder_inputs(folder, folder.relative_to(root), sorted(filenames))
        inputs.extend(found)
        ignored += skipped
    return inputs, ignored
