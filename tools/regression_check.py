"""Regression check for refactors: every pretraining method, every benchmark and the demo at a
tiny config on tiny generated data, reduced to their numbers (issue #13).

Run it once on the code before a change and once after; the second run compares:

    OMP_NUM_THREADS=1 python tools/regression_check.py --out before.json
    OMP_NUM_THREADS=1 python tools/regression_check.py --out after.json --compare before.json

Everything runs through the `medfoundry` CLI in subprocesses (`python -m medfoundry.cli`), so
``PYTHONPATH=<other checkout>/src`` checks another version of the code with this same script.
The numbers are every value in each run's ``results.json`` (benchmarks, demo) and a digest of
each tensor of each pretraining checkpoint, without timings and paths; the comparison is exact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_MAE, TINY_PRETRAIN_FLAGS, _make_jsrt_like  # noqa: E402
from tests.synthetic3d import write_blob_msd  # noqa: E402
from tests.tasks.test_pretrain_adam_v2 import TINY as ADAM_V2_TINY  # noqa: E402

# Keys whose values differ between identical runs (wall times) or name this run's folders.
VOLATILE = {"seconds", "train_seconds", "time", "elapsed", "train_data", "test_data", "stores"}
VOLATILE |= {"checkpoint", "out_dir", "root", "path", "git_commit", "python", "created", "like"}

TINY_3D = "backbone={name: resnet10, width: 0.125, in_channels: 1, spatial_dims: 3}"
SMALL_2D = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}


def kermany_like(root: Path, first: int, n: int, seed: int) -> Path:
    """NORMAL (noise, IM-NNNN-000k.jpeg) and PNEUMONIA (a blob, personN_bacteria_k.jpeg)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    counter = 0
    for p in range(first, first + n):
        for k in range(1 + (p % 3 == 0)):
            counter += 1
            cy, cx = rng.integers(10, 22, size=2)
            blob = 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
            for cls, img, name in (
                ("NORMAL", 90 + rng.normal(0, 25, (32, 32)), f"IM-{p:04d}-{k + 1:04d}.jpeg"),
                (
                    "PNEUMONIA",
                    60 + blob + rng.normal(0, 8, (32, 32)),
                    f"person{p}_bacteria_{counter}.jpeg",
                ),
            ):
                (root / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / name)
    return root


def cli(*args: str) -> None:
    """Run ``medfoundry ARGS`` in a subprocess; stop with its output when it fails."""
    cmd = [sys.executable, "-m", "medfoundry.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stdout}\n{done.stderr}")


def sets(pairs: list[str]) -> list[str]:
    return [x for kv in pairs for x in ("--set", kv)]


def numbers(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a JSON value to {path: number or string}, leaving out the volatile keys."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in VOLATILE:
                out |= numbers(v, f"{prefix}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out |= numbers(v, f"{prefix}[{i}]")
    else:
        out[prefix] = value
    return out


def tensor_digests(checkpoint: Path) -> dict[str, str]:
    """sha1 of every tensor's bytes in the checkpoint folder's safetensors files."""
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(checkpoint.glob("*.safetensors")):
        for k, v in sorted(load_file(f).items()):
            out[f"{f.name}:{k}"] = hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()
    return out


def pretrain_runs(work: Path, xrays: Path, store: Path) -> dict[str, Path]:
    """Tiny pretraining of every method; returns {method: run folder}."""
    runs = {
        m: work / "runs" / m for m in ("adam", "moco", "mae", "adam_v2", "volume_fusion", "voco")
    }
    for m in ("adam", "moco"):
        extra = ["--set", "levels=[0, 2]"] if m == "adam" else []
        cli(
            "pretrain",
            "--method",
            m,
            "--data",
            str(xrays),
            "--out",
            str(runs[m]),
            *TINY_PRETRAIN_FLAGS,
            *extra,
        )
    cli(
        "pretrain",
        "--method",
        "mae",
        "--data",
        str(xrays),
        "--out",
        str(runs["mae"]),
        "--no-progress",
        *sets(TINY_MAE),
    )
    adam_v2 = [*ADAM_V2_TINY, "optim.batch_size=4"]
    cli(
        "pretrain",
        "--method",
        "adam_v2",
        "--data",
        str(xrays),
        "--out",
        str(runs["adam_v2"]),
        "--no-progress",
        *sets(adam_v2),
    )
    common3d = [
        TINY_3D,
        "epochs=2",
        "optim.batch_size=2",
        "data.val_fraction=0.2",
        "trainer={accelerator: cpu, devices: 1}",
    ]
    vf = ["data.crop_size=[32, 32, 32]", "volume_fusion.decoder_channels=[8, 8, 8, 8, 8]"]
    voco = ["data.crop_size=[16, 32, 32]", "voco={num_base: 2, proj_hidden: 32, proj_dim: 16}"]
    for m, extra in (("volume_fusion", vf), ("voco", voco)):
        cli(
            "pretrain",
            "--method",
            m,
            "--data",
            str(store),
            "--out",
            str(runs[m]),
            "--no-progress",
            *sets(common3d + extra),
        )
    return runs


def folders(command: str, train: Path, test: Path) -> list[str]:
    """``benchmark COMMAND --train-data TRAIN --test-data TEST``."""
    return ["benchmark", command, "--train-data", str(train), "--test-data", str(test)]


def write_config(path: Path, base: str, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"extends": base, **values}))
    return path


