"""The one axis convention of 3D volumes, and reorientation of any voxel grid to it.

Every volume reader returns ``array`` as (C, D, H, W) with

- D increasing towards the patient's Superior (slice axis along the scanner's z),
- H increasing towards Posterior (image rows go from anterior at the top to posterior),
- W increasing towards the patient's Left (patient's right on the image's left),

i.e. the (z, y, x) order of an LPS+ grid, ``AXIS_ORDER = "SPL"``. An axial slice
``array[0, d]`` therefore shows the usual radiological view. Grids are only flipped and
transposed to the closest such order, never resampled, so oblique scans keep their exact
geometry in ``meta["affine"]``: the 4x4 matrix that maps a voxel index (d, h, w, 1) to patient
coordinates in mm in the DICOM LPS frame (x to Left, y to Posterior, z to Superior).
``from_canonical`` undoes the flips/transposes (predictions are written on the file's own grid).
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

#: Direction each array axis (D, H, W) increases towards: Superior, Posterior, Left.
AXIS_ORDER = "SPL"

# LPS <-> RAS (the same matrix both ways).
_FLIP_XY = np.diag([-1.0, -1.0, 1.0, 1.0])
# (d, h, w, 1) -> (i, j, k, 1) with i = w, j = h, k = d.
_DHW_TO_IJK = np.array(
    [[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]],
    dtype=np.float64,
)
_TARGET = axcodes2ornt(("L", "P", "S"))


def to_canonical(
    array_ijk: np.ndarray, affine_lps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Flip/transpose a 3D grid indexed (i, j, k) to the (D, H, W) convention above.

    ``affine_lps`` maps (i, j, k, 1) to LPS mm. Returns the (D, H, W) float32 array, the affine
    of (d, h, w, 1) in LPS mm, and the spacing (D, H, W) in mm (the affine's column norms).
    """
    if array_ijk.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array_ijk.shape}")
    affine_ras = _FLIP_XY @ np.asarray(affine_lps, dtype=np.float64)
    transform = canonical_transform(axis_codes(affine_lps))
    oriented = apply_orientation(array_ijk, transform)
    affine_ras = affine_ras @ inv_ornt_aff(transform, array_ijk.shape)
    affine_dhw = _FLIP_XY @ affine_ras @ _DHW_TO_IJK
    spacing = tuple(float(v) for v in np.linalg.norm(affine_dhw[:3, :3], axis=0))
    array_dhw = np.ascontiguousarray(oriented.transpose(2, 1, 0), dtype=np.float32)
    return array_dhw, affine_dhw, spacing  # type: ignore[return-value]


def axis_codes(affine: np.ndarray, lps: bool = True) -> str:
    """Closest anatomical direction of each voxel axis, e.g. "SPL" (LPS frame by default)."""
    ras = _FLIP_XY @ affine if lps else np.asarray(affine)
    ornt = io_orientation(ras)
    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    return "".join(labels[int(axis)][0 if flip < 0 else 1] for axis, flip in ornt)


def canonical_transform(codes: str) -> np.ndarray:
    """The nibabel orientation transform (3, 2) that ``to_canonical`` applies to an (i, j, k)
    grid whose axes point to ``codes`` (``axis_codes`` of its affine, e.g. "RAS")."""
    return ornt_transform(axcodes2ornt(tuple(codes)), _TARGET)


def from_canonical(
    array_dhw: np.ndarray, affine_dhw: np.ndarray, codes: str
) -> tuple[np.ndarray, np.ndarray]:
    """Undo ``to_canonical``: a (D, H, W[, C]) grid back to the (i, j, k[, C]) order of a grid
    whose axes pointed to ``codes``; returns the array and the affine of (i, j, k, 1) in LPS mm.

    Only flips and transposes (exact); ``codes`` is the reader's
    ``meta["original_orientation"]``.
    """
    if array_dhw.ndim not in (3, 4):
        raise ValueError(f"expected a (D, H, W[, C]) array, got shape {array_dhw.shape}")
    transform = canonical_transform(codes)
    back = ornt_transform(_TARGET, axcodes2ornt(tuple(codes)))
    oriented = np.swapaxes(array_dhw, 0, 2)  # (W, H, D[, C]) = canonical (i, j, k)
    array_ijk = apply_orientation(oriented, back)
    affine_ras_oriented = _FLIP_XY @ np.asarray(affine_dhw, dtype=np.float64) @ _DHW_TO_IJK
    affine_ras = affine_ras_oriented @ np.linalg.inv(inv_ornt_aff(transform, array_ijk.shape[:3]))
    return array_ijk, _FLIP_XY @ affine_ras
