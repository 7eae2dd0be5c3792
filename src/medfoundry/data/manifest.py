"""Find the image files of a data set: plain folders, class folders, CSV lists, segmentation sets.

Nothing here decodes pixels; these functions only list files and check that the expected
files exist, with an ``InputError`` naming the missing file or folder otherwise.

Layouts:

- any folder of images (``scan_images``), hidden files and dot-folders skipped;
- ``root/<CLASS>/<images>`` for classification (``scan_class_folders``), one class per folder;
- a CSV with an ``image`` column, optional ``label``/``mask``/``group`` (``read_csv_manifest``);
- ``root/images/<ID>.<ext>`` + ``root/masks/<structure>/<ID>.<ext>`` (+ optional ``ids.txt``)
  for segmentation (``scan_segmentation_folder``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from medfoundry.errors import InputError
from medfoundry.io.dicom import DICOM_EXTENSIONS, has_dicom_preamble
from medfoundry.io.raster import RASTER_EXTENSIONS

#: Lower-case suffixes that ``medfoundry.io.read_image`` reads.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(RASTER_EXTENSIONS | DICOM_EXTENSIONS)

_EXT_LIST = ", ".join(sorted(IMAGE_EXTENSIONS))


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _uid_like(path: Path) -> bool:
    """No extension, or a numeric "suffix" (named by a DICOM UID: ``CT.1.3.12.2.16573``)."""
    return not path.name.startswith(".") and (path.suffix == "" or path.suffix[1:].isdigit())


def _is_image_file(path: Path) -> bool:
    """By extension; a file without one, or named by a DICOM UID, counts when it is DICOM
    (scanner exports often are)."""
    if _is_image_name(path.name):
        return True
    return _uid_like(path) and has_dicom_preamble(path)


def _with_empty_dicom_siblings(found: list[Path], folder: Path, names: list[str]) -> list[Path]:
    """``found`` plus the empty (0-byte) files named like its extensionless DICOM files: a
    damaged export, reported by the reader (naming the file) instead of skipped silently."""
    if not any(_uid_like(p) for p in found):
        return found
    empty = [
        folder / n
        for n in names
        if _uid_like(folder / n) and (folder / n).is_file() and (folder / n).stat().st_size == 0
    ]
    return found + [p for p in empty if p not in found]


def _no_images(folder: str | Path, why: str = "") -> InputError:
    prefix = f"{why}; " if why else ""
    return InputError(folder, f"{prefix}no image files found (looked for {_EXT_LIST})")


def scan_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Sorted image files in ``folder`` (by extension, see ``IMAGE_EXTENSIONS``, or DICOM
    files without an extension).

    Hidden files and folders (names starting with ".") are skipped. Raises ``InputError`` when
    the folder does not exist, is not a folder, or holds no image files.
    """
    root = Path(folder)
    if not root.exists():
        raise _no_images(folder, "folder does not exist")
    if not root.is_dir():
        raise _no_images(folder, "not a folder")
    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath)
            here = [base / f for f in filenames if _is_image_file(base / f)]
            found.extend(_with_empty_dicom_siblings(here, base, filenames))
    else:
        here = [p for p in root.iterdir() if p.is_file() and _is_image_file(p)]
        found = _with_empty_dicom_siblings(here, root, [p.name for p in root.iterdir()])
    found = sorted(p for p in found if p.is_file())
    if not found:
        raise _no_images(folder)
    return found


@dataclass
class ClassificationItem:
    """One labelled image: ``label`` indexes the class list, ``group`` is the patient id."""

    path: Path
    label: int
    group: str


_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM_SERIES = re.compile(r"^(.*?IM-\d+)(?:-\d+)+$", re.IGNORECASE)


def patient_id_from_name(path: str | Path) -> str:
    """Patient id from a file name, for patient-level splits: the default rule of
    ``scan_class_folders``, which the generic commands (``finetune --task classification``,
    the demo, the pretraining probe) group patients with; a data set with another naming
    passes its own rule there.

    Kermany chest X-ray names (the demo's data): ``person1000_bacteria_2931.jpg`` ->
    ``person1000``, ``IM-0115-0001.jpg`` -> ``IM-0115``, ``IM-0429-0001-0002.jpg`` ->
    ``IM-0429``, ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427``. Any other name: its stem.
    """
    stem = Path(path).stem
    for pattern in (_PERSON, _IM_SERIES):
        m = pattern.match(stem)
        if m:
            return m.group(1)
    return stem


