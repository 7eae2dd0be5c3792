"""The in-memory image every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageData:
    """A decoded image, channel-first, float32.

    array:    float32, (C, H, W) for 2D images; (C, D, H, W) with C = 1 for 3D volumes.
    spacing:  pixel spacing in mm per spatial axis, (H, W) for 2D, (D, H, W) for 3D; (1.0, 1.0)
              when a 2D file does not say (then ``meta["spacing_known"]`` is False).
    modality: "XR" (projection radiograph, incl. DICOM CR/DX), "CT", "MR", ... or "unknown"
              for formats without that information (PNG, JPEG, NIfTI, NRRD, ...).
    source:   the file (or DICOM series folder) path as given to the reader.
    meta:     extra facts about how the file was decoded (format, bit depth, photometric
              interpretation, rescale/VOI applied, nominal value range, ...).

    Axis convention of every 3D volume (DICOM series, NIfTI, NRRD/MHA alike, so the same scan
    gives the same array whatever its file format; see ``medfoundry.io.orientation``):

    - D: slice axis along the scanner's z, increasing towards the patient's Superior;
    - H: image rows, increasing towards Posterior (anterior at the top of an axial slice);
    - W: image columns, increasing towards the patient's Left (patient's right on the left).

    That is the (z, y, x) order of an LPS grid, ``meta["axis_order"] == "SPL"``. Grids are
    flipped/transposed to the closest such order, never resampled. ``meta["affine"]`` (4x4 list)
    maps a voxel index (d, h, w, 1) to patient coordinates in mm in the LPS frame (DICOM's:
    x to the Left, y to Posterior, z to Superior); ``spacing`` is its column norms.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    modality: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Number of channels (first axis of ``array``)."""
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis: (H, W) for 2D, (D, H, W) for 3D."""
        return tuple(int(s) for s in self.array.shape[1:])
