"""The in-memory image every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageData:
    """A decoded image, channel-first, float32.

    array:    float32, (C, H, W) for 2D images; (C, D, H, W) is reserved for 3D volumes.
    spacing:  pixel spacing in mm per spatial axis, (H, W) for 2D; (1.0, 1.0) when the file
              does not say (then ``meta["spacing_known"]`` is False).
    modality: "XR" (projection radiograph, incl. DICOM CR/DX), "CT", "MR", ... or "unknown"
              for formats without that information (PNG, JPEG, ...).
    source:   the file path as given to the reader.
    meta:     extra facts about how the file was decoded (format, bit depth, photometric
              interpretation, rescale/VOI applied, nominal value range, ...).
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
        """Shape without the channel axis: (H, W) for 2D."""
        return tuple(int(s) for s in self.array.shape[1:])
