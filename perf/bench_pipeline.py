"""Benchmark the input pipeline's share of a pretraining step, per method (issue #15).

Usage: ``python perf/bench_pipeline.py [--quick] [--workers 0 1] [--steps N] [--work DIR]
[--out FILE.json] [--device cpu|cuda|all] [--threads T]``

Each method is built as ``medfoundry pretrain`` builds it: its preset (``load_config`` plus the
small-size overrides below), ``tasks.pretrain.training_stages`` (first stage, first level),
``tasks.pretrain._build`` (backbone + ``methods.build_method``), the train set from
``tasks.pretrain``'s own dataset builders (``_image_data``: images decoded into memory;
``_store_image_data``: the ``prepare-2d --store`` 2D store; ``_volume_data``: random crops of a
``medfoundry prepare`` 3D store), the DataLoader as ``_pretrain`` makes it (``EpochShuffle``,
``drop_last``, ``num_workers``), and ``PretrainModule.configure_optimizers`` (optimiser and
step-wise schedule). Synthetic data is generated in a temporary folder: blob-on-noise PNGs
(``build_corpus_2d`` + ``build_store2d``) and blob NIfTI volumes (``prepare_store``).

Per method, data path and worker count, after ``warm-up`` steps, over ``steps`` steps:

(a) **full step**: ``next()`` on the DataLoader's iterator (and the copy to the device) plus the
    method's forward (``update=True``), backward, optimiser and schedule step;
(b) **model step**: the same forward/backward/step on one pre-fetched batch, repeated.

Reported: images/s of (a) and (b) (median step times; "images" are 3D crops for the volumetric
methods), the median ``next()`` wait inside (a), and the pipeline share ``1 - (a)/(b)``, all of
this run. The goal is a share of at most 5 %. Timed steps stay within one epoch (the data sets
hold more than ``warm-up + steps`` batches), so worker start-up is outside the timing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# shared benchmark plumbing (perf/ is run as scripts, not as a package)
from bench_common import bench_args, pick_devices, report_and_save, run_context, sync
from bench_store2d import write_pngs
from torch.utils.data import DataLoader, Dataset

from medfoundry.config import apply_overrides, load_config
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.store.images2d import open_store2d
from medfoundry.data.unlabeled2d import collect_images
from medfoundry.methods import method_spec
from medfoundry.tasks import pretrain as P
from medfoundry.train.pretrain_module import PretrainModule
from medfoundry.train.resume import EpochShuffle

GOAL_PCT = 5.0
LOAD_SIZE = 128  # 2D corpus side (MoCo/Adam views of 64² are cut from it; MAE sees it whole)

RESNET_2D = "backbone={name: resnet10, width: 0.25, in_channels: 1}"
VIEWS_2D = [
    f"data={{load_size: {LOAD_SIZE}, val_fraction: 0.05, num_workers: 0}}",
    "views.out_size=64",
    "trainer={accelerator: cpu, devices: 1}",
]
OVERRIDES: dict[str, tuple[str, list[str]]] = {
    # (preset, --set pairs): the tiny test configs (tests/conftest.py) scaled up a little
    "adam": (
        "adam",
        [RESNET_2D, *VIEWS_2D, "moco.proj_hidden=128", "moco.proj_dim=64", "moco.queue_size=1024"],
    ),
    "moco": (
        "moco",
        [RESNET_2D, *VIEWS_2D, "moco.proj_hidden=128", "moco.proj_dim=64", "moco.queue_size=1024"],
    ),
    "adam_v2": (
        "adam_v2_cpu",
        [
            RESNET_2D,
            *VIEWS_2D,
            "views.augment.n_local=4",
            "views.augment.local_size=24",
            "views.augment.part_size=32",
            "adam_v2.head_dim=1024",
            "adam_v2.head_hidden=256",
        ],
    ),
    "mae": (
        "mae",
        [
            "backbone={name: swin, in_channels: 1, embed_dim: 16, depths: [1, 1, 1, 1], "
            "num_heads: [1, 1, 2, 2], window_size: 4, patch_size: 4, drop_path: 0.0}",
            f"data={{load_size: {LOAD_SIZE}, val_fraction: 0.05, num_workers: 0}}",
            "trainer={accelerator: cpu, devices: 1}",
        ],
    ),
    "volume_fusion": (
        "volume_fusion_cpu",
        [
            "data={crop_size: [32, 32, 32], crops_per_volume: 4, val_fraction: 0.1, "
            "num_workers: 0}",
            "trainer={accelerator: cpu, devices: 1}",
        ],
    ),
    "voco": (
        "voco_cpu",
        [
            "data={crop_size: [32, 48, 32], crops_per_volume: 2, val_fraction: 0.1, "
            "num_workers: 0}",
            "trainer={accelerator: cpu, devices: 1}",
        ],
    ),
}
METHODS_2D = ["adam", "moco", "adam_v2", "mae"]
METHODS_3D = ["volume_fusion", "voco"]


# --- synthetic data -----------------------------------------------------------------------
def make_corpus_2d(work: Path, n: int) -> Path:
    """A ``prepare-2d --store`` corpus of ``n`` synthetic PNGs at LOAD_SIZE² (with its store)."""
    from medfoundry.data.corpus2d import build_corpus_2d
    from medfoundry.data.store.images2d_build import build_store2d

    src, corpus = work / "src2d", work / "corpus2d"
    write_pngs(src, n, LOAD_SIZE)
    build_corpus_2d([src], corpus, size=LOAD_SIZE, progress=False)
    build_store2d(corpus, progress=False)
    return corpus


def make_store_3d(work: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """A ``medfoundry prepare`` store of ``n`` blob-on-noise NIfTI volumes (as the tests')."""
    import nibabel as nib

    from medfoundry.data.store.build import prepare_store

    root = work / "vols"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for i in range(n):
        c = rng.uniform(0.3, 0.7, size=3) * np.array(shape)
        vol = 100 * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 60.0)
        vol = (vol + 20 + rng.normal(0, 3, vol.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"case{i:03d}.nii.gz")
    store = work / "store3d"
    prepare_store(root, store, modality="MR", crop_foreground=False, progress=False)
    return store


# --- the method and its data, as pretraining builds them -----------------------------------
def method_config(method: str, batch: int) -> dict[str, Any]:
    preset, pairs = OVERRIDES[method]
    cfg = apply_overrides(load_config(preset), [*pairs, f"optim.batch_size={batch}"])
    spec = method_spec(cfg["method"])
    for key, value in spec.forced_options:  # as `_pretrain`
        cfg.setdefault(spec.section, {})[key] = value
    return cfg


def train_set_of(cfg: dict[str, Any], path: str, corpus: Path | None, store3d: Path | None):
    seed = int(cfg.get("seed", 0))
    if path == "3d store":
        return P._volume_data(cfg, [store3d], seed)[0]
    normalization = cfg.setdefault("normalization", dict(XRAY_NORMALIZATION))
    if path == "2d store":
        return P._store_image_data(cfg, open_store2d(corpus / "store2d"), seed, normalization)[0]
    paths = collect_images([corpus])
    return P._image_data(cfg, paths, seed, normalization, progress=False)[0]


def train_loader(cfg: dict[str, Any], train_set: Dataset, workers: int) -> DataLoader:
    """The train DataLoader of `tasks.pretrain._pretrain`."""
    seed = int(cfg.get("seed", 0))
    batch = min(int(cfg["optim"]["batch_size"]), len(train_set))
    return DataLoader(
        train_set,
        batch_size=batch,
        sampler=EpochShuffle(len(train_set), seed),
        drop_last=True,
        num_workers=workers,
    )


def step_fn(
    cfg: dict[str, Any], device: torch.device, total_steps: int
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], float]]:
    """The method (`_build` at the first stage's first level) and one optimiser step on a batch
    as `PretrainModule` takes it (progress schedule, forward, backward, hooks, step, lr step)."""
    torch.manual_seed(int(cfg.get("seed", 0)))
    level = P.training_stages(cfg)[0].levels[0]
    method = P._build(cfg, level).to(device)
    method.train()
    module = PretrainModule(method, dict(cfg["optim"]), total_steps, seed=int(cfg.get("seed", 0)))
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    counter = {"i": 0}

    def step(batch: torch.Tensor) -> float:
        if hasattr(method, "set_progress"):
            method.set_progress(counter["i"] / total_steps)
        counter["i"] += 1
        out = method(batch, update=True)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if hasattr(method, "before_optimizer_step"):
            method.before_optimizer_step(0)
        opt.step()
        sched.step()
        return float(out["loss"].detach())  # synchronises

    return method, step