def scan_class_folders(
    root: str | Path, patient_id: Callable[[Path], str] = patient_id_from_name
) -> tuple[list[ClassificationItem], list[str]]:
    """Items of a ``root/<CLASS>/<images>`` tree and the sorted class names.

    Labels index the sorted class names; an item's ``group`` is ``patient_id(path)`` (default:
    ``patient_id_from_name``). Images are searched recursively inside each class folder.
    Raises ``InputError`` when there are fewer than 2 class folders or a class folder holds no
    images.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(root, "not a folder (expected root/<CLASS>/<images>)")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = ", ".join(classes) if classes else "none"
        raise InputError(
            root,
            f"expected at least 2 class folders (root/<CLASS>/<images>, e.g. NORMAL/ and "
            f"PNEUMONIA/), found {len(classes)} ({found})",
        )
    items: list[ClassificationItem] = []
    for label, name in enumerate(classes):
        try:
            files = scan_images(base / name)
        except InputError as e:
            raise InputError(base / name, f"class {name!r} is empty: {e.problem}") from e
        items.extend(ClassificationItem(path=f, label=label, group=patient_id(f)) for f in files)
    return items, classes


def read_csv_manifest(csv_path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV manifest with resolved file paths.

    The CSV needs a header with an ``image`` column; ``label``, ``mask`` and ``group`` are
    optional and other columns are kept. ``image`` and non-empty ``mask`` values may be absolute
    or relative to the CSV's folder; they are returned as absolute paths (strings) and must exist.
    Raises ``InputError`` naming the CSV and the row for any problem.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise InputError(csv_path, "CSV manifest not found")
    base = path.absolute().parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if not header:
                raise InputError(
                    csv_path, "empty CSV: expected a header row with an 'image' column"
                )
            if "image" not in header:
                raise InputError(
                    csv_path,
                    f"missing required column 'image' (columns: {', '.join(header)})",
                )
            reader.fieldnames = header
            rows: list[dict[str, str]] = []
            for number, raw in enumerate(reader, start=1):
                where = f"row {number} (line {reader.line_num})"
                if None in raw:
                    raise InputError(csv_path, f"{where}: more fields than header columns")
                row = {k: (v or "").strip() for k, v in raw.items()}
                if not row["image"]:
                    raise InputError(csv_path, f"{where}: empty 'image' value")
                for column in ("image", "mask"):
                    value = row.get(column, "")
                    if not value:
                        continue
                    file = Path(value).expanduser()
                    file = file if file.is_absolute() else base / file
                    if not file.is_file():
                        raise InputError(csv_path, f"{where}: {column} file not found: {file}")
                    row[column] = str(file)
                rows.append(row)
    except UnicodeDecodeError as e:
        raise InputError(csv_path, f"not a UTF-8 text CSV: {e}") from e
    except csv.Error as e:
        raise InputError(csv_path, f"malformed CSV: {e}") from e
    if not rows:
        raise InputError(csv_path, "CSV has a header but no rows")
    return rows


@dataclass
class SegmentationItem:
    """One image with its masks: structure name -> mask file."""

    id: str
    image: Path
    masks: dict[str, Path]


def _index_by_stem(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder``, keyed by stem; two files with one stem is an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not (_is_image_name(p.name) and p.is_file()):
            continue
        if p.stem in out:
            raise InputError(
                p, f"ambiguous: both {out[p.stem].name} and {p.name} have ID {p.stem!r}"
            )
        out[p.stem] = p
    return out


def _read_ids(ids_file: Path) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for n, line in enumerate(ids_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        value = line.strip()
        if not value or value.startswith("#"):
            continue
        if value in seen:
            raise InputError(ids_file, f"line {n}: ID {value!r} listed twice")
        seen.add(value)
        ids.append(value)
    if not ids:
        raise InputError(ids_file, "lists no IDs")
    return ids


def scan_segmentation_folder(
    root: str | Path, structures: Sequence[str] | None = None
) -> list[SegmentationItem]:
    """Items of a ``root/images/<ID>.<ext>`` + ``root/masks/<structure>/<ID>.<ext>`` set.

    ``root/ids.txt`` (one ID per line), when present, gives the order and the subset; otherwise
    all images, sorted by ID. ``structures=None`` takes every subfolder of ``masks/`` (sorted).
    Raises ``InputError`` when ``images/`` is missing or empty, a structure folder is missing,
    or an ID lacks its image or a mask (naming the missing file). Pixels are not read.
    """
    base = Path(root)
    if not base.is_dir():
        raise InputError(root, "not a folder (expected root/images/ and root/masks/<structure>/)")
    images_dir = base / "images"
    if not images_dir.is_dir():
        raise InputError(images_dir, "images folder not found (expected root/images/<ID>.<ext>)")
    images = _index_by_stem(images_dir)
    if not images:
        raise _no_images(images_dir)

    masks_dir = base / "masks"
    if structures is None:
        if not masks_dir.is_dir():
            raise InputError(masks_dir, "masks folder not found (expected root/masks/<structure>/)")
        names = sorted(
            p.name for p in masks_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not names:
            raise InputError(masks_dir, "no structure folders (expected masks/<structure>/)")
    else:
        names = list(structures)
        if not names:
            raise InputError(root, "no structures requested")
    mask_index: dict[str, dict[str, Path]] = {}
    for name in names:
        folder = masks_dir / name
        if not folder.is_dir():
            available = (
                sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
                if masks_dir.is_dir()
                else []
            )
            raise InputError(
                folder,
                f"mask folder for structure {name!r} not found "
                f"(available: {', '.join(available) or 'none'})",
            )
        mask_index[name] = _index_by_stem(folder)

    ids_file = base / "ids.txt"
    if ids_file.is_file():
        ids = _read_ids(ids_file)
    else:
        ids = sorted(images)

    items: list[SegmentationItem] = []
    for item_id in ids:
        image = images.get(item_id)
        if image is None:
            raise InputError(
                images_dir / f"{item_id}.<ext>",
                f"image for ID {item_id!r} (listed in {ids_file.name}) not found",
            )
        masks: dict[str, Path] = {}
        for name in names:
            mask = mask_index[name].get(item_id)
            if mask is None:
                raise InputError(
                    masks_dir / name / f"{item_id}{image.suffix}",
                    f"missing mask for ID {item_id!r}, structure {name!r}",
                )
            masks[name] = mask
        items.append(SegmentationItem(id=item_id, image=image, masks=masks))
    return items
