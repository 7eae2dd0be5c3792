"""Benchmark the 3D pretext tasks: batched view generation against per-sample references, and
one pretraining step of Volume Fusion and VoCo.

Usage: ``python perf/bench_3d_pretext.py [--quick] [--out FILE.json] [--device cpu|cuda|all]
[--threads N]``

1. View generation, the vectorised ``pretext`` functions against per-sample numpy references
   written here the way the reference code works:

   * Volume Fusion (PyMIC's 2023 ``volume_fusion``): per volume, per block, Python ``random``
     draws, a temporary ``ones(block) * class`` array written into the label map, then the
     blend ``alpha * F + (1 - alpha) * B`` (float32) with the previous volume of the batch as
     foreground. Sub-volumes 64x128x128 (the paper's), 10-40 blocks.
   * VoCo (``VoCoAugmentation`` / ``get_position_label``): per volume, each base crop and each
     random crop sliced out, overlap targets by a loop over base crops, then per crop flips,
     rot90 and intensity shift, stacked. TPAMI layout (64x192x192 volume, 3x3 grid of 64^3
     crops) and the CVPR/repository grid (4x4 grid; 64x256x256 volume, 64^3 crops).
     Two scopes: ``crops`` (crops + targets) and ``crops+augment``.

   On CUDA the references start and end with tensors on the GPU (the copies are part of their
   cost, as they would be in a training step). Both sides are also fed the same blocks/origins
   once to check that they compute the same thing (``same_result``).
2. One pretraining step (views, forward, loss, backward, optimiser step) per method with a 3D
   ResNet-18 of width 0.5: Volume Fusion on 64^3 crops (ResNet-UNet) and VoCo on 64x192x192
   volumes (3x3 grid + 2 random 64^3 crops per volume, EMA teacher): volumes/s and peak memory
   (CPU: peak RSS; CUDA: ``max_memory_allocated``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

# shared benchmark plumbing (perf/ is run as scripts, not as a package)
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
from medfoundry.nets import create_backbone
from medfoundry.nets.swin import count_parameters
from medfoundry.pretext.voco import NO_AUGMENT, VoCoAugment, voco_views
from medfoundry.pretext.volume_fusion import (
    FusionConfig,
    draw_blocks,
    fuse,
    paint_blocks,
    random_derangement,
    volume_fusion,
)

SPEEDUP_GOAL = 10.0


# --- 1a. Volume Fusion: per-sample reference --------------------------------------------------
def _size_range(extent: int, fractions: tuple[float, float]) -> tuple[int, int]:
    lo = max(1, round(fractions[0] * extent))
    return lo, max(lo, round(fractions[1] * extent))


def reference_fusion(volumes: torch.Tensor, cfg: FusionConfig, blocks=None):
    """PyMIC-2023-style fusion, volume by volume and block by block, in numpy.

    ``blocks`` (a ``FusionBlocks``) replaces the random draws, to check the result.
    """
    x = volumes.cpu().numpy()  # (B, C, D, H, W)
    n, c, d, h, w = x.shape
    k = cfg.num_classes_fg
    ranges = [_size_range(d, cfg.depth), _size_range(h, cfg.size), _size_range(w, cfg.size)]
    fused, labels = np.empty_like(x), np.zeros((n, d, h, w), np.int64)
    for b in range(n):
        mask = labels[b]
        if blocks is None:
            todo = []
            for _ in range(random.randint(*cfg.num_blocks)):
                sd, sh, sw = (random.randint(lo, hi) for lo, hi in ranges)
                cd, ch, cw = (
                    random.randint(0, d - 1),
                    random.randint(0, h - 1),
                    random.randint(0, w - 1),
                )
                d0, h0, w0 = cd - sd // 2, ch - sh // 2, cw - sw // 2
                d1, h1, w1 = min(d, d0 + sd), min(h, h0 + sh), min(w, w0 + sw)
                todo.append(
                    ((max(0, d0), max(0, h0), max(0, w0)), (d1, h1, w1), random.randint(1, k))
                )
        else:
            start, stop, label, active = (t.cpu().numpy() for t in blocks)
            todo = [(start[b, m], stop[b, m], label[b, m]) for m in np.flatnonzero(active[b])]
        for (d0, h0, w0), (d1, h1, w1), cls in todo:
            mask[d0:d1, h0:h1, w0:w1] = np.ones((d1 - d0, h1 - h0, w1 - w0), np.int64) * cls
        alpha = mask.astype(np.float32) / k
        fg, bg = x[(b - 1) % n], x[b]  # foreground: the previous volume (torch.roll)
        fused[b] = alpha * fg + (1.0 - alpha) * bg
    dev = volumes.device
    return torch.from_numpy(fused).to(dev), torch.from_numpy(labels).to(dev)


def bench_fusion(device: torch.device, batch: int, shape, repeats: int) -> dict[str, Any]:
    cfg = FusionConfig()
    vols = torch.rand(batch, 1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    roll = torch.roll(vols, 1, 0)
    gen = torch.Generator(device=device).manual_seed(0)
    random.seed(0)

    # same blocks -> same labels and (up to float rounding) the same fused volumes
    blocks = draw_blocks(batch, shape, cfg, torch.Generator(device=device).manual_seed(1), device)
    labels = paint_blocks(blocks, shape)
    ours = fuse(roll, vols, labels, cfg.num_classes_fg)
    ref_fused, ref_labels = reference_fusion(vols, cfg, blocks)
    same = bool(torch.equal(labels, ref_labels)) and bool(
        torch.allclose(ours, ref_fused, rtol=0, atol=1e-6)
    )

    def vec() -> Any:  # what VolumeFusion.fuse does: a random partner, then the fusion
        partner = random_derangement(batch, gen, device)
        return volume_fusion(vols[partner], vols, cfg, gen)

    def ref() -> Any:
        return reference_fusion(vols, cfg)

    vec_s, ref_s = median_time(vec, device, repeats)[0], median_time(ref, device, repeats)[0]
    return {
        "device": device.type,
        "task": "volume_fusion",
        "scope": "fused+labels",
        "batch": batch,
        "volume": list(shape),
        "vectorised_ms": vec_s * 1e3,
        "reference_ms": ref_s * 1e3,
        "speedup": ref_s / vec_s,
        "same_result": same,
    }


# --- 1b. VoCo: per-sample reference -------------------------------------------------------------
def reference_voco(
    volumes: torch.Tensor,
    n: int,
    num_random: int,
    aug: VoCoAugment,
    rng: np.random.Generator,
    origins: np.ndarray | None = None,
):
    """VoCo's crops and labels volume by volume (full depth, native crops), in numpy."""
    x = volumes.cpu().numpy()  # (B, C, D, H, W)
    batch, _, _, full_h, full_w = x.shape
    h, w = full_h // n, full_w // n
    y0, x0 = (full_h - n * h) // 2, (full_w - n * w) // 2
    all_crops, all_targets = [], []
    for b in range(batch):
        crops = [
            x[b, :, :, y0 + i * h : y0 + (i + 1) * h, x0 + j * w : x0 + (j + 1) * w]
            for i in range(n)
            for j in range(n)
        ]
        targets = []
        for r in range(num_random):
            if origins is None:
                oy, ox = rng.integers(0, (n - 1) * h + 1), rng.integers(0, (n - 1) * w + 1)
            else:
                oy, ox = origins[b, r]
            crops.append(x[b, :, :, y0 + oy : y0 + oy + h, x0 + ox : x0 + ox + w])
            label = np.zeros(n * n, np.float32)
            for i in range(n):
                for j in range(n):
                    dy = min(oy + h, (i + 1) * h) - max(oy, i * h)
                    dx = min(ox + w, (j + 1) * w) - max(ox, j * w)
                    if dy > 0 and dx > 0:
                        label[i * n + j] = dy * dx / (h * w)
            targets.append(label)
        out = []
        for crop in crops:
            for axis in (1, 2, 3):
                if rng.random() < aug.flip_p:
                    crop = np.flip(crop, axis)
            if rng.random() < aug.rot90_p:
                crop = np.rot90(crop, int(rng.integers(1, 4)), axes=(2, 3))
            if rng.random() < aug.shift_p:
                crop = crop + np.float32(rng.uniform(-aug.shift, aug.shift))
            out.append(np.ascontiguousarray(crop))
        all_crops.append(np.stack(out))
        all_targets.append(np.stack(targets))
    dev = volumes.device
    return torch.from_numpy(np.stack(all_crops)).to(dev), torch.from_numpy(
        np.stack(all_targets)
    ).to(dev)