def bench_case(
    method: str,
    path: str,
    workers: int,
    batch: int,
    steps: int,
    warmup: int,
    device: torch.device,
    corpus: Path | None,
    store3d: Path | None,
) -> dict[str, Any]:
    cfg = method_config(method, batch)
    train_set = train_set_of(cfg, path, corpus, store3d)
    loader = train_loader(cfg, train_set, workers)
    if len(loader) < warmup + steps + 1:
        raise SystemExit(f"{method}/{path}: {len(loader)} batches < warm-up + steps + 1")
    _, step = step_fn(cfg, device, 2 * (warmup + steps) + 2)

    # (a) full steps: next() + to(device) + model step
    it: Iterator[torch.Tensor] = iter(loader)
    for _ in range(warmup):
        step(next(it).to(device, non_blocking=True))
    sync(device)
    full, waits, losses = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch_t = next(it).to(device, non_blocking=True)
        t1 = time.perf_counter()
        losses.append(step(batch_t))
        sync(device)
        t2 = time.perf_counter()
        full.append(t2 - t0)
        waits.append(t1 - t0)
    fixed = next(it).to(device)
    del it  # stops the workers

    # (b) model steps on one pre-fetched batch
    for _ in range(warmup):
        step(fixed)
    sync(device)
    model = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step(fixed))
        sync(device)
        model.append(time.perf_counter() - t0)

    n = int(fixed.shape[0])
    full_s, model_s = statistics.median(full), statistics.median(model)
    ips_full, ips_model = n / full_s, n / model_s
    return {
        "method": method,
        "path": path,
        "workers": workers,
        "device": device.type,
        "batch": n,
        "input_shape": list(fixed.shape[1:]),
        "train_items": len(train_set),
        "steps": steps,
        "warmup": warmup,
        "full_step_s_median": full_s,
        "model_step_s_median": model_s,
        "next_wait_s_median": statistics.median(waits),
        "images_per_s_full": ips_full,
        "images_per_s_model": ips_model,
        "pipeline_share_pct": 100.0 * (1.0 - ips_full / ips_model),
        "next_wait_share_pct": 100.0 * statistics.median(waits) / full_s,
        "loss_finite": bool(np.isfinite(losses).all()),
    }


