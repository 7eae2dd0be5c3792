"""Benchmark 3D random crops: the prepared store (memory-mapped .npy) against MONAI on .nii.gz.

Usage: ``python perf/bench_store3d.py [--data DIR] [--ct FILE] [--quick] [--threads N]
[--out FILE.json]``

Both sides run in the same process, one crop per item the way a ``Dataset.__getitem__`` serves
a DataLoader, after one warm-up pass over every file (both read from the page cache):

- **store**: ``StoreCropDataset`` items (``np.load(mmap_mode="r")`` + slicing, float16 ->
  float32, torch tensor), from a store that ``prepare_store`` writes into a temporary folder
  (its wall time is reported too).
- **MONAI**: ``LoadImaged`` + ``EnsureChannelFirstd`` + ``RandSpatialCropd`` (fixed size) on the
  original ``.nii.gz`` files, i.e. a ``Dataset`` without a cache: every crop decodes its volume.

Scenarios: the hippocampus MSD folder (``--data``, image + label, 32x48x32 crops) and a CT
(``--ct``, copied 4 times into a plain folder, image only, 96^3 crops). The speed-up goal is
10x. MONAI does not pad volumes smaller than the crop (it returns a smaller crop); the store
pads, so it does at least as much work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# shared benchmark plumbing (perf/ is run as scripts, not as a package)
from bench_common import run_context

from medfoundry.data.store.build import StoreCropDataset, open_store, prepare_store

SPEEDUP_GOAL = 10.0


def _monai_pipeline(keys: list[str], size: tuple[int, int, int], seed: int) -> Any:
    """MONAI's usual uncached crop pipeline for NIfTI files."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, RandSpatialCropd

    pipeline = Compose(
        [
            LoadImaged(keys=keys),
            EnsureChannelFirstd(keys=keys),
            RandSpatialCropd(keys=keys, roi_size=size, random_size=False),
        ]
    )
    pipeline.set_random_state(seed=seed)
    return pipeline


def _rate(fn: Any, n: int) -> float:
    """Calls of ``fn(k)`` per second over ``k = 0 .. n-1``."""
    t0 = time.perf_counter()
    for k in range(n):
        fn(k)
    return n / (time.perf_counter() - t0)


def bench_scenario(
    name: str,
    store_dir: Path,
    files: list[dict[str, str]],
    size: tuple[int, int, int],
    store_crops: int,
    monai_crops: int,
) -> dict[str, Any]:
    """Crops/s of the store and of MONAI for one dataset, and the speed-up."""
    store = open_store(store_dir)
    dataset = StoreCropDataset(store, size, crops_per_volume=1000, seed=0)
    keys = list(files[0])
    pipeline = _monai_pipeline(keys, size, seed=0)
    rng = np.random.default_rng(0)
    order = rng.integers(0, len(dataset), store_crops)
    for k in range(0, len(dataset), dataset.crops_per_volume):  # warm-up: every case once
        dataset[k]
    for item in files:
        pipeline(dict(item))
    store_rate = _rate(lambda k: dataset[int(order[k])], store_crops)
    picks = rng.integers(0, len(files), monai_crops)
    monai_rate = _rate(lambda k: pipeline(dict(files[int(picks[k])])), monai_crops)
    example = dataset[0]
    crop = example[0] if isinstance(example, tuple) else example
    return {
        "scenario": name,
        "cases": len(store),
        "crop_size": list(size),
        "keys": keys,
        "store_crop_shape": list(crop.shape),
        "store_crops": store_crops,
        "monai_crops": monai_crops,
        "store_crops_per_s": store_rate,
        "monai_crops_per_s": monai_rate,
        "speedup": store_rate / monai_rate,
    }


def _prepare(data: Path, out: Path) -> dict[str, Any]:
    """Prepare a store and report its wall time and size."""
    t0 = time.perf_counter()
    summary = prepare_store(data, out, progress=False)
    return {
        "prepare_s": time.perf_counter() - t0,
        "store_mib": summary["bytes"] / 2**20,
        "target_spacing": summary["settings"]["target_spacing"],
        "cases": summary["counts"]["cases"],
    }


def _print(results: dict[str, Any]) -> None:
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of "
        f"{results['cpu_count']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f} "
        "(CPU timings mean little unless the machine is otherwise idle)"
    )
    print("\nRandom 3D crops, one per item: prepared store vs MONAI LoadImaged+RandSpatialCropd")
    print(
        f"{'scenario':<14}{'cases':>6}{'crop':>12}{'prepare s':>11}{'store MiB':>11}"
        f"{'store/s':>10}{'MONAI/s':>10}{'speed-up':>10}"
    )
    for r in results["scenarios"]:
        crop = "x".join(str(s) for s in r["crop_size"])
        print(
            f"{r['scenario']:<14}{r['cases']:>6}{crop:>12}{r['prepare_s']:>11.2f}"
            f"{r['store_mib']:>11.1f}{r['store_crops_per_s']:>10.1f}"
            f"{r['monai_crops_per_s']:>10.1f}{r['speedup']:>9.1f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/hippocampus"))
    parser.add_argument(
        "--ct", type=Path, default=Path("../shared/data/ct_abdomen/example_ct.nii.gz")
    )
    parser.add_argument("--quick", action="store_true", help="fewer crops")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/bench_store3d_cpu.json"))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {**run_context(args.quick), "scenarios": []}
    scale = 1 if args.quick else 4
    with tempfile.TemporaryDirectory(prefix="bench_store3d_") as tmp:
        work = Path(tmp)
        if args.data.is_dir():
            prep = _prepare(args.data, work / "hippo_store")
            files = [
                {"image": str(p), "label": str(args.data / "labelsTr" / p.name)}
                for p in sorted((args.data / "imagesTr").glob("*.nii.gz"))
            ]
            row = bench_scenario(
                "hippocampus", work / "hippo_store", files, (32, 48, 32), 500 * scale, 50 * scale
            )
            results["scenarios"].append(prep | row)
        if args.ct.is_file():
            folder = work / "ct"
            folder.mkdir()
            for k in range(4):
                shutil.copy(args.ct, folder / f"ct_{k}.nii.gz")
            prep = _prepare(folder, work / "ct_store")
            files = [{"image": str(p)} for p in sorted(folder.glob("*.nii.gz"))]
            row = bench_scenario(
                "ct_abdomen x4", work / "ct_store", files, (96, 96, 96), 50 * scale, 8 * scale
            )
            results["scenarios"].append(prep | row)
    if not results["scenarios"]:
        print(f"no data: neither {args.data} nor {args.ct} exists")
        return 1
    results["loadavg_after"] = os.getloadavg()
    _print(results)
    below = [r["scenario"] for r in results["scenarios"] if r["speedup"] < SPEEDUP_GOAL]
    if below:
        print(f"speed-up below the {SPEEDUP_GOAL:.0f}x goal: {', '.join(below)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
