"""The 3D store's per-volume preprocessing, and its inverse back to the scan's own grid.

``preprocess_volume`` is the one implementation of what a 3D model sees (``prepare_store`` and
``medfoundry predict`` both call it; rules in ``medfoundry.data.store.build``): a (D, H, W) "SPL"
volume (``read_image(..., ndim=3)``) is scaled to [0, 1] (CT clip or MR percentiles,
``to_unit``), resampled to the target spacing (trilinear; labels nearest), and cropped to its
foreground box (tissue, united with the label's box when there is one) plus a margin.

``GridInverse`` records how to go back and ``to_original_grid`` goes back: class
probabilities (K, d, h, w) (or a label map) on the cropped grid are un-cropped (outside the box:
background, probability 1 for class 0), resampled to the reader's (D, H, W) grid (probabilities
trilinearly, then argmax; or labels by nearest neighbour) and flipped/transposed back to the
file's own (i, j, k) voxel order (``medfoundry.io.orientation.from_canonical``), so a label map
has the input's shape and affine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfoundry.data.corpus2d import resolve_modality
from medfoundry.data.normalize import parse_ct_window, percentile_bounds, range_to_unit
from medfoundry.data.slicing import CT_FOREGROUND_HU, UNIT_FOREGROUND
from medfoundry.data.store.foreground import CROP_MARGIN, box_slices, crop_box
from medfoundry.data.store.resample import resample_image, resample_label, resampled_shape
from medfoundry.errors import InputError
from medfoundry.io import ImageData
from medfoundry.io.orientation import AXIS_ORDER, from_canonical

#: Orientation assumed for a reader that records none: its grid is already canonical.
CANONICAL_CODES = "LPS"  # (i, j, k) = (W, H, D) of an "SPL" grid
RESAMPLE_MODES = ("probabilities", "nearest")


def ct_range(ct_clip: Sequence[float] | str) -> tuple[float, float]:
    """The HU range (low, high) of a (low, high) pair or a window name/"LEVEL,WIDTH"."""
    if isinstance(ct_clip, str):
        try:
            _, level, width = parse_ct_window(ct_clip)
        except ValueError as e:
            raise InputError(None, str(e)) from e
        return level - width / 2.0, level + width / 2.0
    low, high = (float(v) for v in ct_clip)
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise InputError(None, f"CT clip range must be finite with low < high, got {ct_clip!r}")
    return low, high


@dataclass(frozen=True)
class VolumeSettings:
    """The preprocessing of one volume: target spacing (D, H, W) mm, the modality of untagged
    volumes ("unknown": CT when its minimum is <= -500 HU), CT clip (HU), MR percentiles, crop."""

    target_spacing: tuple[float, float, float]
    modality_default: str = "unknown"
    ct_range: tuple[float, float] = (-1000.0, 1000.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    crop_foreground: bool = True
    crop_margin: int = CROP_MARGIN

    @classmethod
    def from_preprocessing(cls, record: Mapping[str, Any]) -> VolumeSettings:
        """The settings of a store's ``preprocessing`` (as 3D checkpoints record it)."""
        if record.get("axis_order", AXIS_ORDER) != AXIS_ORDER:
            raise InputError(
                None, f"axis order {record.get('axis_order')!r}, expected {AXIS_ORDER}"
            )
        spacing = [float(v) for v in record["target_spacing"]]
        norm = record.get("normalization") or {}
        modality = str(record.get("modality", "auto"))
        kwargs: dict[str, Any] = {
            "target_spacing": (spacing[0], spacing[1], spacing[2]),
            "modality_default": "unknown" if modality.lower() in ("auto", "unknown") else modality,
            "crop_foreground": bool(record.get("crop_foreground", True)),
            "crop_margin": int(record.get("crop_margin", CROP_MARGIN)),
        }
        if "CT" in norm:
            kwargs["ct_range"] = ct_range(norm["CT"]["hu"])
        if "other" in norm:
            kwargs["mr_percentiles"] = (
                float(norm["other"]["lower"]),
                float(norm["other"]["upper"]),
            )
        return cls(**kwargs)


def to_unit(
    volume: np.ndarray, modality: str, ct_hu: tuple[float, float], percentiles: Sequence[float]
) -> tuple[np.ndarray, dict[str, Any], float] | None:
    """(D, H, W) volume -> [0, 1] float32, its intensity record and the foreground threshold;
    None for a constant volume."""
    if float(volume.max()) == float(volume.min()):
        return None
    if modality == "CT":
        low, high = ct_hu
        threshold = float(np.clip((CT_FOREGROUND_HU - low) / (high - low), 0.0, 1.0))
        record = {"kind": "ct_clip", "low": low, "high": high}
    else:
        low, high = percentile_bounds(volume, *percentiles)
        if high <= low:
            return None
        threshold = UNIT_FOREGROUND
        record = {"kind": "percentile_minmax", "low": round(low, 6), "high": round(high, 6)}
    return range_to_unit(volume, low, high), record, threshold


@dataclass(frozen=True)
class GridInverse:
    """What ``to_original_grid`` needs to put a prediction back on the scan's own grid.

    canonical_shape: (D, H, W) of the reader's "SPL" array; resampled_shape: the grid at the
    target spacing; crop_box: (3, 2) [start, stop) on it; canonical_affine: (d, h, w, 1) -> LPS
    mm; orientation: the reader's axis codes of the file's (i, j, k) grid (the flips/transposes
    ``to_canonical`` undid); original_shape / original_affine: that (i, j, k) grid, LPS mm.
    """

    canonical_shape: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    crop_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    canonical_affine: np.ndarray
    orientation: str
    original_shape: tuple[int, int, int]
    original_affine: np.ndarray

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        """(d, h, w) of the volume the model sees."""
        d, h, w = (int(b - a) for a, b in self.crop_box)
        return d, h, w


