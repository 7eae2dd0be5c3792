"""Benchmark Adam (MoCo-v2 + anatomy decomposer + purposive pruner) training steps and its loss.

Usage: ``python perf/bench_adam.py [--quick] [--out FILE.json] [--device cpu|cuda|all]``

1. One pretraining step (views generated inside, forward of both encoders, backward, SGD step,
   enqueue) at anatomy level 2 with pruning, for ResNet-18 at 128² and ResNet-50 at 224², on CPU
   and, when available, CUDA: images/s and peak memory (CPU: the process's peak RSS over the
   timed steps, from ``/proc/self/status`` VmHWM after resetting it through
   ``/proc/self/clear_refs``; CUDA: ``torch.cuda.max_memory_allocated``).
2. The purposive pruner loss at B=256, K=65536, D=128: the vectorised ``purposive_pruner_loss``
   against a per-sample Python loop written here the way the reference implements it (one
   masked selection and cross-entropy per sample), both including the similarity matmul, same
   inputs, same run; reports the speed-up and checks both give the same loss.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import (
    bench_args,
    median_time,
    pick_devices,
    report_and_save,
    run_context,
    time_training_steps,
    training_step,
)

from medfoundry.methods import build_method
from medfoundry.methods.losses import pruner_loss_from_similarities, purposive_pruner_loss
from medfoundry.nets import create_backbone

SPEEDUP_GOAL = 10.0


# --- 1. training step -----------------------------------------------------------------------
def bench_step(
    backbone: str, size: int, batch: int, device: torch.device, steps: int, warmup: int
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_method(
        "adam",
        create_backbone(backbone, in_channels=1),
        out_size=size,
        level=2,
    ).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)
    # level 2 of images twice the view size: every cell is view-sized, as at level 4 of 4x views
    images = torch.randn(batch, 1, 2 * size, 2 * size, device=device).clamp(-2, 2)
    gen = torch.Generator(device=device).manual_seed(0)

    step = training_step(model, images, opt, gen)

    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        **time_training_steps(step, device, steps, warmup, batch),
    }


# --- 2. pruned loss: vectorised vs per-sample loop ------------------------------------------
def similarities(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor):
    """Raw cosines as the reference's model hands them to its loss: (B,), (B, K)."""
    return (q * k).sum(dim=1), q @ queue.t()


def pruner_criterion_loop(
    l_pos: torch.Tensor, l_neg: torch.Tensor, temperature: float, threshold: float
) -> torch.Tensor:
    """Per-sample reference: one mask, masked selection and cross-entropy per sample."""
    logits = torch.cat([l_pos[:, None], l_neg], dim=1) / temperature  # (B, 1 + K)
    label = torch.zeros(1, dtype=torch.long, device=l_neg.device)
    keep_pos = torch.ones(1, dtype=torch.bool, device=l_neg.device)
    losses = []
    for i in range(l_neg.shape[0]):
        mask = torch.cat([keep_pos, l_neg[i] < threshold])
        row = torch.masked_select(logits[i], mask)[None]
        losses.append(F.cross_entropy(row, label))
    return torch.stack(losses).mean()


def pruner_loss_loop(q, k, queue, temperature: float, threshold: float) -> torch.Tensor:
    """The loop reference including the similarity matmul (shared with the vectorised one)."""
    return pruner_criterion_loop(*similarities(q, k, queue), temperature, threshold)


