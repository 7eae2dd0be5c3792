"""Consistency of the JSRT landmarks (`medfoundry.evaluate.jsrt_landmarks`) over one folder.

Prints a Markdown table, one row per landmark:

- mean position (x, y) over the images;
- spread: median over images of the distance to that mean position (patient variation);
- nearest: median over images of the distance to the nearest *other* landmark of the image;
- erode / dilate: median and max over images of how far the landmark moves when every mask
  is eroded / dilated by one pixel (3x3): a rule that flips between ties moves far;
- close: in how many images another landmark lies closer than `--close` pixels;
- outliers: images whose landmark lies farther than `--outlier-factor` x spread (and at least
  `--outlier-min` pixels) from the median position: the images to look at.

Then, per image, the smallest distance between two different landmarks (median, 5th
percentile, the pair that is closest most often)::

    python tools/jsrt_landmark_stats.py .data/jsrt_dev/train
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.evaluate.jsrt_landmarks import (
    LANDMARKS,
    STRUCTURES,
    landmarks_from_masks,
    read_binary_mask,
)


def _shift_or(m: np.ndarray) -> np.ndarray:
    """3x3 dilation of a boolean (H, W) mask."""
    p = np.pad(m, 1)
    h, w = m.shape
    out = np.zeros_like(m)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def _erode(m: np.ndarray) -> np.ndarray:
    return ~_shift_or(~m)


def _as_array(points: dict[str, tuple[float, float]]) -> np.ndarray:
    return np.array([points[n] for n in LANDMARKS])  # (L, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", type=Path, help="JSRT folder: images/ and masks/<structure>/")
    ap.add_argument("--outlier-factor", type=float, default=3.0)
    ap.add_argument("--outlier-min", type=float, default=25.0)
    ap.add_argument("--close", type=float, default=32.0)
    args = ap.parse_args()

    items = scan_segmentation_folder(args.folder, structures=STRUCTURES)
    base, eroded, dilated = [], [], []
    for item in items:
        masks = {s: read_binary_mask(item.masks[s]) for s in STRUCTURES}
        base.append(_as_array(landmarks_from_masks(masks, item.masks)))
        eroded.append(_as_array(landmarks_from_masks({s: _erode(m) for s, m in masks.items()})))
        dilated.append(_as_array(landmarks_from_masks({s: _shift_or(m) for s, m in masks.items()})))
    pts = np.stack(base)  # (N, L, 2)
    ids = [item.id for item in items]
    n = len(ids)

    mean = pts.mean(axis=0)  # (L, 2)
    spread = np.median(np.linalg.norm(pts - mean, axis=-1), axis=0)  # (L,)
    pair = np.linalg.norm(pts[:, :, None] - pts[:, None, :], axis=-1)  # (N, L, L)
    pair[:, np.arange(len(LANDMARKS)), np.arange(len(LANDMARKS))] = np.inf
    nearest_each = pair.min(axis=2)  # (N, L)
    nearest = np.median(nearest_each, axis=0)
    move_e = np.linalg.norm(np.stack(eroded) - pts, axis=-1)  # (N, L)
    move_d = np.linalg.norm(np.stack(dilated) - pts, axis=-1)
    off = np.linalg.norm(pts - np.median(pts, axis=0), axis=-1)  # (N, L)

    print(f"{n} images of {args.folder}\n")
    print(
        "| landmark | mean x | mean y | spread (px) | nearest other (px) "
        f"| erode median / max | dilate median / max | < {args.close:g} px | outliers |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for k, name in enumerate(LANDMARKS):
        limit = max(args.outlier_factor * spread[k], args.outlier_min)
        bad = [f"{ids[i]} ({off[i, k]:.0f})" for i in np.flatnonzero(off[:, k] > limit)]
        print(
            f"| {name} | {mean[k, 0]:.1f} | {mean[k, 1]:.1f} | {spread[k]:.1f} | "
            f"{nearest[k]:.1f} | {np.median(move_e[:, k]):.2f} / {move_e[:, k].max():.2f} | "
            f"{np.median(move_d[:, k]):.2f} / {move_d[:, k].max():.2f} | "
            f"{int((nearest_each[:, k] < args.close).sum())} | {', '.join(bad) or '-'} |"
        )
    flat = pair.reshape(n, -1)
    closest = flat.min(axis=1)
    which = Counter(
        tuple(sorted((LANDMARKS[j // len(LANDMARKS)], LANDMARKS[j % len(LANDMARKS)])))
        for j in flat.argmin(axis=1)
    )
    (a, b), count = which.most_common(1)[0]
    print(
        f"\nSmallest distance between two landmarks of one image: median {np.median(closest):.1f} "
        f"px, 5th percentile {np.percentile(closest, 5):.1f} px, min {closest.min():.1f} px "
        f"({ids[int(closest.argmin())]}); closest pair most often: {a} / {b} "
        f"({count} of {n} images)"
    )


if __name__ == "__main__":
    main()