@dataclass
class Preprocessed:
    """A volume as a 3D model sees it: (d, h, w) float32 in [0, 1], its label (uint8, cropped
    alike) when given, the modality used (and where it came from), the intensity record, the
    tissue threshold, and the way back (``inverse``)."""

    array: np.ndarray
    label: np.ndarray | None
    modality: str
    modality_from: str
    intensity: dict[str, Any]
    threshold: float
    inverse: GridInverse

    @property
    def box(self) -> np.ndarray:
        """The (3, 2) int64 crop box on the resampled grid."""
        return np.asarray(self.inverse.crop_box, dtype=np.int64)


def preprocess_volume(
    image: ImageData, settings: VolumeSettings, label: np.ndarray | None = None
) -> Preprocessed | None:
    """Scale, resample and crop a (1, D, H, W) ``image`` (and its (D, H, W) ``label``) as the
    3D store does; None for a constant volume."""
    shape = image.spatial_shape
    modality, modality_from = resolve_modality(image, settings.modality_default)
    unit = to_unit(image.array[0], modality, settings.ct_range, settings.mr_percentiles)
    if unit is None:
        return None
    array, intensity, threshold = unit  # (D, H, W) in [0, 1]
    new_shape = resampled_shape(shape, image.spacing, settings.target_spacing)
    array = resample_image(array, new_shape)  # (D', H', W')
    if label is not None:
        label = resample_label(label, new_shape)
    if settings.crop_foreground:
        box = crop_box(array > threshold, label, settings.crop_margin)
    else:
        box = np.stack([np.zeros(3, np.int64), np.asarray(new_shape, np.int64)], axis=1)
    affine = np.asarray(image.meta["affine"], dtype=np.float64)
    codes = str(image.meta.get("original_orientation") or CANONICAL_CODES)
    original_shape, original_affine = _original_grid(shape, affine, codes)
    inverse = GridInverse(
        canonical_shape=(shape[0], shape[1], shape[2]),
        resampled_shape=new_shape,
        crop_box=tuple((int(a), int(b)) for a, b in box),  # type: ignore[arg-type]
        canonical_affine=affine,
        orientation=codes,
        original_shape=original_shape,
        original_affine=original_affine,
    )
    slices = box_slices(box)
    return Preprocessed(
        array=array[slices],
        label=None if label is None else label[slices],
        modality=modality,
        modality_from=modality_from,
        intensity=intensity,
        threshold=threshold,
        inverse=inverse,
    )


def _original_grid(
    shape: Sequence[int], affine: np.ndarray, codes: str
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and LPS affine of the file's (i, j, k) grid behind a (D, H, W) canonical one."""
    probe = np.broadcast_to(np.zeros((), np.uint8), tuple(int(s) for s in shape))  # no memory
    back, original_affine = from_canonical(probe, affine, codes)
    i, j, k = (int(s) for s in back.shape)
    return (i, j, k), original_affine


def _uncrop(values: np.ndarray, inverse: GridInverse, fill: np.ndarray) -> np.ndarray:
    """(K, d, h, w) on the cropped grid -> (K, D', H', W') on the resampled one, ``fill`` (K,)
    outside the box."""
    full = np.empty((values.shape[0], *inverse.resampled_shape), dtype=values.dtype)
    full[...] = fill.reshape(-1, 1, 1, 1)
    full[(slice(None), *box_slices(inverse.crop_box))] = values
    return full


def to_original_grid(
    prediction: np.ndarray,
    inverse: GridInverse,
    mode: str = "probabilities",
    return_probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A prediction on the cropped grid -> (label map (i, j, k) uint8, probabilities
    (i, j, k, K) float32 or None) on the scan's own grid.

    ``prediction``: probabilities (K, d, h, w) (``mode="probabilities"``: resampled
    trilinearly, then argmax; ``"nearest"``: argmax first, labels resampled by nearest
    neighbour) or a label map (d, h, w) (always nearest). Probabilities come back only for
    probability input with ``mode="probabilities"`` and ``return_probabilities``.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resampling mode {mode!r}: choose from {list(RESAMPLE_MODES)}")
    pred = np.asarray(prediction)
    expected = inverse.cropped_shape
    if tuple(pred.shape[-3:]) != expected or pred.ndim not in (3, 4):
        raise ValueError(
            f"prediction of shape {pred.shape}: expected (K, *{expected}) or {expected}"
        )
    probabilities: np.ndarray | None = None
    if pred.ndim == 3 or mode == "nearest":
        labels = pred if pred.ndim == 3 else pred.argmax(0)
        labels = labels.astype(np.uint8)[None]
        full = _uncrop(labels, inverse, np.zeros(1, np.uint8))[0]  # (D', H', W')
        canonical = resample_label(full, inverse.canonical_shape)  # (D, H, W)
    else:
        k = pred.shape[0]
        fill = np.zeros(k, np.float32)
        fill[0] = 1.0
        full_p = _uncrop(pred.astype(np.float32, copy=False), inverse, fill)  # (K, D', H', W')
        probs = np.stack([resample_image(p, inverse.canonical_shape) for p in full_p])
        canonical = probs.argmax(0).astype(np.uint8)  # (D, H, W)
        if return_probabilities:
            moved = np.moveaxis(probs, 0, -1)  # (D, H, W, K)
            probabilities, _ = from_canonical(moved, inverse.canonical_affine, inverse.orientation)
            probabilities = np.ascontiguousarray(probabilities)
    labels_ijk, _ = from_canonical(canonical, inverse.canonical_affine, inverse.orientation)
    return np.ascontiguousarray(labels_ijk), probabilities
