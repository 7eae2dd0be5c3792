"""Find the cases of a 3D dataset: the nnU-Net/MSD layout, or a plain folder of volumes.

Layouts (``find_cases``):

- **nnU-Net/MSD**: a folder with ``imagesTr/`` (and/or ``imagesTs/``), ``labelsTr/`` and
  optionally ``dataset.json``. Every volume file in ``imagesTr/`` is a labeled case; its label
  is the file of ``labelsTr/`` with the same name stem (MSD: ``x.nii.gz`` <-> ``x.nii.gz``), or
  the stem without nnU-Net's channel suffix (``x_0000.nii.gz`` <-> ``x.nii.gz``). A training
  image without a label, and a case with several channel files, are ``InputError``s. Every
  volume file in ``imagesTs/`` is an unlabeled case. Label names come from ``dataset.json``
  (``labels``, MSD ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` form).
- **Plain folder**: searched recursively (``medfoundry.data.discover``): every volume file
  (NIfTI, NRRD/MHA/MHD) and every DICOM series folder is an unlabeled case.

Hidden files (names starting with ".", e.g. macOS ``._x.nii.gz``) are skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medfoundry.data.discover import file_stem, find_inputs
from medfoundry.errors import InputError
from medfoundry.io import ImageData, read_dicom_series, read_image
from medfoundry.io.registry import reader_for_name

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case3D:
    """One volume to prepare: its image (a file or a DICOM series' files), optional label."""

    id: str
    kind: str  # "file" or "dicom_series"
    paths: list[Path]  # the image file, or the files of one DICOM series
    label: Path | None
    split: str  # "train" (imagesTr), "test" (imagesTs) or "unlabeled" (plain folder)

    @property
    def source(self) -> Path:
        """The image file, or the folder of a DICOM series."""
        return self.paths[0].parent if self.kind == "dicom_series" else self.paths[0]

    def read(self) -> ImageData:
        """Decode the image as a 3D volume (``InputError`` naming the file otherwise)."""
        if self.kind == "dicom_series":
            return read_dicom_series(self.paths)
        return read_image(self.paths[0], ndim=3)


def is_msd_layout(data: Path) -> bool:
    """Whether ``data`` follows the nnU-Net/MSD layout (has imagesTr/ or imagesTs/)."""
    return (data / "imagesTr").is_dir() or (data / "imagesTs").is_dir()


def _volume_files(folder: Path) -> dict[str, Path]:
    """Readable files directly in ``folder``, by name stem (hidden files skipped)."""
    if not folder.is_dir():
        return {}
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or reader_for_name(path.name) is None:
            continue
        files[file_stem(path.name)] = path
    return files


def _msd_cases(data: Path) -> list[Case3D]:
    """Labeled cases of imagesTr/ + labelsTr/, then unlabeled ones of imagesTs/."""
    labels = _volume_files(data / "labelsTr")
    by_case: dict[str, list[Path]] = {}
    for stem, path in _volume_files(data / "imagesTr").items():
        match = _CHANNEL_SUFFIX.match(stem)
        if stem not in labels and match and match["case"] in labels:
            stem = match["case"]
        if stem not in labels:
            raise InputError(path, f"training image without a label in {data / 'labelsTr'}")
        by_case.setdefault(stem, []).append(path)
    cases = []
    for case_id, paths in by_case.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputError(
                paths[0].parent,
                f"case {case_id!r} has {len(paths)} channel files ({names}); the 3D store "
                "holds one channel per case",
            )
        cases.append(Case3D(case_id, "file", paths, labels[case_id], "train"))
    for stem, path in _volume_files(data / "imagesTs").items():
        cases.append(Case3D(stem, "file", [path], None, "test"))
    return cases


def _folder_cases(data: Path) -> list[Case3D]:
    """One unlabeled case per volume file or DICOM series under ``data`` (recursive)."""
    inputs, _ = find_inputs(data)
    cases = []
    for item in inputs:
        parts = [*item.rel_dir.parts, item.name]
        case_id = "_".join(p for p in parts if p not in ("", "."))
        cases.append(Case3D(case_id or item.name, item.kind, item.paths, None, "unlabeled"))
    return cases


def _unique_ids(cases: list[Case3D]) -> None:
    """Make case ids safe file names and unique (suffix -2, -3, ... on collisions)."""
    seen: set[str] = set()
    for case in cases:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in case.id) or "case"
        name, n = safe, 1
        while name in seen:
            n += 1
            name = f"{safe}-{n}"
        seen.add(name)
        case.id = name


def find_cases(data: str | Path) -> tuple[list[Case3D], str]:
    """The cases under ``data`` and the layout name ("msd" or "folder"); ``InputError`` when
    the folder does not exist or holds no volume."""
    root = Path(data)
    if not root.is_dir():
        raise InputError(root, "no such folder")
    layout = "msd" if is_msd_layout(root) else "folder"
    cases = _msd_cases(root) if layout == "msd" else _folder_cases(root)
    if not cases:
        where = "imagesTr/ or imagesTs/" if layout == "msd" else "the folder (searched recursively)"
        raise InputError(
            root,
            f"no volumes found in {where}: expected NIfTI, NRRD/MHA/MHD files or DICOM series",
        )
    _unique_ids(cases)
    return cases, layout


def dataset_labels(data: str | Path) -> dict[int, str] | None:
    """Label value -> name from ``dataset.json`` (None when absent or without ``labels``)."""
    path = Path(data) / "dataset.json"
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text()).get("labels")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not a readable dataset.json: {e}") from e
    if not isinstance(raw, dict) or not raw:
        return None
    out: dict[int, str] = {}
    for key, value in raw.items():
        if str(key).isdigit():  # MSD: {"0": "background"}
            out[int(key)] = str(value)
        elif isinstance(value, int) and not isinstance(value, bool):  # nnU-Net v2
            out[value] = str(key)
        # nnU-Net v2 regions ({"whole tumor": [1, 2, 3]}) name unions of values: skipped
    return dict(sorted(out.items())) or None


def inputs_fingerprint(cases: list[Case3D]) -> str:
    """A hash of every input file's path, size and modification time (detects changed data);
    a path that is not UTF-8 enters as its own bytes (``os.fsencode``)."""
    digest = hashlib.sha1()
    for case in cases:
        for path in [*case.paths, *([case.label] if case.label else [])]:
            stat = path.stat()
            digest.update(f"{case.id}|".encode() + os.fsencode(path))
            digest.update(f"|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
