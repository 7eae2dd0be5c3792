"""What watching representation quality costs: collapse signals per step, the probe per epoch.

Usage: ``python perf/bench_monitoring.py [--quick] [--out FILE.json] [--device cpu|cuda|all]
[--threads N] [--steps-per-epoch N]``

1. One MoCo-v2 pretraining step (views, both encoders, loss, backward, SGD step, enqueue) at the
   ``adam_cpu`` scale (ResNet-18 width 0.5, 128² views, batch 64) with the collapse signals of
   `medfoundry.methods.signals` (spread, mean length, within-batch retrieval, queue-age cosines)
   against the same step with those four functions replaced by constants. The two variants
   alternate in rounds on the same model so that machine load hits both alike; the overhead is
   the ratio of their medians.
2. The online probe (`medfoundry.train.probe.probe_scores`: embed 400 probe images, weighted
   kNN, L-BFGS linear probe) once, against ``--steps-per-epoch`` training steps (the probe runs
   once per validation pass, i.e. per epoch; ``adam_cpu`` on ~4,300 images has 66 steps).

The issue's goal: monitoring costs at most 5 % of a pretraining step.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_common import bench_args, pick_devices, report_and_save, run_context, sync, training_step

import medfoundry.methods.moco as moco_module
from medfoundry.methods import build_method
from medfoundry.nets import create_backbone
from medfoundry.train.probe import ProbeSet, probe_scores

SIGNAL_FUNCTIONS = ("spread", "mean_length", "retrieval_top1", "age_cosines")


def _without_signals() -> dict[str, Any]:
    """Replace the signal functions moco.py calls by constants; returns the originals."""
    originals = {name: getattr(moco_module, name) for name in SIGNAL_FUNCTIONS}

    def zero(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros((), device=args[0].device)

    for name in SIGNAL_FUNCTIONS:
        setattr(moco_module, name, zero)
    moco_module.age_cosines = lambda q, *a: (torch.zeros((), device=q.device),) * 2
    return originals


def _restore(originals: dict[str, Any]) -> None:
    for name, fn in originals.items():
        setattr(moco_module, name, fn)


def bench_signals(device: torch.device, size: int, batch: int, rounds: int, per_round: int) -> dict:
    """Median step time with and without the signals, alternating rounds of `per_round` steps."""
    torch.manual_seed(0)
    backbone = create_backbone(name="resnet18", width=0.5, in_channels=1)
    model = build_method(
        "moco", backbone, out_size=size, proj_hidden=512, queue_size=256, proj_bn=True
    ).to(device)
    images = torch.randn(batch, 1, size * 2, size * 2, device=device)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.0075, momentum=0.9
    )
    gen = torch.Generator(device=device).manual_seed(0)
    step = training_step(model, images, opt, gen)
    step()  # warm-up
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        for variant in ("with", "without"):
            originals = _without_signals() if variant == "without" else None
            try:
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    step()
                    sync(device)
                    times[variant].append(time.perf_counter() - t0)
            finally:
                if originals is not None:
                    _restore(originals)
    w, wo = statistics.median(times["with"]), statistics.median(times["without"])
    return {
        "step_s_with_signals": w,
        "step_s_without_signals": wo,
        "signals_overhead": w / wo - 1.0,
        "steps_each": len(times["with"]),
    }


def bench_probe(device: torch.device, size: int, steps_per_epoch: int, step_s: float) -> dict:
    """Seconds of one probe evaluation (400 images) and its share of an epoch of steps."""
    torch.manual_seed(0)
    backbone = create_backbone(name="resnet18", width=0.5, in_channels=1).to(device)
    x = torch.randn(400, 1, size, size)
    y = torch.arange(400) % 2
    probe = ProbeSet(x[:200], y[:200], x[200:], y[200:], ["a", "b"], [], [])
    probe_scores(backbone, probe)  # warm-up
    sync(device)
    t0 = time.perf_counter()
    probe_scores(backbone, probe)
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "probe_s": seconds,
        "steps_per_epoch": steps_per_epoch,
        "probe_share_of_epoch": seconds / (steps_per_epoch * step_s),
    }


def main(argv: list[str] | None = None) -> None:
    args = bench_args(
        __doc__.splitlines()[0],
        Path("perf/results/monitoring.json"),
        "64² views, batch 16, 2 rounds (a smoke run)",
        argv,
        lambda p: p.add_argument("--steps-per-epoch", type=int, default=66),
    )
    size, batch, rounds, per_round = (64, 16, 2, 3) if args.quick else (128, 64, 4, 5)
    results: dict[str, Any] = {"context": run_context(args.quick), "runs": []}
    below: list[str] = []
    for device in pick_devices(args.device):
        sig = bench_signals(device, size, batch, rounds, per_round)
        prb = bench_probe(device, size, args.steps_per_epoch, sig["step_s_with_signals"])
        row = {"device": device.type, "size": size, "batch": batch, **sig, **prb}
        results["runs"].append(row)
        print(
            f"{device.type}: step {sig['step_s_with_signals']:.3f} s with signals, "
            f"{sig['step_s_without_signals']:.3f} s without ({sig['signals_overhead']:+.1%}); "
            f"probe {prb['probe_s']:.2f} s = {prb['probe_share_of_epoch']:.1%} of a "
            f"{args.steps_per_epoch}-step epoch"
        )
        if sig["signals_overhead"] + prb["probe_share_of_epoch"] > 0.05:
            below.append(device.type)
    report_and_save(results, args.out, [], "monitoring", 0.0)
    if below:
        print(f"monitoring above 5 % of a step on: {', '.join(below)}")


if __name__ == "__main__":
    main()
