"""Benchmark the 2D store: read throughput against decoding PNGs, and peak memory of an epoch.

Usage: ``python perf/bench_store2d.py [--quick] [--images N] [--size S] [--workers 0 1 2]
[--memory-counts 10000 50000 200000] [--in-memory-count 10000] [--work DIR] [--out FILE.json]``

(a) **Throughput**: a synthetic corpus (``--images`` blobs on noise at ``--size``², written by
``prepare-2d``'s ``build_corpus_2d``, then ``build_store2d``), read one epoch in random order
through a DataLoader (batch ``--batch``, each ``--workers`` count) as model-ready tensors:
``load_2d`` on each PNG (what pretraining decodes today) against ``Store2DDataset`` (memory map,
no decoding), plus the raw uint8 read of the store (no normalisation: what the store itself
costs). Both sides read from the page cache (the corpus was just written); images/s exclude the
first batch (worker start). The ratio store/PNG is of this run.

(b) **Peak memory** of one epoch of the pretraining train set (``tasks.pretrain``'s own
``_store_image_data`` / ``_image_data``, batch ``--batch``, no workers), each in a fresh
subprocess: from synthetic stores of each ``--memory-counts`` (written directly with
``write_store2d``; a count whose store would not fit the free disk is skipped), against the
in-memory tensor path (``load_images``) on a PNG folder of ``--in-memory-count`` images. Reported:
``ru_maxrss`` (peak resident set), and the peaks of anonymous (private) and file-backed resident
memory sampled every batch from ``/proc/self/status``: the store's pages are file-backed page
cache (clean, shared, reclaimed under pressure), the tensor is anonymous memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# shared benchmark plumbing (perf/ is run as scripts, not as a package)
from bench_common import run_context
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from medfoundry.data.image2d import load_2d
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.store.images2d import Store2D, Store2DDataset, open_store2d


def synthetic_images(n: int, size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n`` uint8 (size, size) images: a bright blob at a random place on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    width = (size / 6.0) ** 2
    for _ in range(n):
        cy, cx = rng.uniform(size / 4, 3 * size / 4, size=2)
        blob = 120.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / width)
        noise = rng.integers(0, 40, (size, size), dtype=np.uint8)
        yield (60.0 + blob).astype(np.uint8) + noise


def write_pngs(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` synthetic images as PNGs in ``folder`` (two sub-folders)."""
    for i, image in enumerate(synthetic_images(n, size, seed)):
        sub = folder / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(sub / f"img{i:06d}.png", compress_level=3)


class PngDataset(Dataset):
    """Today's decode path: ``load_2d`` on each file."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_2d(self.paths[i], self.size, normalization=XRAY_NORMALIZATION)


class RawStoreDataset(Dataset):
    """The store's uint8 images as they are (what reading the store costs by itself)."""

    def __init__(self, store: Store2D) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.store[i]))


