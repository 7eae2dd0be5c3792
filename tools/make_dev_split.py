"""Split a benchmark folder into dev train/test: segmentation (images/, masks/) or class folders.

For development runs of `medfoundry benchmark jsrt-fewshot` / `kermany-label-efficiency` when no
held-out test folder is at hand: a seeded subset of the training pool becomes a *dev* test
folder, the rest the training pool. A segmentation folder (images/<ID>.png,
masks/<structure>/<ID>.png) is split by image id (`--test` images), an MSD / nnU-Net folder
(imagesTr/, labelsTr/, dataset.json) by case (`--test` cases; dataset.json is copied to both
parts with its case count and any `training` list rewritten); a class-folder tree
(<CLASS>/<images>, e.g. Kermany) by patient (`--test-fraction` of each class's patients, whole
patients only, so no patient is in both parts). The output folders hold symbolic links to the
source files, nothing is copied. Numbers measured on such a split are development numbers,
not test results.

    python tools/make_dev_split.py --source JSRT_DIR --out .data/jsrt_dev --test 40 --seed 0
    python tools/make_dev_split.py --source HIPPOCAMPUS_DIR --out .data/hippo_dev --test 52
    python tools/make_dev_split.py --source KERMANY_DIR --out .data/kermany_dev --test-fraction 0.25
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path


def make_split(source: Path, out: Path, n_test: int, seed: int) -> tuple[int, int]:
    """Link `n_test` seeded image ids (with their masks) into out/test, the rest into out/train."""
    images = sorted(p for p in (source / "images").iterdir() if p.is_file())
    if not images:
        raise SystemExit(f"{source / 'images'}: no images")
    if not 0 < n_test < len(images):
        raise SystemExit(f"--test must be between 1 and {len(images) - 1}, got {n_test}")
    ids = sorted(p.stem for p in images)
    test = set(random.Random(seed).sample(ids, n_test))
    structures = sorted(d.name for d in (source / "masks").iterdir() if d.is_dir())
    for image in images:
        part = out / ("test" if image.stem in test else "train")
        files = [(image, part / "images" / image.name)]
        for s in structures:
            files += [
                (m, part / "masks" / s / m.name)
                for m in (source / "masks" / s).glob(f"{image.stem}.*")
            ]
        for src, dst in files:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(src.resolve())
    (out / "split.txt").write_text(
        f"source: {source.name}\nseed: {seed}\ntest ids ({len(test)}): {' '.join(sorted(test))}\n"
    )
    return len(ids) - len(test), len(test)


def make_msd_split(source: Path, out: Path, n_test: int, seed: int) -> tuple[int, int]:
    """Link `n_test` seeded cases (image + label) into out/test, the rest into out/train."""
    import json

    images = sorted(p for p in (source / "imagesTr").iterdir() if p.name.endswith(".nii.gz"))
    if not 0 < n_test < len(images):
        raise SystemExit(f"--test must be between 1 and {len(images) - 1}, got {n_test}")
    names = [p.name for p in images]
    test = set(random.Random(seed).sample(names, n_test))
    dataset = json.loads((source / "dataset.json").read_text())
    for part in ("train", "test"):
        keep = [n for n in names if (n in test) == (part == "test")]
        for folder in ("imagesTr", "labelsTr"):
            for name in keep:
                src, dst = source / folder / name, out / part / folder / name
                if not src.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.is_symlink() or dst.exists():
                    dst.unlink()
                dst.symlink_to(src.resolve())
        meta = {**dataset, "numTraining": len(keep)}
        if "training" in dataset:  # MSD v1 lists its cases; nnU-Net v2 counts them only
            meta["training"] = [e for e in dataset["training"] if Path(e["image"]).name in keep]
        meta.pop("test", None)
        meta.pop("numTest", None)
        (out / part / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "split.txt").write_text(
        f"source: {source.name}\nseed: {seed}\ntest cases ({len(test)}): {' '.join(sorted(test))}\n"
    )
    return len(names) - len(test), len(test)


def make_class_split(source: Path, out: Path, fraction: float, seed: int) -> tuple[int, int]:
    """Link a seeded `fraction` of each class's patients into out/test, the rest into out/train."""
    from medfoundry.data.label_budgets import patient_classes
    from medfoundry.data.manifest import scan_class_folders

    if not 0 < fraction < 1:
        raise SystemExit(f"--test-fraction must be between 0 and 1, got {fraction}")
    items, classes = scan_class_folders(source)
    by_class: dict[int, list[str]] = {}
    for group, label in sorted(patient_classes(items).items()):
        by_class.setdefault(label, []).append(group)
    rng = random.Random(seed)
    test: set[str] = set()
    for label in sorted(by_class):
        groups = by_class[label]
        test.update(rng.sample(groups, max(1, round(fraction * len(groups)))))
    counts = {"train": 0, "test": 0}
    for item in items:
        part = "test" if item.group in test else "train"
        counts[part] += 1
        dst = out / part / item.path.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(item.path.resolve())
    (out / "split.txt").write_text(
        f"source: {source.name}\nseed: {seed}\nclasses: {' '.join(classes)}\n"
        f"test patients ({len(test)}, {counts['test']} images): {' '.join(sorted(test))}\n"
    )
    return counts["train"], counts["test"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--test", type=int, default=40, help="images held out as the dev test folder")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=None,
        help="class folders: share of each class's patients held out (default 0.25)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if (args.source / "imagesTr").is_dir():
        n_train, n_test = make_msd_split(args.source, args.out, args.test, args.seed)
    elif (args.source / "images").is_dir():
        n_train, n_test = make_split(args.source, args.out, args.test, args.seed)
    else:
        fraction = 0.25 if args.test_fraction is None else args.test_fraction
        n_train, n_test = make_class_split(args.source, args.out, fraction, args.seed)
    print(f"{args.out}: train {n_train} images, test {n_test} images (dev split, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
