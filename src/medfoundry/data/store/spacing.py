"""Voxel spacing of volumes from their headers, and the dataset's median spacing.

The default target spacing of the 3D store is the per-axis median over the dataset (nnU-Net's
rule for isotropic-enough data). ``probe_spacing`` reads only the header of NIfTI and
NRRD/MHA/MHD files (no voxels) and returns the spacing in the package's (D, H, W) axis order,
the same as ``read_image(...).spacing``; DICOM series and other inputs are decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from nibabel.orientations import io_orientation

from medfoundry.io.nifti import NIFTI_EXTENSIONS

if TYPE_CHECKING:
    from medfoundry.data.store.cases import Case3D

_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])


def spacing_dhw(affine_ras: np.ndarray) -> tuple[float, float, float]:
    """Spacing (D, H, W) in mm of a grid whose (i, j, k) -> RAS affine is ``affine_ras``."""
    affine = np.asarray(affine_ras, dtype=np.float64)
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    ornt = io_orientation(affine)  # per voxel axis: world axis (0 x, 1 y, 2 z), flip
    out = [1.0, 1.0, 1.0]
    for axis, (world, _) in enumerate(ornt[:3]):
        out[2 - int(world)] = float(norms[axis])  # D <- z, H <- y, W <- x
    return out[0], out[1], out[2]


def _nifti_spacing(path: str) -> tuple[float, float, float] | None:
    """Spacing from a NIfTI header (None for files that are not 3D)."""
    import nibabel as nib

    img = nib.load(path)
    if len(img.shape) < 3:
        return None
    return spacing_dhw(np.asarray(img.affine))


def _itk_spacing(path: str) -> tuple[float, float, float] | None:
    """Spacing from an NRRD/MHA/MHD header (None for files that are not 3D)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    if reader.GetDimension() != 3:
        return None
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)
    return spacing_dhw(_FLIP_XY @ affine_lps)


def probe_spacing(case: Case3D) -> tuple[float, float, float]:
    """The (D, H, W) spacing of a case's image, from its header when the format allows."""
    if case.kind == "file":
        path = str(case.paths[0])
        lower = path.lower()
        try:
            if any(lower.endswith(s) for s in NIFTI_EXTENSIONS):
                found = _nifti_spacing(path)
            elif lower.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
                found = _itk_spacing(path)
            else:
                found = None
        except Exception:  # an unreadable header: let the full reader name the problem
            found = None
        if found is not None:
            return found
    spacing = case.read().spacing
    return float(spacing[0]), float(spacing[1]), float(spacing[2])


def median_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Per-axis median of (D, H, W) spacings, rounded to 1e-4 mm."""
    med = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return tuple(round(float(v), 4) for v in med)  # type: ignore[return-value]
