"""Named anatomical landmarks of JSRT chest radiographs, derived from the SCR masks.

Ground truth for Eve's landmark matching and locality tests, without new annotation. Each
landmark is one geometric rule on one structure's mask; the rules, why they were chosen and
their consistency on the development set are in docs/landmarks.md.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.io import read_image
from medfoundry.runtime import atomic_write_text

#: The SCR mask folders the rules read ("left" is the patient's left, on the image's right).
STRUCTURES: tuple[str, ...] = (
    "heart",
    "left_lung",
    "right_lung",
    "left_clavicle",
    "right_clavicle",
)

#: Landmark names in a fixed order (the order of the CSV rows of one image).
LANDMARKS: tuple[str, ...] = (
    "right_lung_apex",
    "right_costophrenic_angle",
    "right_cardiophrenic_angle",
    "left_lung_apex",
    "left_costophrenic_angle",
    "heart_apex",
    "heart_top",
    "right_clavicle_medial",
    "right_clavicle_lateral",
    "left_clavicle_medial",
    "left_clavicle_lateral",
    "right_lung_centroid",
    "left_lung_centroid",
    "heart_centroid",
)

#: Depth of the slab averaged at an extreme point, as a fraction of the structure's extent
#: along the rule's direction (lung apex, costophrenic angle, heart apex).
EXTREME_FRACTION = 0.02
#: Depth of the slab averaged at a clavicle end, as a fraction of its length.
CLAVICLE_END_FRACTION = 0.1
#: A clavicle whose main axis is less than this many times longer than its width (ratio of
#: the standard deviations along the two principal axes) has no reliable axis.
MIN_CLAVICLE_ELONGATION = 1.5

Point = tuple[float, float]
#: Columns of the CSV written by `write_points_csv` (the `--points` input of `embed`).
CSV_COLUMNS: tuple[str, ...] = ("image", "x", "y", "size", "name")


@dataclass(frozen=True)
class ImageLandmarks:
    """The landmarks of one image: name -> (x, y) pixel position (x = column, y = row)."""

    id: str
    image: Path
    shape: tuple[int, int]  # (H, W)
    points: dict[str, Point]


def _coords(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the mask's pixels as float64 arrays (pixel centres at integer positions)."""
    ys, xs = np.nonzero(mask)
    return xs.astype(np.float64), ys.astype(np.float64)


def _slab_mean(xs: np.ndarray, ys: np.ndarray, p: np.ndarray, fraction: float) -> Point:
    """Mean position of the pixels whose projection `p` is within `fraction` of the
    projection range from its maximum (fraction 0: the extreme pixels only)."""
    top = p.max()
    keep = p >= top - fraction * (top - p.min())
    return float(xs[keep].mean()), float(ys[keep].mean())


def extreme_point(
    xs: np.ndarray,
    ys: np.ndarray,
    direction: tuple[int, int],
    fraction: float = EXTREME_FRACTION,
) -> Point:
    """The extreme point of pixels (xs, ys) along `direction` (dx, dy): the mean of the slab
    of pixels within `fraction` of their extent along it. Averaging breaks ties and damps
    one-pixel spurs; integer directions make ties exact."""
    p = xs * direction[0] + ys * direction[1]
    return _slab_mean(xs, ys, p, fraction)


def top_border_point(mask: np.ndarray, x: float, where: str | Path | None = None) -> float:
    """Row of the mask's upper border at column `x`: the topmost mask row of the columns
    floor(x) and floor(x) + 1, interpolated linearly (an empty column takes the other's)."""
    w = mask.shape[1]
    x0 = min(max(int(np.floor(x)), 0), w - 1)
    x1 = min(x0 + 1, w - 1)
    cols = mask[:, [x0, x1]]  # (H, 2)
    has = cols.any(axis=0)
    if not has.any():
        raise InputError(where, f"mask has no pixel in columns {x0} and {x1} (x = {x:.1f})")
    top = cols.argmax(axis=0).astype(np.float64)  # first True row of each column
    top[~has] = top[has][0]
    t = x - x0
    return float((1 - t) * top[0] + t * top[1])


def clavicle_ends(
    xs: np.ndarray, ys: np.ndarray, medial_sign: float, where: str | Path | None = None
) -> tuple[Point, Point]:
    """(medial end, lateral end) of clavicle pixels (xs, ys): the mean of the pixels in the
    last `CLAVICLE_END_FRACTION` of the length along the main (principal) axis, the axis
    oriented so that its x component points to the midline (`medial_sign` +1 for the right
    clavicle, which lies on the image's left). `where` names the file in the error raised
    for a mask without a clear main axis."""
    pts = np.stack([xs - xs.mean(), ys - ys.mean()])  # (2, N)
    evals, evecs = np.linalg.eigh(pts @ pts.T / pts.shape[1])  # ascending eigenvalues
    if evals[1] <= MIN_CLAVICLE_ELONGATION**2 * max(evals[0], 1e-12):
        ratio = np.sqrt(evals[1] / evals[0]) if evals[0] > 0 else float("nan")
        raise InputError(
            where,
            f"clavicle mask has no main axis (length/width {ratio:.2f} < "
            f"{MIN_CLAVICLE_ELONGATION}, {pts.shape[1]} pixels)",
        )
    axis = evecs[:, 1]
    if axis[0] * medial_sign < 0:
        axis = -axis
    p = axis[0] * xs + axis[1] * ys
    medial = _slab_mean(xs, ys, p, CLAVICLE_END_FRACTION)
    lateral = _slab_mean(xs, ys, -p, CLAVICLE_END_FRACTION)
    return medial, lateral