def bench_voco(
    device: torch.device, batch: int, shape, n: int, augment: bool, repeats: int
) -> dict[str, Any]:
    aug = VoCoAugment() if augment else NO_AUGMENT
    vols = torch.rand(batch, 1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)

    views = voco_views(vols, n, 2, augment=NO_AUGMENT, generator=gen)
    ref_crops, ref_targets = reference_voco(
        vols, n, 2, NO_AUGMENT, rng, views.origins.cpu().numpy()
    )
    same = bool(torch.equal(views.crops, ref_crops)) and bool(
        torch.allclose(views.targets, ref_targets)
    )

    def vec() -> Any:
        return voco_views(vols, n, 2, augment=aug, generator=gen)

    def ref() -> Any:
        return reference_voco(vols, n, 2, aug, rng)

    vec_s, ref_s = median_time(vec, device, repeats)[0], median_time(ref, device, repeats)[0]
    return {
        "device": device.type,
        "task": f"voco_{n}x{n}",
        "scope": "crops+augment" if augment else "crops",
        "batch": batch,
        "volume": list(shape),
        "vectorised_ms": vec_s * 1e3,
        "reference_ms": ref_s * 1e3,
        "speedup": ref_s / vec_s,
        "same_result": same,
    }


# --- 2. pretraining steps ---------------------------------------------------------------------
def bench_step(
    method: str,
    backbone: dict[str, Any],
    shape: tuple[int, int, int],
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    settings: dict[str, Any],
    bf16: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(0)
    net = create_backbone(spatial_dims=3, in_channels=1, **backbone)
    model = build_method(method, net, **settings).to(device).train()
    if method == "voco":  # VoCo: AdamW, amsgrad, default weight decay; MIS-FM: Adam, wd 1e-5
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    volumes = torch.rand(batch, 1, *shape, generator=torch.Generator().manual_seed(0))
    volumes = volumes.to(device)
    gen = torch.Generator(device=device).manual_seed(0)

    step = training_step(model, volumes, opt, gen, bf16)

    row = time_training_steps(step, device, steps, warmup, batch)
    row["volumes_per_s"] = row.pop("images_per_s")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "method": method,
        "backbone": backbone,
        "settings": settings,
        "params_trainable": trainable,
        "params_backbone": count_parameters(net),
        "volume": list(shape),
        "batch": batch,
        "precision": "bf16-autocast" if bf16 else "fp32",
        **row,
    }


