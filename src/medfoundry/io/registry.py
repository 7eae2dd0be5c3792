"""Pick a reader for a path: a folder is a DICOM series; a file goes by its (longest) suffix,
else by content (the DICOM 'DICM' header)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medfoundry.errors import InputError
from medfoundry.io.dicom import DICOM_EXTENSIONS, has_dicom_preamble, read_dicom
from medfoundry.io.dicom_series import dicom_files_in, read_dicom_series
from medfoundry.io.image import ImageData
from medfoundry.io.itk import ITK_EXTENSIONS, read_itk
from medfoundry.io.nifti import NIFTI_EXTENSIONS, read_nifti
from medfoundry.io.raster import RASTER_EXTENSIONS, read_raster

Reader = Callable[[str | Path], ImageData]

_READERS: dict[str, Reader] = {}


def register_reader(suffixes: tuple[str, ...] | list[str] | frozenset[str], reader: Reader) -> None:
    """Route files with these (lower-case, dotted) suffixes to ``reader``."""
    for suffix in suffixes:
        _READERS[suffix.lower()] = reader


register_reader(RASTER_EXTENSIONS, read_raster)
register_reader(DICOM_EXTENSIONS, read_dicom)
register_reader(NIFTI_EXTENSIONS, read_nifti)
register_reader(ITK_EXTENSIONS, read_itk)


def supported_extensions() -> frozenset[str]:
    """All suffixes ``read_image`` dispatches on (lower case, with the dot, e.g. ".nii.gz")."""
    return frozenset(_READERS)


def reader_for_name(name: str) -> Reader | None:
    """The reader registered for the longest suffix that ``name`` ends with, if any."""
    lower = name.lower()
    matches = [s for s in _READERS if lower.endswith(s) and len(lower) > len(s)]
    return _READERS[max(matches, key=len)] if matches else None


def _read_folder(path: str | Path) -> ImageData:
    """A folder is read as one DICOM series."""
    p = Path(path)
    if not dicom_files_in(p):
        raise InputError(
            p, "is a folder without DICOM files; expected an image file or a DICOM series folder"
        )
    return read_dicom_series(p)


def read_image(path: str | Path, ndim: int | None = None) -> ImageData:
    """Read an image file, a volume file or a DICOM series folder into ``ImageData``.

    2D: PNG, JPEG, BMP, TIFF, single-frame DICOM -> (C, H, W). 3D: NIfTI, NRRD/MHA/MHD, a
    folder holding one DICOM series -> (1, D, H, W) (axis convention in ``medfoundry.io.image``).
    A file with an unknown suffix (or none) is read as DICOM when it starts with the DICOM
    preamble (``DICM`` at byte 128), as scanner exports often do. ``ndim`` (2 or 3), when
    given, is the number of spatial axes the caller expects; any other is an ``InputError``.
    Every failure is an ``InputError`` naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, "file not found")
    if p.is_dir():
        reader: Reader | None = _read_folder
    elif p.stat().st_size == 0:  # before the suffix: an empty DICOM export has none
        raise InputError(path, "empty file (0 bytes): damaged or incompletely copied")
    else:
        reader = reader_for_name(p.name)
    if reader is None:
        if has_dicom_preamble(p):
            reader = read_dicom
        else:
            supported = ", ".join(sorted(_READERS))
            raise InputError(
                path,
                f"unknown image extension {p.suffix or '(none)'!r} "
                f"(supported: {supported}, DICOM files with a 'DICM' header, "
                "or a DICOM series folder)",
            )
    try:
        image = reader(path)
    except InputError:
        raise
    except PermissionError as e:
        raise InputError(path, f"cannot open file: {e.strerror or e}") from e
    found = len(image.spatial_shape)
    if ndim is not None and found != ndim:
        kind = {2: "a 2D image", 3: "a 3D volume"}
        raise InputError(
            path,
            f"is {kind.get(found, f'{found}D')}, expected {kind.get(ndim, f'{ndim}D data')}",
        )
    return image
