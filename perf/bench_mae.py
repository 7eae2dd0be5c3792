"""Benchmark VIS-MAE: block-mask generation against a per-sample reference, and training steps.

Usage: ``python perf/bench_mae.py [--quick] [--out FILE.json] [--device cpu|cuda|all]``

1. Masks at VIS-MAE scale (56x56 tokens, 4x4-token units, 75%, B = 64 and 128): the vectorised
   ``block_mask`` (one argsort + scatter for the batch) against a per-sample reference written
   here the way Swin-MAE's ``window_masking`` works (per-sample argsort, kept token indices
   built unit offset by unit offset, ``numpy.setdiff1d`` for the masked ones, a loop over
   samples). Two scopes: ``mask`` (mask only) and ``mask+token`` (also putting the mask token
   into (B, 3136, 96) patch tokens: one ``where`` against a per-sample indexed assignment).
   Both get the same noise once to check that they mask the same tokens.
2. One MAE pretraining step (mask, encoder, decoder, loss, backward, AdamW step) for the
   Swin-T-width encoder, depths (2, 2, 2, 2), 1 input channel at 224²: images/s and peak memory
   (CPU: peak RSS; CUDA: ``max_memory_allocated``), fp32 and, on CUDA, bf16 autocast.
"""

from __future__ import annotations

import os
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

from medfoundry.methods.mae import MaskedAutoencoder
from medfoundry.nets import create_backbone
from medfoundry.nets.swin import count_parameters
from medfoundry.nets.swin_blocks import apply_mask_token
from medfoundry.pretext.masking import block_mask, block_mask_from_noise

SPEEDUP_GOAL = 10.0
GRID, UNIT, RATIO, TOKEN_DIM = (56, 56), 4, 0.75, 96