def landmarks_from_masks(
    masks: Mapping[str, np.ndarray], paths: Mapping[str, str | Path] | None = None
) -> dict[str, Point]:
    """All `LANDMARKS` of one image from its boolean (H, W) SCR masks, as name -> (x, y).

    `paths` (structure -> mask file) only names the file in errors. Raises `InputError` when
    a structure is missing, empty or not 2D, the masks differ in shape, or a clavicle has no
    main axis.
    """
    paths = paths or {}
    shape: tuple[int, ...] | None = None
    m: dict[str, np.ndarray] = {}
    c: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in STRUCTURES:
        where = paths.get(name)
        if name not in masks:
            raise InputError(where, f"no {name!r} mask (got {sorted(masks)})")
        a = np.asarray(masks[name]).astype(bool, copy=False)
        if a.ndim != 2:
            raise InputError(where, f"{name} mask must be 2D (H, W), got shape {a.shape}")
        if shape is None:
            shape = a.shape
        elif a.shape != shape:
            raise InputError(where, f"{name} mask shape {a.shape} differs from {shape}")
        m[name], c[name] = a, _coords(a)
        if c[name][0].size == 0:
            raise InputError(where, f"{name} mask is empty: no landmark can be derived")
    centroid = {name: (float(xs.mean()), float(ys.mean())) for name, (xs, ys) in c.items()}
    rc_med, rc_lat = clavicle_ends(*c["right_clavicle"], +1.0, paths.get("right_clavicle"))
    lc_med, lc_lat = clavicle_ends(*c["left_clavicle"], -1.0, paths.get("left_clavicle"))
    heart_x = centroid["heart"][0]
    points = {
        # Image y grows downwards; the patient's right is the image's left (small x).
        "right_lung_apex": extreme_point(*c["right_lung"], (0, -1)),
        "right_costophrenic_angle": extreme_point(*c["right_lung"], (-1, 1)),
        "right_cardiophrenic_angle": extreme_point(*c["right_lung"], (1, 1)),
        "left_lung_apex": extreme_point(*c["left_lung"], (0, -1)),
        "left_costophrenic_angle": extreme_point(*c["left_lung"], (1, 1)),
        "heart_apex": extreme_point(*c["heart"], (1, 1)),
        "heart_top": (heart_x, top_border_point(m["heart"], heart_x, paths.get("heart"))),
        "right_clavicle_medial": rc_med,
        "right_clavicle_lateral": rc_lat,
        "left_clavicle_medial": lc_med,
        "left_clavicle_lateral": lc_lat,
        "right_lung_centroid": centroid["right_lung"],
        "left_lung_centroid": centroid["left_lung"],
        "heart_centroid": centroid["heart"],
    }
    return {name: points[name] for name in LANDMARKS}


def read_binary_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A 0/255 (or 0/1) single-channel mask file as a boolean (H, W) array; anything else
    (grey values, colour, another size than `shape`) is an `InputError` naming the file."""
    array = read_image(path, ndim=2).array
    if array.ndim != 3 or array.shape[0] != 1:
        raise InputError(path, f"expected a single-channel mask, got shape {array.shape}")
    a = array[0]
    if shape is not None and a.shape != tuple(shape):
        raise InputError(path, f"mask shape {a.shape} differs from its image shape {shape}")
    zero = a == 0
    if not ((zero | (a == 255)).all() or (zero | (a == 1)).all()):
        values = np.unique(a)
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise InputError(
            path, f"not a binary mask: values {shown} (expected 0 and 255, or 0 and 1)"
        )
    return a > 0


def read_jsrt_landmarks(folder: str | Path) -> list[ImageLandmarks]:
    """Landmarks of every image of a JSRT folder (`images/<ID>.png`, `masks/<structure>/<ID>.png`).

    IDs and order as `scan_segmentation_folder` gives them (`ids.txt` when present, else every
    image, sorted). Missing, non-binary, wrongly sized or empty masks raise `InputError`
    naming the file.
    """
    items = scan_segmentation_folder(folder, structures=STRUCTURES)
    out: list[ImageLandmarks] = []
    for item in items:
        image = read_image(item.image, ndim=2).array
        shape = (int(image.shape[-2]), int(image.shape[-1]))
        masks = {s: read_binary_mask(item.masks[s], shape) for s in STRUCTURES}
        points = landmarks_from_masks(masks, item.masks)
        out.append(ImageLandmarks(id=item.id, image=item.image, shape=shape, points=points))
    return out


def write_points_csv(folder: str | Path, out_csv: str | Path, size: int) -> int:
    """Write every image's landmarks of a JSRT folder as a CSV `image,x,y,size,name`.

    `image` is the absolute path of the image file (so the CSV can be read from anywhere),
    x/y are pixels of that image (column, row, 3 decimals), `size` the crop side in pixels.
    One row per image and landmark, in `LANDMARKS` order. Written atomically (a temporary file
    moved into place). Returns the number of rows.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise MedfoundryError(f"crop size must be a positive number of pixels, got {size!r}")
    records = read_jsrt_landmarks(folder)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in records:
        image = os.path.abspath(record.image)  # absolute, symbolic links kept
        for name, (x, y) in record.points.items():
            writer.writerow([image, f"{x:.3f}", f"{y:.3f}", int(size), name])
    atomic_write_text(out_csv, buffer.getvalue())
    return len(records) * len(LANDMARKS)