def benchmarks(work: Path, data: dict[str, Path], runs: dict[str, Path]) -> dict[str, Path]:
    """Every benchmark at a tiny config (lr tuning on); returns {benchmark: out folder}."""
    out = {b: work / "bench" / b for b in ("jsrt", "kermany", "hippocampus", "eve")}
    jsrt_cfg = write_config(
        work / "jsrt.yaml",
        "jsrt_fewshot_cpu",
        {
            "shots": [2, 3],
            "repeats": 2,
            "val_size": 2,
            "image_size": 32,
            "backbone": SMALL_2D,
            "decoder_channels": [16, 8, 8, 8, 8],
            "steps": 4,
            "val_every": 2,
            "batch_size": 2,
            "tune": {"lr": [1e-3, 3e-3]},
            "accelerator": "cpu",
        },
    )
    jsrt = folders("jsrt-fewshot", data["jsrt_train"], data["jsrt_test"])
    jsrt += ["--config", str(jsrt_cfg), "--no-progress"]
    cli(*jsrt, "--pretrained", str(runs["adam"]), "none", "--out", str(out["jsrt"]))
    merged = merged_jsrt(work, jsrt, runs["adam"])
    if merged is not None:
        out["jsrt_merged"] = merged
    kermany_cfg = write_config(
        work / "kermany.yaml",
        "kermany_label_efficiency_cpu",
        {
            "budgets": [4, "100%"],
            "repeats": 2,
            "val_fraction": 0.25,
            "val_max_patients": 2,
            "image_size": 32,
            "backbone": SMALL_2D,
            "steps": 4,
            "epochs": 1,
            "max_steps": 6,
            "val_checks": 2,
            "batch_size": 4,
            "accelerator": "cpu",
            "tune": {"finetune": [1e-3, 3e-3], "linear_probe": [1e-2, 1e-1]},
        },
    )
    kermany = folders("kermany-label-efficiency", data["kermany_train"], data["kermany_test"])
    cli(
        *kermany,
        "--pretrained",
        str(runs["adam"]),
        str(runs["mae"]),
        "--out",
        str(out["kermany"]),
        "--config",
        str(kermany_cfg),
        "--no-progress",
    )
    hippo_cfg = write_config(
        work / "hippocampus.yaml",
        "hippocampus_fewshot_cpu",
        {
            "budgets": [2, "all"],
            "repeats": 1,
            "val_size": 2,
            "patch_size": [32, 32, 32],
            "resnet_unet": {
                "backbone": {"name": "resnet10", "width": 0.125},
                "decoder_channels": [8] * 5,
            },
            "steps": 4,
            "val_every": 2,
            "batch_size": 2,
            "accelerator": "cpu",
            "tune": {"lr": [1e-3, 3e-3]},
        },
    )
    hippo = folders("hippocampus-fewshot", data["msd_train"], data["msd_test"])
    cli(
        *hippo,
        "--pretrained",
        str(runs["volume_fusion"]),
        "none",
        "--out",
        str(out["hippocampus"]),
        "--config",
        str(hippo_cfg),
        "--no-progress",
    )
    eve = ["crop_size=24", "stride=8", "references=2", "knn_k=3", "composition.wholes_per_scale=2"]
    cli(
        *folders("eve", data["jsrt_train"], data["jsrt_test"]),
        "--pretrained",
        str(runs["adam"]),
        "--out",
        str(out["eve"]),
        "--no-progress",
        *sets(eve),
    )
    return out


