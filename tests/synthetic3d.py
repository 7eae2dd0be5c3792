"""Tiny synthetic MSD-layout 3D datasets for the 3D segmentation tests (written with nibabel)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np


def blob_case(
    shape: Sequence[int], rng: np.random.Generator, radius: float = 4.5
) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipsoid on noise (x, y, z array order) and its label: 1 in the blob's half
    of lower y, 2 in the upper half (an 'anterior' / 'posterior' pair)."""
    xx, yy, zz = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = [rng.uniform(radius + 1, s - radius - 1) for s in shape]
    blob = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) < radius**2
    image = 40.0 + 150.0 * blob + rng.normal(0, 8, shape)
    label = np.where(blob, np.where(yy < c[1], 1, 2), 0).astype(np.uint8)
    return image.astype(np.float32), label


def write_blob_msd(
    root: Path,
    n: int,
    shape: Sequence[int] = (16, 20, 16),
    seed: int = 0,
    prefix: str = "case",
    empty: Sequence[int] = (),
) -> Path:
    """An MSD folder of ``n`` blob cases (cases in ``empty`` get an all-zero label)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, label = blob_case(shape, rng)
        if i in empty:
            label[:] = 0
        name = f"{prefix}_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / name)
    labels = {"background": 0, "anterior": 1, "posterior": 2}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "numTraining": n}))
    return root
