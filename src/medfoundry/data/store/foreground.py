"""The foreground box of a volume: where the anatomy is, so the store need not keep the air.

Foreground is tissue, the rule of ``medfoundry.data.slicing``: HU > -500 for CT (neither air nor
most of the lung), and above 0.1 of the volume's [0, 1] percentile range for any other modality.
The crop box is the bounding box of the foreground voxels, united with that of the label's
non-zero voxels (so a label is never cut), widened by ``margin`` voxels on every side and
clipped to the volume. A volume without foreground keeps its full extent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Voxels added on every side of the foreground box.
CROP_MARGIN = 4


def bounding_box(mask: np.ndarray) -> np.ndarray | None:
    """(3, 2) [start, stop) per axis of the True voxels of a (D, H, W) mask; None if none."""
    box = np.zeros((3, 2), dtype=np.int64)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box[axis] = hits[0], hits[-1] + 1
    return box


def crop_box(
    foreground: np.ndarray, label: np.ndarray | None = None, margin: int = CROP_MARGIN
) -> np.ndarray:
    """(3, 2) [start, stop) box of the foreground and the label, widened by ``margin``."""
    shape = np.asarray(foreground.shape, dtype=np.int64)
    boxes = [bounding_box(foreground)]
    if label is not None:
        boxes.append(bounding_box(label > 0))
    found = [b for b in boxes if b is not None]
    if not found:
        return np.stack([np.zeros(3, np.int64), shape], axis=1)
    box = np.stack([np.min([b[:, 0] for b in found], 0), np.max([b[:, 1] for b in found], 0)], 1)
    box[:, 0] = np.maximum(box[:, 0] - margin, 0)
    box[:, 1] = np.minimum(box[:, 1] + margin, shape)
    return box


def box_slices(box: np.ndarray | Sequence[Sequence[int]]) -> tuple[slice, slice, slice]:
    """Index slices of a (3, 2) box."""
    b = np.asarray(box, dtype=np.int64)
    return slice(b[0, 0], b[0, 1]), slice(b[1, 0], b[1, 1]), slice(b[2, 0], b[2, 1])