# --- 1. masks: vectorised vs per-sample reference --------------------------------------------
def reference_masked_indices(
    noise: np.ndarray, grid: tuple[int, int], unit: int, ratio: float
) -> list[np.ndarray]:
    """Per sample: argsort the unit noise, keep the first units, expand each kept unit to its
    tokens offset by offset, and take the set difference for the masked token indices."""
    ht, wt = grid
    uw = wt // unit
    n_keep = int(noise.shape[1] * (1 - ratio))
    all_tokens = np.arange(ht * wt)
    masked = []
    for row in noise:
        kept_units = np.argsort(row)[:n_keep]
        corner = (kept_units // uw) * unit * wt + (kept_units % uw) * unit
        kept = corner
        for i in range(unit):
            for j in range(unit):
                if i or j:
                    kept = np.concatenate([kept, corner + i * wt + j])
        masked.append(np.setdiff1d(all_tokens, kept, assume_unique=True))
    return masked


def reference_mask(noise: np.ndarray, grid, unit, ratio) -> np.ndarray:
    """The reference's (B, Ht*Wt) 0/1 mask, filled sample by sample."""
    idx = reference_masked_indices(noise, grid, unit, ratio)
    mask = np.zeros((noise.shape[0], grid[0] * grid[1]), dtype=np.float32)
    for b, rows in enumerate(idx):
        mask[b, rows] = 1.0
    return mask


def reference_mask_tokens(tokens: torch.Tensor, noise: np.ndarray, token: torch.Tensor):
    """The reference's token replacement: clone, then one indexed assignment per sample."""
    idx = reference_masked_indices(noise, GRID, UNIT, RATIO)
    out = tokens.clone()  # (B, L, C)
    for b, rows in enumerate(idx):
        out[b, torch.as_tensor(rows, device=tokens.device)] = token
    return out


def bench_masks(device: torch.device, batch: int, repeats: int) -> list[dict[str, Any]]:
    n_units = (GRID[0] // UNIT) * (GRID[1] // UNIT)
    rng = np.random.default_rng(0)
    gen = torch.Generator(device=device).manual_seed(0)

    # same noise (float64: no ties) -> both must mask the same tokens
    noise = torch.rand(batch, n_units, dtype=torch.float64, generator=torch.Generator())
    ours = block_mask_from_noise(noise, GRID, UNIT, RATIO).reshape(batch, -1).numpy()
    same_mask = bool((ours == reference_mask(noise.numpy(), GRID, UNIT, RATIO).astype(bool)).all())

    tokens = torch.randn(batch, GRID[0], GRID[1], TOKEN_DIM, device=device)
    token = torch.randn(TOKEN_DIM, device=device)
    flat = tokens.reshape(batch, -1, TOKEN_DIM)
    ours_tok = apply_mask_token(tokens, block_mask_from_noise(noise.to(device), GRID), token)
    ref_tok = reference_mask_tokens(flat, noise.numpy(), token)
    same_tokens = bool(torch.equal(ours_tok.reshape(batch, -1, TOKEN_DIM), ref_tok))

    def vec_mask() -> torch.Tensor:
        return block_mask(batch, GRID, UNIT, RATIO, generator=gen, device=device)

    def ref_mask() -> np.ndarray:
        return reference_mask(rng.random((batch, n_units)), GRID, UNIT, RATIO)

    def vec_tokens() -> torch.Tensor:
        return apply_mask_token(tokens, vec_mask(), token)

    def ref_tokens() -> torch.Tensor:
        return reference_mask_tokens(flat, rng.random((batch, n_units)), token)

    rows = []
    for scope, vec, ref in (("mask", vec_mask, ref_mask), ("mask+token", vec_tokens, ref_tokens)):
        vec_s, ref_s = median_time(vec, device, repeats)[0], median_time(ref, device, repeats)[0]
        rows.append(
            {
                "device": device.type,
                "scope": scope,
                "batch": batch,
                "grid": list(GRID),
                "unit": UNIT,
                "ratio": RATIO,
                "token_dim": TOKEN_DIM if scope == "mask+token" else None,
                "vectorised_ms": vec_s * 1e3,
                "reference_ms": ref_s * 1e3,
                "speedup": ref_s / vec_s,
                "goal": SPEEDUP_GOAL if scope == "mask" else None,
                "same_result": same_mask if scope == "mask" else same_tokens,
            }
        )
    return rows


# --- 2. MAE pretraining step -----------------------------------------------------------------
def bench_step(
    arch: dict[str, Any],
    size: int,
    batch: int,
    device: torch.device,
    steps: int,
    warmup: int,
    bf16: bool = False,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = MaskedAutoencoder(create_backbone("swin", in_channels=1, **arch)).to(device)
    model.train()
    opt = torch.optim.AdamW(model.param_groups(0.05), lr=1e-3, betas=(0.9, 0.95))
    images = torch.randn(batch, 1, size, size, device=device).clamp(-2, 2)
    gen = torch.Generator(device=device).manual_seed(0)

    step = training_step(model, images, opt, gen, bf16)

    return {
        "arch": {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()},
        "params_total": count_parameters(model),
        "params_encoder": count_parameters(model.backbone),
        "size": size,
        "batch": batch,
        "precision": "bf16-autocast" if bf16 else "fp32",
        **time_training_steps(step, device, steps, warmup, batch),
    }


# --- main -----------------------------------------------------------------------------------
VIS_MAE = {"embed_dim": 96, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)}
QUICK = {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4}


def _print(results: dict[str, Any]) -> None:
    print(
        f"torch {results['torch']}, CPU threads {results['cpu_threads']} of "
        f"{results['cpu_count']}, CUDA {results['cuda_device']}; 1-min load average before/after "
        f"{results['loadavg_before'][0]:.2f}/{results['loadavg_after'][0]:.2f} "
        "(CPU timings mean little unless the machine is otherwise idle)"
    )
    print("\nBlock masks 56x56 tokens, 4x4 units, 75%: vectorised vs per-sample reference")
    print(
        f"{'device':<8}{'scope':<12}{'B':>5}{'vector ms':>11}{'ref ms':>10}{'speed-up':>10}"
        "  same result"
    )
    for r in results["masks"]:
        print(
            f"{r['device']:<8}{r['scope']:<12}{r['batch']:>5}{r['vectorised_ms']:>11.3f}"
            f"{r['reference_ms']:>10.2f}{r['speedup']:>9.1f}x  {r['same_result']}"
        )
    print("\nMAE pretraining step (mask, encoder, decoder, loss, backward, AdamW)")
    print(
        f"{'params':>10}{'size':>6}{'batch':>7}{'device':>8}{'precision':>15}{'step s':>9}"
        f"{'img/s':>9}{'peak MiB':>10}  memory"
    )
    for r in results["steps"]:
        peak = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        print(
            f"{r['params_total'] / 1e6:>9.2f}M{r['size']:>6}{r['batch']:>7}{r['device']:>8}"
            f"{r['precision']:>15}{r['step_s_median']:>9.3f}{r['images_per_s']:>9.1f}{peak:>10}"
            f"  {r['mem_kind']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = bench_args(
        __doc__.splitlines()[0],
        Path("docs/bench/bench_mae_cpu.json"),
        "tiny model, small batches",
        argv,
    )
    devices = pick_devices(args.device)
    if not devices:
        return 1

    results: dict[str, Any] = {
        **run_context(args.quick),
        "masks": [],
        "steps": [],
    }
    for device in devices:
        on_cpu = device.type == "cpu"
        for batch in (16,) if args.quick else (64, 128):
            results["masks"].extend(bench_masks(device, batch, repeats=5 if on_cpu else 20))
        if args.quick:
            results["steps"].append(bench_step(QUICK, 64, 4, device, steps=2, warmup=1))
        elif on_cpu:
            results["steps"].append(bench_step(VIS_MAE, 224, 8, device, steps=3, warmup=1))
        else:
            for bf16 in (False, True):
                results["steps"].append(
                    bench_step(VIS_MAE, 224, 64, device, steps=20, warmup=3, bf16=bf16)
                )
    results["loadavg_after"] = os.getloadavg()
    _print(results)
    below = [
        f"{r['device']}/B={r['batch']}"
        for r in results["masks"]
        if r["scope"] == "mask" and r["speedup"] < SPEEDUP_GOAL
    ]
    report_and_save(results, args.out, below, "mask", SPEEDUP_GOAL)
    ok = all(r["same_result"] for r in results["masks"])
    ok &= all(r["loss_finite"] for r in results["steps"])
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