def clustered_embeddings(
    batch: int, queue_size: int, dim: int, device: torch.device, clusters: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and a queue with cluster structure, so some negatives get pruned."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=1)

    def sample(n: int, noise: float) -> torch.Tensor:
        idx = torch.randint(0, clusters, (n,), generator=g)
        jitter = torch.randn(n, dim, generator=g) * noise / dim**0.5
        return F.normalize(centres[idx] + jitter, dim=1)

    q = sample(batch, 0.3)
    k = F.normalize(q + torch.randn(batch, dim, generator=g) * 0.3 / dim**0.5, dim=1)
    queue = sample(queue_size, 0.3)
    return q.to(device), k.to(device), queue.to(device)


def _with_backward(loss_fn, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor):
    """Loss and its gradient with respect to the queries, as in a training step."""

    def run():
        qg = q.detach().requires_grad_(True)
        out = loss_fn(qg, k, queue)
        loss = out[0] if isinstance(out, tuple) else out
        loss.backward()
        return out

    return run


def bench_loss(device: torch.device, batch: int, queue_size: int, dim: int, repeats: int):
    """Three comparisons, all on the same inputs in the same run:

    * ``full``: embeddings -> loss (includes the B x K x D similarity matmul, common to both);
    * ``criterion``: similarities -> loss, the interface of the reference's loss module;
    * ``train``: embeddings -> loss -> gradient of the queries (what a training step pays).
    """
    q, k, queue = clustered_embeddings(batch, queue_size, dim, device)
    t, thr = 0.2, 0.8
    rows = []
    with torch.no_grad():
        l_pos, l_neg = similarities(q, k, queue)
    cases = {
        "full": (
            lambda: purposive_pruner_loss(q, k, queue, t, thr),
            lambda: pruner_loss_loop(q, k, queue, t, thr),
            False,
        ),
        "criterion": (
            lambda: pruner_loss_from_similarities(l_pos, l_neg, t, thr),
            lambda: pruner_criterion_loop(l_pos, l_neg, t, thr),
            False,
        ),
        "train": (
            _with_backward(lambda a, b, c: purposive_pruner_loss(a, b, c, t, thr), q, k, queue),
            _with_backward(lambda a, b, c: pruner_loss_loop(a, b, c, t, thr), q, k, queue),
            True,
        ),
    }
    for scope, (vectorised, loop, grad) in cases.items():
        with torch.set_grad_enabled(grad):
            vec_s, (vec_loss, frac) = median_time(vectorised, device, repeats)
            loop_s, loop_loss = median_time(loop, device, repeats)
        vec, ref = float(vec_loss.detach()), float(loop_loss.detach())
        rows.append(
            {
                "device": device.type,
                "scope": scope,
                "batch": batch,
                "queue": queue_size,
                "dim": dim,
                "pruned_fraction": float(frac),
                "vectorised_ms": vec_s * 1e3,
                "loop_ms": loop_s * 1e3,
                "speedup": loop_s / vec_s,
                "goal": SPEEDUP_GOAL,
                "loss_vectorised": vec,
                "loss_loop": ref,
                "same_loss": abs(vec - ref) <= 1e-4 * max(1.0, abs(ref)),
            }
        )
    return rows


# --- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__.splitlines()[0], None, "smaller batches, fewer steps", argv)

    devices = pick_devices(args.device)
    if not devices:
        return 1

    configs = [("resnet18", 128, 32), ("resnet50", 224, 16)]
    if args.quick:
        configs = [("resnet18", 128, 8), ("resnet50", 224, 4)]
    results: dict[str, Any] = {
        **run_context(args.quick),
        "steps": [],
        "pruner_loss": [],
    }
    for device in devices:
        on_cpu = device.type == "cpu"
        steps, warmup = (2, 1) if args.quick or on_cpu else (20, 3)
        if not args.quick and on_cpu:
            steps = 3
        for backbone, size, batch in configs:
            if not on_cpu and not args.quick:
                batch *= 4  # GPUs: a more realistic per-device batch
            results["steps"].append(bench_step(backbone, size, batch, device, steps, warmup))
        loss_batch = 64 if args.quick else 256
        results["pruner_loss"].extend(
            bench_loss(device, loss_batch, 65536, 128, repeats=3 if on_cpu else 10)
        )

    results["loadavg_after"] = os.getloadavg()
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of {os.cpu_count()}, "
        f"CUDA {results['cuda_device']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f} "
        "(CPU timings mean little unless the machine is otherwise idle)"
    )
    print("\nAdam pretraining step (level 2, pruning on; views made inside; fwd+bwd+SGD)")
    print(
        f"{'backbone':<10}{'view':>6}{'batch':>7}{'device':>8}{'step s':>9}{'img/s':>9}"
        f"{'peak MiB':>10}  memory"
    )
    for r in results["steps"]:
        peak = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        print(
            f"{r['backbone']:<10}{r['size']:>6}{r['batch']:>7}{r['device']:>8}"
            f"{r['step_s_median']:>9.3f}{r['images_per_s']:>9.1f}{peak:>10}  {r['mem_kind']}"
        )
    print(
        "\nPurposive pruner loss, vectorised vs per-sample loop; scope 'full' = embeddings -> loss"
        " (incl. the shared B x K x D matmul), 'criterion' = similarities -> loss,"
        " 'train' = full + backward"
    )
    print(
        f"{'device':<8}{'scope':<11}{'B':>5}{'K':>7}{'D':>5}{'pruned':>8}{'vector ms':>11}"
        f"{'loop ms':>10}{'speed-up':>10}  same loss"
    )
    ok = True
    for r in results["pruner_loss"]:
        print(
            f"{r['device']:<8}{r['scope']:<11}{r['batch']:>5}{r['queue']:>7}{r['dim']:>5}"
            f"{r['pruned_fraction']:>8.3f}{r['vectorised_ms']:>11.1f}{r['loop_ms']:>10.1f}"
            f"{r['speedup']:>9.1f}x  {r['same_loss']} "
            f"({r['loss_vectorised']:.6f} vs {r['loss_loop']:.6f})"
        )
        ok &= r["same_loss"]
    below = [
        f"{r['device']}/{r['scope']}" for r in results["pruner_loss"] if r["speedup"] < SPEEDUP_GOAL
    ]
    report_and_save(results, args.out, below, "pruner", SPEEDUP_GOAL)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
