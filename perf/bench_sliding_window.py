"""Benchmark sliding-window inference on a CT: medfoundry's ``sliding_window`` against MONAI's
``sliding_window_inference`` with the same network, ROI, overlap and window batch.

Usage: ``python perf/bench_sliding_window.py [--ct FILE] [--roi N] [--overlap F]
[--sw-batch-size N] [--classes K] [--repeats N] [--amp] [--quick] [--device cpu|cuda|all]
[--threads N] [--out FILE.json]``

- **Volume**: ``medfoundry.io.read_image`` of the CT (default
  ``../shared/data/ct_abdomen/example_ct.nii.gz``; skipped with a message when absent), clipped
  to -1000..1000 HU and mapped to [0, 1] as ``prepare_store`` does for CT, on the file's own
  grid (no resampling). ``--quick``: its central half along each axis.
- **Network**: the 3D ResNet-UNet of 3D fine-tuning's default (ResNet-18 width 0.5, decoder
  128-64-32-16-8), ``--classes`` outputs (3: background + the two hippocampus classes), random
  weights (seed 0), eval mode: the timing is what matters, not the logits.
- **Both sides** get the same network, input tensor (already on the device), ROI (default
  64^3), overlap (0.5), ``sw_batch_size`` (4) and Gaussian blending; MONAI is called with
  ``mode="gaussian"`` and its defaults for everything else (sigma_scale 0.125, constant zero
  padding, no ``sw_device`` / ``device`` / buffering), both under ``torch.no_grad``. ``--amp``
  runs both under bfloat16 autocast (ours: ``amp=True``; MONAI: inside ``torch.autocast``).
- **Time**: median wall-clock of ``--repeats`` calls per side after one warm-up call each, the
  sides alternating (ours, MONAI, MONAI, ours, ...) so that a changing machine load hits both.
- **Peak memory**: CUDA, ``max_memory_allocated`` during one call (this process). CPU, the
  peak RSS during one call in a fresh process per side (spawned: it reads the CT, builds the
  network and runs once), so neither side inherits the other's freed heap; ``inference`` is
  the peak minus the RSS just before the call.
- **same_result**: ``allclose(ours, MONAI, rtol=1e-4, atol=1e-4)`` on the blended logits
  (with ``--amp``: argmax agreement of at least 99.9% of the voxels), plus the largest
  absolute difference.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# shared benchmark plumbing (perf/ is run as scripts, not as a package)
from bench_common import PeakMemory, bench_args, pick_devices, report_and_save, run_context, sync

from medfoundry.data.normalize import range_to_unit
from medfoundry.io import read_image
from medfoundry.nets.segmenters3d import create_segmenter3d
from medfoundry.train.inference3d import sliding_window, window_starts

DEFAULT_CT = Path("../shared/data/ct_abdomen/example_ct.nii.gz")
CT_CLIP = (-1000.0, 1000.0)  # prepare_store's default CT range
NETWORK = {"backbone": {"name": "resnet18", "width": 0.5}, "decoder_channels": [128, 64, 32, 16, 8]}
SIDES = ("ours", "monai")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", type=Path, default=DEFAULT_CT, help="CT volume (NIfTI, ...)")
    parser.add_argument("--roi", type=int, default=64, help="window side (voxels)")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=4)
    parser.add_argument("--classes", type=int, default=3, help="network outputs")
    parser.add_argument("--repeats", type=int, help="timed calls per side (default CPU 3, CUDA 10)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on both sides")


def load_ct(path: Path, quick: bool) -> torch.Tensor:
    """The CT as (1, 1, D, H, W) float32 in [0, 1] (store CT normalisation)."""
    volume = range_to_unit(read_image(path, ndim=3).array, *CT_CLIP)  # (1, D, H, W)
    if quick:
        d, h, w = volume.shape[1:]
        volume = volume[
            :, d // 4 : d // 4 + d // 2, h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2
        ]
    return torch.from_numpy(np.ascontiguousarray(volume))[None]


def build_network(classes: int, device: torch.device) -> torch.nn.Module:
    """The benchmark's ResNet-UNet, seeded, in eval mode on ``device``."""
    torch.manual_seed(0)
    return create_segmenter3d("resnet_unet", 1, classes, **NETWORK).to(device).eval()


def make_call(side: str, net: torch.nn.Module, x: torch.Tensor, args: dict[str, Any]) -> Any:
    """A no-argument function running one side's sliding window on ``x``."""
    roi = (args["roi"],) * 3
    overlap, batch, amp = args["overlap"], args["sw_batch_size"], args["amp"]
    if side == "ours":
        return lambda: sliding_window(net, x, roi, overlap, batch, mode="gaussian", amp=amp)
    from monai.inferers import sliding_window_inference

    def monai_call() -> torch.Tensor:
        autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
        )
        with torch.no_grad(), autocast:
            return sliding_window_inference(x, roi, batch, net, overlap=overlap, mode="gaussian")

    return monai_call


def cpu_peak_child(side: str, args: dict[str, Any], queue: Any) -> None:
    """In a fresh process: read the CT, build the network, run ``side`` once; peak RSS."""
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device("cpu")
    x = load_ct(Path(args["ct"]), args["quick"])
    call = make_call(side, build_network(args["classes"], device), x, args)
    with PeakMemory(device) as mem:
        call()
    queue.put({"peak": mem.peak_mib, "baseline": mem.baseline_mib, "kind": mem.note})


