"""Rebuild the demo subset bundled in the package from a Kermany chest X-ray folder.

Usage: python tools/make_demo_data.py --source KERMANY_DIR [--per-class 160] [--size 128]
One image per patient (seeded choice), resized to size², re-encoded as JPEG (quality 90).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

from medfoundry.data.manifest import scan_class_folders

OUT = Path(__file__).resolve().parents[1] / "src" / "medfoundry" / "assets" / "kermany_demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--per-class", type=int, default=160)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    items, classes = scan_class_folders(args.source)
    rng = random.Random(args.seed)
    for label, name in enumerate(classes):
        by_patient: dict[str, list[Path]] = {}
        for it in items:
            if it.label == label:
                by_patient.setdefault(it.group, []).append(it.path)
        patients = sorted(by_patient)
        rng.shuffle(patients)
        out_dir = OUT / name
        out_dir.mkdir(parents=True, exist_ok=True)
        for patient in patients[: args.per_class]:
            src = sorted(by_patient[patient])[0]
            img = Image.open(src).convert("L").resize((args.size, args.size), Image.BICUBIC)
            img.save(out_dir / (src.stem + ".jpg"), quality=90)
    print(f"wrote {sum(1 for _ in OUT.rglob('*.jpg'))} images to {OUT}")


if __name__ == "__main__":
    main()
