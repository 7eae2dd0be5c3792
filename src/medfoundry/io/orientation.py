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
    transform = ornt_transform(io_orientation(affine_ras), _TARGET)
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
