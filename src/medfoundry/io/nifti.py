"""NIfTI volumes (``.nii``, ``.nii.gz``) via nibabel: ``read_nifti``, and ``write_nifti``.

The header's scaling (scl_slope/scl_inter) is applied, the grid is reoriented to the package's
(D, H, W) convention (see ``medfoundry.io.orientation``) using nibabel's best affine (sform,
else qform), and the modality is "unknown" unless the caller says (NIfTI has no such field).
Trailing singleton dimensions are dropped; a 2D file becomes a one-slice volume; 4D files with
several volumes, and NaN or infinite voxels, are refused with an ``InputError``.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medfoundry.errors import InputError
from medfoundry.io.image import ImageData
from medfoundry.io.orientation import AXIS_ORDER, axis_codes, to_canonical

NIFTI_EXTENSIONS: frozenset[str] = frozenset({".nii", ".nii.gz"})

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    """Decode the voxels (scaled, float32), the RAS affine and the header."""
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise ValueError(f"not a NIfTI image ({type(img).__name__})")
        data = np.asarray(img.get_fdata(dtype=np.float32))
        return data, np.asarray(img.affine, dtype=np.float64), img.header
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"not a readable NIfTI 3D volume: {type(e).__name__}: {e}") from e


def read_nifti(path: str | Path, modality: str = "unknown") -> ImageData:
    """Read a NIfTI file into a (1, D, H, W) ``ImageData`` in the package's axis convention."""
    p = Path(path)
    data, affine_ras, header = _load(p)
    original_shape = tuple(int(s) for s in data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise InputError(
            p,
            f"4D NIfTI of shape {original_shape} ({original_shape[3]} volumes); "
            "expected a single 3D volume",
        )
    if min(data.shape) < 1:
        raise InputError(p, f"empty NIfTI volume of shape {original_shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(p, f"contains NaN or infinite voxel values ({bad} voxels)")
    affine_lps = _FLIP_XY @ affine_ras
    try:
        array, affine, spacing = to_canonical(data, affine_lps)
    except Exception as e:
        raise InputError(p, f"cannot use the NIfTI affine: {type(e).__name__}: {e}") from e
    meta: dict[str, Any] = {
        "format": "NIfTI",
        "affine": affine.tolist(),
        "axis_order": AXIS_ORDER,
        "original_shape": original_shape,
        "original_orientation": axis_codes(affine_ras, lps=False),
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
        "spacing_known": True,  # pixdim; the orientation is a guess when both codes are 0
        "orientation_known": bool(int(header["sform_code"]) or int(header["qform_code"])),
        "value_range": None,
    }
    return ImageData(
        array=array[None],
        spacing=spacing,
        modality=modality,
        source=str(path),
        meta=meta,
    )


def write_nifti(
    path: str | Path,
    array: np.ndarray,
    affine_lps: np.ndarray,
    *,
    sform_code: int = 1,
    qform_code: int = 1,
) -> Path:
    """Write an (i, j, k[, c]) array as NIfTI (gzip for ``.nii.gz``) atomically.

    ``affine_lps`` maps (i, j, k, 1) to LPS mm, the package's frame; the file stores it in
    NIfTI's RAS frame as both sform and qform (codes ``sform_code``, ``qform_code``; 1 =
    scanner). The array's dtype is kept (uint8 labels, float32 probabilities).
    """
    from medfoundry.runtime import atomic_save  # lazily: it imports torch

    p = Path(path)
    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise InputError(p, "a NIfTI output must end in .nii or .nii.gz")
    affine_ras = _FLIP_XY @ np.asarray(affine_lps, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), affine_ras)
    img.set_sform(affine_ras, code=int(sform_code))
    img.set_qform(affine_ras, code=int(qform_code))
    data = img.to_bytes()
    if name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_save(p, lambda tmp: tmp.write_bytes(data))
    return p
