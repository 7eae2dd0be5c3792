"""Dice of predicted label maps against reference label maps, in the scans' own voxel grid.

The check behind `medfoundry predict`'s promise (masks back in the scan's geometry): each
prediction ``<pred>/<stem>.nii.gz`` is compared voxel by voxel with ``<labels>/<stem>.nii.gz``;
their shapes and affines must agree (else a one-line error naming both files). Class names
come from ``--dataset-json`` (an MSD ``dataset.json``) when given::

    python tools/score_label_maps.py --pred runs/pred --labels DATA/labelsTr \\
        --dataset-json DATA/dataset.json [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from medfoundry.metrics.segmentation3d import dice_per_class

SUFFIX = ".nii.gz"


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64 in the file's voxel order, affine) of a NIfTI label map."""
    img = nib.load(str(path))
    return np.asarray(img.dataobj).astype(np.int64), np.asarray(img.affine, dtype=np.float64)


def score(pred_dir: Path, label_dir: Path, names: dict[int, str]) -> dict[str, object]:
    """Per-case Dice of every class in ``names`` and the mean over cases."""
    cases = sorted(p for p in pred_dir.glob(f"*{SUFFIX}") if "_probabilities" not in p.name)
    if not cases:
        raise SystemExit(f"{pred_dir}: no *{SUFFIX} predictions")
    classes = sorted(names)
    rows = []
    for p in cases:
        ref_path = label_dir / p.name
        if not ref_path.is_file():
            raise SystemExit(f"{p}: no reference label map {ref_path}")
        pred, a1 = load(p)
        ref, a2 = load(ref_path)
        if pred.shape != ref.shape or not np.allclose(a1, a2, atol=1e-4):
            raise SystemExit(
                f"{p}: grid {pred.shape} differs from {ref_path} {ref.shape} (or the affines do)"
            )
        dice = dice_per_class(pred, ref, classes)
        rows.append(
            {
                "case": p.name[: -len(SUFFIX)],
                **{names[c]: float(d) for c, d in zip(classes, dice, strict=True)},
            }
        )
    mean = {names[c]: float(np.mean([r[names[c]] for r in rows])) for c in classes}
    mean["mean"] = float(np.mean(list(mean.values())))
    return {"cases": rows, "mean": mean, "n": len(rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pred", type=Path, required=True)
    p.add_argument("--labels", type=Path, required=True)
    p.add_argument("--dataset-json", type=Path, help="MSD dataset.json naming the classes")
    p.add_argument("--json", type=Path, help="write per-case and mean Dice here")
    args = p.parse_args()
    names = {1: "class1"}
    if args.dataset_json:
        labels = json.loads(args.dataset_json.read_text())["labels"]
        if all(str(k).isdigit() for k in labels):  # MSD: {"1": "anterior"}
            names = {int(k): str(v) for k, v in labels.items() if int(k) > 0}
        else:  # nnU-Net v2: {"anterior": 1}
            names = {int(v): str(k) for k, v in labels.items() if int(v) > 0}
    result = score(args.pred, args.labels, names)
    print(
        f"{result['n']} cases, mean Dice: "
        + ", ".join(f"{k} {100 * v:.1f}" for k, v in result["mean"].items())
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