def merged_jsrt(work: Path, jsrt: list[str], adam: Path) -> Path | None:
    """The JSRT benchmark as two processes (``--arms``), merged; None when the code has no
    ``--arms`` (it then cannot run a checkpoint arm without its scratch arm)."""
    helptext = subprocess.run(
        [sys.executable, "-m", "medfoundry.cli", *jsrt[:2], "--help"],
        capture_output=True,
        text=True,
    ).stdout
    if "--arms" not in helptext:
        return None
    both = ["--pretrained", str(adam), "none"]
    into, other = work / "bench" / "jsrt_merged", work / "bench" / "jsrt_scratch_only"
    cli(*jsrt, *both, "--arms", "scratch", "--out", str(other))
    cli(*jsrt, *both, "--arms", f"adam-{adam.name}", "--out", str(into))
    cli("benchmark", "merge", "--into", str(into), str(other))
    cli(*jsrt, *both, "--out", str(into))
    return into


def collect(work: Path) -> dict[str, Any]:
    """Make the data, run everything, return {name: numbers}."""
    data = {
        "jsrt_train": _make_jsrt_like(work / "jsrt_train", [f"tr{i:02d}" for i in range(10)]),
        "jsrt_test": _make_jsrt_like(work / "jsrt_test", ["te0", "te1", "te2"], seed=1),
        "kermany_train": kermany_like(work / "kermany_train", 1, 10, seed=1),
        "kermany_test": kermany_like(work / "kermany_test", 100, 5, seed=2),
        "msd_train": write_blob_msd(work / "msd_train", 7, seed=0),
        "msd_test": write_blob_msd(work / "msd_test", 3, seed=1, prefix="test"),
    }
    volumes = write_blob_msd(work / "msd_unlabeled", 6, shape=(40, 40, 24), seed=2, prefix="vol")
    store = work / "store3d"
    cli("prepare", "--data", str(volumes), "--out", str(store), "--no-crop", "--no-progress")
    runs = pretrain_runs(work, data["jsrt_train"] / "images", store)
    found: dict[str, Any] = {}
    for m, run in runs.items():
        found[f"pretrain/{m}"] = tensor_digests(run / "checkpoint")
    for b, folder in benchmarks(work, data, runs).items():
        found[f"benchmark/{b}"] = numbers(json.loads((folder / "results.json").read_text()))
    if "benchmark/jsrt_merged" in found:  # two processes merged = one process
        one, two = found["benchmark/jsrt"], found.pop("benchmark/jsrt_merged")
        diff = sorted(k for k in set(one) | set(two) if one.get(k) != two.get(k))
        print(
            f"{'SAME' if not diff else 'DIFF'} jsrt merged from two --arms processes"
            + (f": {diff[:5]}" if diff else "")
        )
        found["merge_check"] = {"differences": len(diff)}
    cli("demo", "--quick", "--out", str(work / "demo"), "--no-progress")
    found["demo"] = numbers(json.loads((work / "demo" / "results.json").read_text()))
    return found


def compare(now: dict[str, Any], ref: dict[str, Any]) -> int:
    """Print every difference; returns the number of groups with a changed or lost value.

    Keys only in ``now`` (a layout that gained a field) are listed but do not fail."""
    bad = 0
    for name in sorted(set(now) | set(ref)):
        a, b = (
            {k: v for k, v in d.get(name, {}).items() if k.rsplit("/", 1)[-1] not in VOLATILE}
            for d in (now, ref)
        )
        changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        lost = sorted(set(b) - set(a))
        added = sorted(set(a) - set(b))
        status = "DIFF" if changed or lost else "SAME"
        notes = [
            f"{len(x)} {w}"
            for x, w in ((changed, "changed"), (lost, "lost"), (added, "added"))
            if x
        ]
        print(f"{status} {name}: {len(b)} values" + (f" ({', '.join(notes)})" if notes else ""))
        for k in [*changed, *lost][:8]:
            print(f"    {k}: {b.get(k, '<absent>')!r} -> {a.get(k, '<absent>')!r}")
        for k in added[:4]:
            print(f"    added {k}: {a[k]!r}")
        bad += bool(changed or lost)
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="JSON file of the numbers")
    p.add_argument("--compare", type=Path, help="numbers of a reference run to compare with")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        found = collect(work)
    args.out.write_text(json.dumps(found, indent=1, sort_keys=True))
    print(f"{sum(len(v) for v in found.values())} values in {len(found)} groups -> {args.out}")
    if args.compare:
        return 1 if compare(found, json.loads(args.compare.read_text())) else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
