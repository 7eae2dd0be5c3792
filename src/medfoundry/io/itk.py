"""NRRD, MetaImage (``.mha``/``.mhd``) volumes via SimpleITK (imported only when needed).

A 3D image is reoriented to the package's (D, H, W) convention (``medfoundry.io.orientation``)
from its origin, spacing and direction (ITK works in LPS, like DICOM). A 2D image comes back as
(1, H, W) with spacing (H, W). Multi-component (vector/RGB) pixels, 4D images and NaN voxels
are refused with an ``InputError``. Modality is "unknown" unless the caller says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputError
from medfoundry.io.image import ImageData
from medfoundry.io.orientation import AXIS_ORDER, axis_codes, to_canonical

ITK_EXTENSIONS: frozenset[str] = frozenset({".nrrd", ".nhdr", ".mha", ".mhd"})


def _sitk() -> Any:
    """SimpleITK, imported lazily so the package works without it for other formats."""
    try:
        import SimpleITK
    except ImportError as e:  # pragma: no cover - SimpleITK is a dependency
        raise InputError(None, "reading NRRD/MHA/MHD needs SimpleITK: pip install SimpleITK") from e
    return SimpleITK


_DATA_FILE_KEYS = {".mhd": "elementdatafile", ".nhdr": "data file", ".nrrd": "data file"}


def detached_data_file(header: Path) -> Path | None:
    """The data file a detached header (``.mhd``'s ElementDataFile, ``.nhdr``'s ``data file``)
    names, or None (data in the header file, or several files)."""
    key = _DATA_FILE_KEYS.get(header.suffix.lower())
    if key is None:
        return None
    try:
        lines = header.read_bytes()[:65536].decode("latin-1").splitlines()
    except OSError:
        return None
    for line in lines:
        name, sep, value = line.partition(":" if key == "data file" else "=")
        if sep and name.strip().lower() in (key, "datafile"):
            value = value.strip()
            if value.upper() in ("LOCAL", "LIST") or " " in value or not value:
                return None
            return header.parent / value
    return None


def _header_reads(p: Path) -> bool:
    """Whether SimpleITK reads the header (size, type) of ``p``, data aside."""
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except Exception:
        return False
    return True


def _unreadable(p: Path, e: Exception) -> InputError:
    """The error of a file SimpleITK cannot read, naming a detached header's data file when
    that is what is missing or damaged (ITK itself names neither)."""
    data = detached_data_file(p)
    if data is not None and not data.is_file():
        return InputError(data, f"data file of {p.name} not found")
    if data is not None and _header_reads(p):
        size = data.stat().st_size
        return InputError(data, f"data file of {p.name} is damaged or truncated ({size} bytes)")
    return InputError(p, f"not a readable volume file: {str(e).strip().splitlines()[-1]}")


def read_itk(path: str | Path, modality: str = "unknown") -> ImageData:
    """Read an NRRD/MHA/MHD file into ``ImageData`` ((1, D, H, W) for 3D, (1, H, W) for 2D)."""
    p = Path(path)
    sitk = _sitk()
    try:
        img = sitk.ReadImage(str(p))
    except Exception as e:
        raise _unreadable(p, e) from e
    dim = img.GetDimension()
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            p,
            f"{img.GetNumberOfComponentsPerPixel()}-component pixels not supported: "
            "expected a single-channel (scalar) image",
        )
    if dim not in (2, 3):
        raise InputError(p, f"{dim}D image of size {img.GetSize()}; expected a 2D or 3D image")
    data = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x) or (y, x)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(p, f"contains NaN or infinite voxel values ({bad} voxels)")
    meta: dict[str, Any] = {
        "format": p.suffix.lower().lstrip(".").upper(),
        "original_shape": tuple(int(s) for s in data.shape),
        "spacing_known": True,
        "value_range": None,
    }
    if dim == 2:
        sx, sy = (float(v) for v in img.GetSpacing())
        return ImageData(data[None], (sy, sx), modality, str(path), meta)

    affine = np.eye(4)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine[:3, :3] = direction @ np.diag(np.asarray(img.GetSpacing(), dtype=np.float64))
    affine[:3, 3] = np.asarray(img.GetOrigin(), dtype=np.float64)
    array, affine_dhw, spacing = to_canonical(data.transpose(2, 1, 0), affine)
    meta |= {
        "affine": affine_dhw.tolist(),
        "axis_order": AXIS_ORDER,
        "original_orientation": axis_codes(affine),
    }
    return ImageData(array[None], spacing, modality, str(path), meta)