def cpu_peaks(args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Peak RSS of each side, each measured in its own spawned process."""
    ctx = mp.get_context("spawn")
    out = {}
    for side in SIDES:
        queue = ctx.Queue()
        proc = ctx.Process(target=cpu_peak_child, args=(side, args, queue))
        proc.start()
        out[side] = queue.get()
        proc.join()
    return out


def cuda_peak(call: Any, device: torch.device) -> dict[str, Any]:
    """``max_memory_allocated`` during one call (and the allocation before it)."""
    with PeakMemory(device) as mem:
        call()
    return {"peak": mem.peak_mib, "baseline": mem.baseline_mib, "kind": mem.note}


def compare(ours: torch.Tensor, ref: torch.Tensor, amp: bool) -> dict[str, Any]:
    """same_result and the size of the differences between the two blended outputs."""
    a, b = ours.float(), ref.float()
    agree = float((a.argmax(1) == b.argmax(1)).float().mean())
    close = bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4))
    return {
        "same_result": (agree >= 0.999) if amp else close,
        "allclose": close,
        "max_abs_diff": float((a - b).abs().max()),
        "argmax_agreement": agree,
    }


def bench_device(device: torch.device, args: dict[str, Any]) -> dict[str, Any]:
    """Time, peak memory and agreement of both sides on one device."""
    x = load_ct(Path(args["ct"]), args["quick"]).to(device)  # (1, 1, D, H, W)
    net = build_network(args["classes"], device)
    calls = {side: make_call(side, net, x, args) for side in SIDES}
    outputs = {}
    for side in SIDES:  # warm-up, and the outputs to compare
        outputs[side] = calls[side]()
        sync(device)
    agreement = compare(outputs["ours"], outputs["monai"], args["amp"])
    del outputs
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(args["repeats"]):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            t0 = time.perf_counter()
            calls[side]()
            sync(device)
            times[side].append(time.perf_counter() - t0)
    peaks = (
        {side: cuda_peak(calls[side], device) for side in SIDES}
        if device.type == "cuda"
        else cpu_peaks(args)
    )
    size = [max(s, args["roi"]) for s in x.shape[2:]]
    row: dict[str, Any] = {
        "device": device.type,
        "volume_shape": list(x.shape[2:]),
        "roi": [args["roi"]] * 3,
        "overlap": args["overlap"],
        "sw_batch_size": args["sw_batch_size"],
        "windows": len(window_starts(size, [args["roi"]] * 3, args["overlap"])),
        "classes": args["classes"],
        "amp": args["amp"],
        "repeats": args["repeats"],
        "mem_kind": peaks["ours"]["kind"],
    }
    for side in SIDES:
        peak, base = peaks[side]["peak"], peaks[side]["baseline"]
        row[f"{side}_s_median"] = statistics.median(times[side])
        row[f"{side}_s_all"] = times[side]
        row[f"{side}_peak_mem_mib"] = peak
        row[f"{side}_inference_mem_mib"] = None if peak is None or base is None else peak - base
    row["speedup"] = row["monai_s_median"] / row["ours_s_median"]  # > 1: ours is faster
    if row["ours_inference_mem_mib"] and row["monai_inference_mem_mib"]:
        row["mem_ratio"] = row["ours_inference_mem_mib"] / row["monai_inference_mem_mib"]
    else:
        row["mem_ratio"] = None
    return row | agreement


def _print(results: dict[str, Any]) -> None:
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of "
        f"{results['cpu_count']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f} "
        "(CPU timings mean little unless the machine is otherwise idle)"
    )
    for r in results["rows"]:
        shape = "x".join(map(str, r["volume_shape"]))
        print(
            f"\n{r['device']}: CT {shape}, roi {r['roi'][0]}^3, overlap {r['overlap']}, "
            f"sw_batch_size {r['sw_batch_size']}, {r['windows']} windows, {r['classes']} "
            f"classes{', bf16 autocast' if r['amp'] else ''}; peak memory = {r['mem_kind']}"
        )
        print(f"{'':8}{'median s':>10}{'peak MiB':>10}{'inference MiB':>15}")
        for side in SIDES:
            mem = r[f"{side}_inference_mem_mib"]
            print(
                f"{side:<8}{r[f'{side}_s_median']:>10.3f}{r[f'{side}_peak_mem_mib']:>10.1f}"
                f"{(f'{mem:.1f}' if mem is not None else '-'):>15}"
            )
        ratio = f"{r['mem_ratio']:.2f}" if r["mem_ratio"] is not None else "-"
        print(
            f"time MONAI / ours {r['speedup']:.2f}x; inference memory ours / MONAI {ratio}; "
            f"same_result {r['same_result']} (max |diff| {r['max_abs_diff']:.2e}, argmax "
            f"agreement {r['argmax_agreement']:.4f})"
        )


def main(argv: list[str] | None = None) -> int:
    args = bench_args(
        __doc__.splitlines()[0],
        Path("docs/bench/bench_sliding_window_cpu.json"),
        "the central half of the CT, one timed call per side",
        argv,
        _add_arguments,
    )
    if not args.ct.is_file():
        print(f"skipped: CT file {args.ct} not found (pass its path with --ct)")
        return 0
    devices = pick_devices(args.device)
    if not devices:
        return 1
    results: dict[str, Any] = {**run_context(args.quick), "ct": str(args.ct), "rows": []}
    for device in devices:
        default_repeats = 1 if args.quick else (3 if device.type == "cpu" else 10)
        settings = {
            "ct": str(args.ct),
            "quick": args.quick,
            "roi": args.roi,
            "overlap": args.overlap,
            "sw_batch_size": args.sw_batch_size,
            "classes": args.classes,
            "amp": args.amp,
            "threads": args.threads,
            "repeats": args.repeats or default_repeats,
        }
        results["rows"].append(bench_device(device, settings))
    results["loadavg_after"] = os.getloadavg()
    _print(results)
    report_and_save(results, args.out, [], "sliding-window", 1.0)
    return 0 if all(r["same_result"] for r in results["rows"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