# --- main ---------------------------------------------------------------------------------------
def _print(results: dict[str, Any]) -> None:
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of "
        f"{results['cpu_count']}, CUDA {results['cuda_device']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f} "
        "(CPU timings mean little unless the machine is otherwise idle)"
    )
    print("\nView generation: vectorised vs per-sample reference")
    print(
        f"{'device':<7}{'task':<15}{'scope':<15}{'B':>3} {'volume':<13}{'vector ms':>10}"
        f"{'ref ms':>10}{'speed-up':>10}  same"
    )
    for r in results["views"]:
        vol = "x".join(map(str, r["volume"]))
        print(
            f"{r['device']:<7}{r['task']:<15}{r['scope']:<15}{r['batch']:>3} {vol:<13}"
            f"{r['vectorised_ms']:>10.2f}{r['reference_ms']:>10.2f}{r['speedup']:>9.2f}x  "
            f"{r['same_result']}"
        )
    print("\nPretraining step (views, forward, loss, backward, optimiser step)")
    print(
        f"{'method':<15}{'params':>9}{'volume':>13}{'B':>3}{'device':>7}{'precision':>15}"
        f"{'step s':>9}{'vol/s':>8}{'peak MiB':>10}  memory"
    )
    for r in results["steps"]:
        peak = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        vol = "x".join(map(str, r["volume"]))
        print(
            f"{r['method']:<15}{r['params_trainable'] / 1e6:>8.2f}M{vol:>13}{r['batch']:>3}"
            f"{r['device']:>7}{r['precision']:>15}{r['step_s_median']:>9.2f}"
            f"{r['volumes_per_s']:>8.2f}{peak:>10}  {r['mem_kind']}"
        )


FULL_NET = {"name": "resnet18", "width": 0.5}
QUICK_NET = {"name": "resnet10", "width": 0.125}


def main(argv: list[str] | None = None) -> int:
    args = bench_args(
        __doc__.splitlines()[0],
        Path("docs/bench/bench_3d_pretext_cpu.json"),
        "tiny volumes and network",
        argv,
    )
    devices = pick_devices(args.device)
    if not devices:
        return 1

    results: dict[str, Any] = {**run_context(args.quick), "views": [], "steps": []}
    for device in devices:
        on_cpu = device.type == "cpu"
        repeats = 3 if args.quick else (10 if on_cpu else 20)
        if args.quick:
            fusion_cases, voco_cases = [(2, (16, 32, 32))], [(2, (16, 48, 48), 3)]
        else:
            fusion_cases = [(2, (64, 128, 128)), (4, (64, 128, 128))]
            voco_cases = [(2, (64, 192, 192), 3), (2, (64, 256, 256), 4)]
        for batch, shape in fusion_cases:
            results["views"].append(bench_fusion(device, batch, shape, repeats))
        for batch, shape, n in voco_cases:
            for augment in (False, True):
                results["views"].append(bench_voco(device, batch, shape, n, augment, repeats))

        net = QUICK_NET if args.quick else FULL_NET
        steps, warmup = (1, 1) if args.quick else ((3, 1) if on_cpu else (10, 3))
        side = 32 if args.quick else 64
        vf = {"decoder_channels": [32, 16, 16, 8, 8]} if args.quick else {}
        voco = {"num_base": 3, "num_random": 2}
        if args.quick:
            voco |= {"proj_hidden": 64, "proj_dim": 64}
        precisions = (False,) if on_cpu else (False, True)
        for bf16 in precisions:
            results["steps"].append(
                bench_step("volume_fusion", net, (side,) * 3, 2, device, steps, warmup, vf, bf16)
            )
            results["steps"].append(
                bench_step(
                    "voco", net, (side, 3 * side, 3 * side), 2, device, steps, warmup, voco, bf16
                )
            )
    results["loadavg_after"] = os.getloadavg()
    _print(results)
    below = [
        f"{r['device']}/{r['task']}/{r['scope']}/B={r['batch']}"
        for r in results["views"]
        if r["speedup"] < SPEEDUP_GOAL
    ]
    report_and_save(results, args.out, below, "view", SPEEDUP_GOAL)
    ok = all(r["same_result"] for r in results["views"])
    ok &= all(r["loss_finite"] for r in results["steps"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
