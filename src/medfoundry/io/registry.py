"""Pick a reader for a file: by extension, else by content (the DICOM 'DICM' header)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medfoundry.errors import InputError
from medfoundry.io.dicom import DICOM_EXTENSIONS, has_dicom_preamble, read_dicom
from medfoundry.io.image import ImageData
from medfoundry.io.raster import RASTER_EXTENSIONS, read_raster

Reader = Callable[[str | Path], ImageData]

_READERS: dict[str, Reader] = {}
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")


def register_reader(suffixes: tuple[str, ...] | list[str] | frozenset[str], reader: Reader) -> None:
    """Route files with these (lower-case, dotted) suffixes to ``reader``."""
    for suffix in suffixes:
        _READERS[suffix.lower()] = reader


register_reader(RASTER_EXTENSIONS, read_raster)
register_reader(DICOM_EXTENSIONS, read_dicom)


def supported_extensions() -> frozenset[str]:
    """All suffixes ``read_image`` dispatches on (lower case, with the dot)."""
    return frozenset(_READERS)


def read_image(path: str | Path) -> ImageData:
    """Read a 2D image file (PNG, JPEG, BMP, TIFF, single-frame DICOM) into ``ImageData``.

    The reader is chosen by the lower-case suffix; a file with any other suffix (or none) is
    read as DICOM when it starts with the DICOM preamble (``DICM`` at byte 128), as series
    exported from scanners often are. Every failure is an ``InputError`` naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(path, "file not found")
    if p.is_dir():
        raise InputError(path, "is a folder, expected an image file")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        if has_dicom_preamble(p):
            reader = read_dicom
        else:
            name = p.name.lower()
            hint = ""
            if name.endswith(_VOLUME_SUFFIXES):
                hint = "; 3D volume formats are not read by read_image (2D images only)"
            supported = ", ".join(sorted(_READERS))
            raise InputError(
                path,
                f"unknown image extension {p.suffix or '(none)'!r} "
                f"(supported: {supported}, or DICOM files with a 'DICM' header){hint}",
            )
    try:
        return reader(path)
    except InputError:
        raise
    except PermissionError as e:
        raise InputError(path, f"cannot open file: {e.strerror or e}") from e
