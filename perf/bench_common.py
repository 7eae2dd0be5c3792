"""What every benchmark here shares: devices, peak memory, timing loops, the run's context.

Imported by `bench_adam.py` and `bench_mae.py` (run them from the repository root as scripts;
Python puts `perf/` on the path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


# --- memory -------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the block: CUDA allocator peak, or process peak RSS on CPU (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None
        self.baseline_mib: float | None = None
        self.note = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            reset = _reset_peak_rss()
            rss = _proc_status_kb("VmRSS")
            self.baseline_mib = None if rss is None else rss / 1024
            self.note = "peak RSS" if reset else "peak RSS since process start (reset failed)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.note = "max_memory_allocated"
        else:
            hwm = _proc_status_kb("VmHWM")
            self.peak_mib = None if hwm is None else hwm / 1024


# --- timing -------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Median wall-clock seconds of ``fn`` over ``repeats`` calls after one warm-up call, and
    the last call's result (to check that two implementations agree)."""
    out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def training_step(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    opt: torch.optim.Optimizer,
    generator: torch.Generator,
    bf16: bool = False,
) -> Callable[[], float]:
    """One SSL step as a closure: method forward (update=True), backward, optimiser step; the
    loss as a float (which synchronises the device)."""

    def step() -> float:
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(inputs, update=True, generator=generator)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return float(out["loss"].detach())

    return step


def time_training_steps(
    step: Callable[[], float], device: torch.device, steps: int, warmup: int, batch: int
) -> dict[str, Any]:
    """Run `warmup` then `steps` calls of `step` (returns the loss); median time, images/s and
    peak memory over the timed steps."""
    for _ in range(warmup):
        step()
    sync(device)
    times, losses = [], []
    with PeakMemory(device) as mem:
        for _ in range(steps):
            t0 = time.perf_counter()
            losses.append(step())  # float() of the loss synchronises
            sync(device)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "device": device.type,
        "steps": steps,
        "step_s_median": med,
        "step_s_min": min(times),
        "images_per_s": batch / med,
        "peak_mem_mib": mem.peak_mib,
        "baseline_mem_mib": mem.baseline_mib,
        "mem_kind": mem.note,
        "loss_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
    }


# --- run context --------------------------------------------------------------------------
def pick_devices(choice: str) -> list[torch.device]:
    """CPU and/or CUDA as asked (`cpu`, `cuda`, `all`), CUDA only when present."""
    devices = []
    if choice in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if choice in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        print("no requested device is available", file=sys.stderr)
    return devices


def run_context(quick: bool) -> dict[str, Any]:
    """Versions, threads, load and GPU of this run (CPU timings mean little on a busy machine)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "quick": quick,
    }


def bench_args(
    description: str,
    default_out: Path | None,
    quick_help: str,
    argv: list[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The flags every benchmark takes (--quick, --out, --device, --threads), plus those
    ``add_arguments`` adds; sets the threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=default_out, help="results as JSON")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def report_and_save(
    results: dict[str, Any], out: Path | None, below_goal: list[str], what: str, goal: float
) -> None:
    """Name the cases below the speed-up goal, then write the results as JSON to `out`."""
    results["loadavg_after"] = results.get("loadavg_after") or os.getloadavg()
    if below_goal:
        print(f"{what} speed-up below the {goal:.0f}x goal: {', '.join(below_goal)}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {out}")


# --- one-change experiments (moco_experiments.py, adam_v2_experiments.py) -----------------
def add_number_flags(p: argparse.ArgumentParser, **defaults: float) -> None:
    """Plain numeric flags in order, `n_local=4` -> `--n-local` typed as its default (one line)."""
    for name, default in defaults.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)


def add_data_flags(p: argparse.ArgumentParser, load_size: int, view_size: int) -> None:
    """The flags that `load_experiment_data` reads: images, probe set, their sizes."""
    p.add_argument("--data", nargs="+", help="folders of unlabeled images")
    p.add_argument("--probe-data", help="class folders for the kNN / linear probe")
    p.add_argument("--probe-per-class", type=int, default=200)
    p.add_argument("--images", type=int, default=0, help="use only this many (0: all)")
    add_number_flags(p, load_size=load_size, view_size=view_size)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags that `run_experiment` reads besides --steps and --batch: logging, seed, record."""
    add_number_flags(p, every=50, seed=0)
    p.add_argument("--tag", default="")
    p.add_argument("--json", type=Path, help="append the run's record to this JSON-lines file")