def print_header() -> None:
    head = (
        f"{'method':<14}{'path':<11}{'dev':<5}{'wk':>3}{'batch':>6}{'full img/s':>11}"
        f"{'model img/s':>12}{'next() ms':>10}{'share %':>9}"
    )
    print(head)
    print("-" * len(head))


def print_row(r: dict[str, Any]) -> None:
    print(
        f"{r['method']:<14}{r['path']:<11}{r['device']:<5}{r['workers']:>3}{r['batch']:>6}"
        f"{r['images_per_s_full']:>11.1f}{r['images_per_s_model']:>12.1f}"
        f"{1000 * r['next_wait_s_median']:>10.2f}{r['pipeline_share_pct']:>9.1f}",
        flush=True,
    )


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", default=METHODS_2D + METHODS_3D)
    parser.add_argument("--steps", type=int, help="timed steps per case (default 15, quick 3)")
    parser.add_argument("--work", type=Path, help="folder for the synthetic data (default: temp)")


def main(argv: list[str] | None = None) -> int:
    args = bench_args(
        __doc__.splitlines()[0],
        None,
        "fewer images and steps, workers 0 only",
        argv,
        _add_arguments,
    )
    devices = pick_devices(args.device)
    if not devices:
        return 1
    steps = args.steps or (3 if args.quick else 15)
    warmup = 1 if args.quick else 2
    workers = [0] if args.quick and args.workers == [0, 1] else args.workers
    batch_2d, batch_3d = 16, 2
    # enough batches for warm-up + steps + the fixed batch inside one epoch (95 % train split)
    n_2d = int((warmup + steps + 2) * batch_2d / 0.95) + batch_2d
    n_3d = int((warmup + steps + 2) * batch_3d / 0.9 / 2) + 4  # >= 2 crops per case

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    results: dict[str, Any] = {
        **run_context(args.quick),
        "goal_pipeline_share_pct": GOAL_PCT,
        "images_2d": n_2d,
        "volumes_3d": n_3d,
        "cases": [],
    }
    try:
        t0 = time.perf_counter()
        want_2d = any(m in METHODS_2D for m in args.methods)
        want_3d = any(m in METHODS_3D for m in args.methods)
        corpus = make_corpus_2d(work, n_2d) if want_2d else None
        store3d = make_store_3d(work, n_3d, (40, 56, 40)) if want_3d else None
        results["data_build_s"] = time.perf_counter() - t0
        print_header()
        for device in devices:
            for method in args.methods:
                paths = ["3d store"] if method in METHODS_3D else ["in-memory", "2d store"]
                batch = batch_3d if method in METHODS_3D else batch_2d
                for path in paths:
                    for w in workers:
                        row = bench_case(
                            method, path, w, batch, steps, warmup, device, corpus, store3d
                        )
                        results["cases"].append(row)
                        print_row(row)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    above = [
        f"{r['method']}/{r['path']}/w{r['workers']}/{r['device']} ({r['pipeline_share_pct']:.1f} %)"
        for r in results["cases"]
        if r["pipeline_share_pct"] > GOAL_PCT
    ]
    if above:
        print(f"pipeline share above the {GOAL_PCT:.0f} % goal: {', '.join(above)}")
    report_and_save(results, args.out, [], "pipeline", GOAL_PCT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