def epoch_rate(dataset: Dataset, batch: int, workers: int, seed: int = 0) -> tuple[float, Any]:
    """Images/s of one random-order epoch (after the first batch) and the first batch."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers)
    it = iter(loader)
    first = next(it)
    t0, n = time.perf_counter(), 0
    for images in it:
        n += len(images)
    return n / max(time.perf_counter() - t0, 1e-9), first


def bench_throughput(work: Path, n: int, size: int, batch: int, workers: list[int]) -> dict:
    """Part (a): build the corpus and its store, then images/s of each reader."""
    from medfoundry.data.corpus2d import build_corpus_2d
    from medfoundry.data.store.images2d_build import build_store2d
    from medfoundry.data.unlabeled2d import collect_images

    src, corpus = work / "src", work / "corpus"
    t0 = time.perf_counter()
    write_pngs(src, n, size)
    t1 = time.perf_counter()
    build_corpus_2d([src], corpus, size=size, progress=False)
    t2 = time.perf_counter()
    build_store2d(corpus, progress=False)
    t3 = time.perf_counter()
    paths = collect_images([corpus])
    store = open_store2d(corpus / "store2d")
    png_bytes = sum(p.stat().st_size for p in paths)
    store_bytes = sum(p.stat().st_size for p in (corpus / "store2d").glob("shard_*.npy"))
    readers = {
        "png load_2d": PngDataset(paths, size),
        "store tensors": Store2DDataset(store, size, 1, XRAY_NORMALIZATION),
        "store raw uint8": RawStoreDataset(store),
    }
    rows = []
    for w in workers:
        rates, firsts = {}, {}
        for name, dataset in readers.items():
            rates[name], firsts[name] = epoch_rate(dataset, batch, w)
        rows.append(
            {
                "workers": w,
                **{f"{k} img/s": v for k, v in rates.items()},
                "ratio store/png": rates["store tensors"] / rates["png load_2d"],
                "same tensors": bool(torch.equal(firsts["png load_2d"], firsts["store tensors"])),
            }
        )
    return {
        "images": n,
        "size": size,
        "batch": batch,
        "write_pngs_s": t1 - t0,
        "build_corpus_s": t2 - t1,
        "build_store_s": t3 - t2,
        "corpus_png_mib": png_bytes / 2**20,
        "store_mib": store_bytes / 2**20,
        "rows": rows,
    }


def _status_kib() -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of this process (KiB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1])
    return out


def memory_child(kind: str, root: Path, size: int, batch: int) -> dict[str, Any]:
    """One epoch of the pretraining train set from a store or a PNG folder; memory peaks."""
    from medfoundry.tasks.pretrain import _image_data, _store_image_data
    from medfoundry.train.resume import EpochShuffle

    base = _status_kib()
    cfg = {"data": {"load_size": size, "val_fraction": 0.05}, "backbone": {"in_channels": 1}}
    norm = dict(XRAY_NORMALIZATION)
    t0 = time.perf_counter()
    if kind == "store":
        train, _val, n = _store_image_data(cfg, open_store2d(root), 0, norm)
    else:
        from medfoundry.data.unlabeled2d import collect_images

        train, _val, n = _image_data(cfg, collect_images([root]), 0, norm, progress=False)
    t_build = time.perf_counter() - t0
    peak = dict(base)
    loader = DataLoader(
        train, batch_size=batch, sampler=EpochShuffle(len(train), 0), drop_last=True
    )
    seen = 0
    for images in loader:
        seen += len(images)
        for key, value in _status_kib().items():
            peak[key] = max(peak.get(key, 0), value)
    return {
        "kind": kind,
        "images": n,
        "train_images_read": seen,
        "build_s": t_build,
        "epoch_s": time.perf_counter() - t0 - t_build,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "baseline_rss_mib": base["VmRSS"] / 1024,
        "peak_anon_mib": peak["RssAnon"] / 1024,
        "peak_file_mib": peak["RssFile"] / 1024,
    }


def _run_child(kind: str, root: Path, size: int, batch: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--child-root", str(root)]
    cmd += ["--size", str(size), "--batch", str(batch), "--threads", str(threads)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(
    work: Path, counts: list[int], in_memory: int, size: int, batch: int, threads: int
) -> dict:
    """Part (b): peak memory of one epoch per store size, and of the in-memory path."""
    from medfoundry.data.store.images2d_build import write_store2d

    rows, skipped = [], []
    if in_memory:
        folder = work / f"pngs_{in_memory}"
        write_pngs(folder, in_memory, size, seed=1)
        rows.append(_run_child("in-memory", folder, size, batch, threads))
        shutil.rmtree(folder)
    for n in counts:
        need = n * size * size
        free = shutil.disk_usage(work).free
        if need > free - 2 * 2**30:
            skipped.append(
                {"images": n, "why": f"needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} free"}
            )
            continue
        root = work / f"store_{n}"
        t0 = time.perf_counter()
        items = (
            (image, {"file": f"img{i:06d}.png"})
            for i, image in enumerate(synthetic_images(n, size, seed=1))
        )
        write_store2d(root, size, n, items, progress=False)
        write_s = time.perf_counter() - t0
        rows.append({**_run_child("store", root, size, batch, threads), "write_s": write_s})
        shutil.rmtree(root)
    return {"size": size, "batch": batch, "rows": rows, "skipped": skipped}


def _print(results: dict[str, Any]) -> None:
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of "
        f"{results['cpu_count']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f}"
    )
    a = results["throughput"]
    print(
        f"\n(a) one random-order epoch, batch {a['batch']}, {a['images']} images at {a['size']}²: "
        f"corpus {a['corpus_png_mib']:.1f} MiB of PNG, store {a['store_mib']:.1f} MiB "
        f"(build: corpus {a['build_corpus_s']:.1f} s, store {a['build_store_s']:.1f} s)"
    )
    print(
        f"{'workers':>8}{'PNG img/s':>12}{'store img/s':>13}{'raw img/s':>12}{'store/PNG':>11}{'same':>6}"
    )
    for r in a["rows"]:
        print(
            f"{r['workers']:>8}{r['png load_2d img/s']:>12.0f}{r['store tensors img/s']:>13.0f}"
            f"{r['store raw uint8 img/s']:>12.0f}{r['ratio store/png']:>10.2f}x{str(r['same tensors']):>6}"
        )
    b = results["memory"]
    print(
        f"\n(b) peak memory of one pretraining epoch (train set, batch {b['batch']}, {b['size']}²)"
    )
    print(
        f"{'path':>10}{'images':>9}{'build s':>9}{'epoch s':>9}{'maxrss MiB':>12}{'anon MiB':>10}{'file MiB':>10}"
    )
    for r in b["rows"]:
        print(
            f"{r['kind']:>10}{r['images']:>9}{r['build_s']:>9.1f}{r['epoch_s']:>9.1f}"
            f"{r['ru_maxrss_mib']:>12.0f}{r['peak_anon_mib']:>10.0f}{r['peak_file_mib']:>10.0f}"
        )
    for s in b["skipped"]:
        print(f"skipped {s['images']} images: {s['why']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    parser.add_argument("--images", type=int, help="corpus images for (a) (default 5000)")
    parser.add_argument("--size", type=int, default=128, help="image side (default 128)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--memory-counts", type=int, nargs="*", help="store sizes for (b)")
    parser.add_argument("--in-memory-count", type=int, help="images of the in-memory path (b)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("docs/bench/bench_store2d_cpu.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(memory_child(args.child, args.child_root, args.size, args.batch)))
        return 0
    images = args.images or (600 if args.quick else 5000)
    counts = args.memory_counts
    if counts is None:
        counts = [2000, 5000] if args.quick else [10000, 50000, 200000]
    in_memory = args.in_memory_count
    if in_memory is None:
        in_memory = 2000 if args.quick else 10000
    results: dict[str, Any] = run_context(args.quick)
    with tempfile.TemporaryDirectory(prefix="bench_store2d_", dir=args.work) as tmp:
        work = Path(tmp)
        results["throughput"] = bench_throughput(work, images, args.size, args.batch, args.workers)
        results["memory"] = bench_memory(
            work, counts, in_memory, args.size, args.batch, args.threads
        )
    results["loadavg_after"] = os.getloadavg()
    _print(results)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