def load_experiment_data(a: argparse.Namespace) -> tuple[torch.Tensor, Any]:
    """Seed torch; load --data (``--images`` spread over the folders) and --probe-data or None."""
    from medfoundry.data.normalize import XRAY_NORMALIZATION
    from medfoundry.data.unlabeled2d import collect_images, load_images
    from medfoundry.train.probe import load_probe_set

    torch.manual_seed(a.seed)
    paths = collect_images(a.data)
    if a.images:
        paths = paths[:: max(1, len(paths) // a.images)][: a.images]  # spread over the folders
    norm = dict(XRAY_NORMALIZATION)
    images = load_images(paths, a.load_size, channels=1, normalization=norm, progress=False)
    probe = None
    if a.probe_data:
        probe = load_probe_set(
            a.probe_data, a.view_size, normalization=norm, per_class=a.probe_per_class
        )
    return images, probe


def run_experiment(
    a: argparse.Namespace,
    images: torch.Tensor,
    train_step: Callable[[int, torch.Tensor], dict[str, torch.Tensor]],
    keys: Sequence[str],
    generator: torch.Generator,
    backbone: torch.nn.Module,
    probe: Any = None,
    extra: Callable[[], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Both scripts' loop: ``train_step(step, batch)`` for --steps, a row every --every, --json.

    A row holds the window's mean of ``keys``, with a probe ``backbone``'s probe scores, and
    what ``extra()`` returns (further frozen-feature measures)."""
    from medfoundry.train.probe import probe_scores

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    print(f"{len(images)} images, {settings}", flush=True)
    rows: list[dict[str, float]] = []
    start = time.time()

    def log(step: int, window: list[list[float]]) -> None:
        row: dict[str, float] = {"step": step}
        if window:
            row |= dict(zip(keys, torch.tensor(window).mean(0).tolist(), strict=True))
        if probe is not None:
            row |= probe_scores(backbone, probe)
        if extra is not None:
            row |= extra()
        row["seconds"] = round(time.time() - start, 1)
        rows.append(row)
        print_row(row)

    step, window = 0, []
    log(0, [])
    while step < a.steps:
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images) - a.batch + 1, a.batch):
            out = train_step(step, images[order[i : i + a.batch]])
            step += 1
            window.append([float(out[k].detach()) for k in keys])
            if step % a.every == 0 or step == a.steps:
                log(step, window)
                window = []
            if step >= a.steps:
                break
    append_record(a.json, a.tag, settings, rows)
    return rows


def last_rows_table(path: Path, keys: tuple[str, ...]) -> str:
    """Markdown table of a JSON-lines file of runs ({tag, settings, rows}): the last logged row
    of each, with the step-0 values (the random network's probe scores) in brackets."""
    lines = ["| run | steps | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        first, last = rec["rows"][0], rec["rows"][-1]
        cells = []
        for k in keys:
            v = last.get(k)
            cell = "" if v is None else f"{v:.3f}"
            if k in first and v is not None:
                cell += f" ({first[k]:.3f})"
            cells.append(cell)
        lines.append(f"| {rec['tag']} | {last['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_row(row: dict[str, Any]) -> None:
    """One logged row on one line: `key value` pairs, floats to 3 decimals."""
    text = (f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
    print("  ".join(text), flush=True)


def append_record(path: Path | None, tag: str, settings: dict[str, Any], rows: list) -> None:
    """Append one run's record to a JSON-lines file (nothing when `path` is None)."""
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps({"tag": tag, "settings": settings, "rows": rows}) + "\n")
