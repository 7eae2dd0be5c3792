"""3D fine-tuning stalls: a pretrained encoder + decoder with a fresh head, with and without a
gentler start (zero-initialised head, head-only warm-up, lower lr for the pretrained parts).

Reproduces the Hippocampus benchmark's lr-tuning job that stalled (Volume Fusion checkpoint,
every pool case but the ``val_size`` validation ones, repeat 0, lr 1e-3) with the benchmark's
own split, seed rule and training code, for several seeds, and logs the validation Dice of
every class every ``--val-every`` steps. A run "stalls" when a class never takes off while
another does (``train.segment3d_module.stalled_classes``)::

    python perf/finetune3d_stalls.py --store STORE --pretrained RUN --out OUT.jsonl \\
        --seeds 151 1151 2151 --variants baseline zero_head head_warmup
    python perf/finetune3d_stalls.py --table OUT.jsonl

Each run appends one JSON line (variant, seed, best validation Dice, per-class curve); rows
already in ``--out`` are skipped, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medfoundry.benchmarks import hippocampus_fewshot as hf
from medfoundry.config import load_config, merge
from medfoundry.data.store.reader import open_store
from medfoundry.tasks.segmentation3d import train_segmenter3d
from medfoundry.train.segment3d_module import stalled_classes
from medfoundry.zoo.adapt3d import network_setup

VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "zero_head": {"head_init": "zero"},
    "head_warmup": {"head_warmup_steps": 50},
    "enc_lr_0.3": {"encoder_lr_mult": 0.3},
    "no_decoder": {"load_decoder": False},
    "zero_head_warmup": {"head_init": "zero", "head_warmup_steps": 50},
}


def run(args: argparse.Namespace) -> None:
    """Train every (variant, seed) not yet in ``args.out``."""
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["init"], r["variant"], r["seed"], r["lr"]))
    cfg = merge(hf.DEFAULT_CONFIG, load_config(args.config))
    cfg.update({"lr": args.lr, "steps": args.steps, "val_every": args.val_every})
    store = open_store(args.store)
    pool, _ = hf._pool(store)
    split = hf.draw_splits(pool, ["all"], int(cfg["val_size"]), 1, int(cfg["base_seed"]))[0]
    index = {c["id"]: i for i, c in enumerate(store.cases)}
    train_idx = [index[i] for i in split["train_ids"]["all"]]
    val_idx = [index[i] for i in split["val_ids"]]
    ckpt = None if args.pretrained == "none" else args.pretrained
    if ckpt is None:  # scratch on the checkpoint's network is what the benchmark compares with
        ref = network_setup(cfg, args.reference) if args.reference else None
        setup = {**ref, "checkpoint": None} if ref else network_setup(cfg, None)
    else:
        setup = network_setup(cfg, ckpt)
    init = "scratch" if ckpt is None else "pretrained"
    for variant in args.variants:
        for seed in args.seeds:
            if (init, variant, seed, args.lr) in done:
                continue
            run_cfg = {**cfg, **VARIANTS[variant]}
            _, info = train_segmenter3d(
                store, train_idx, val_idx, setup=setup, cfg=run_cfg, seed=seed
            )
            record = {
                "init": init,
                "variant": variant,
                "seed": seed,
                "lr": args.lr,
                "steps": args.steps,
                "train_cases": len(train_idx),
                "best_val_dice": info.get("best_val_dice"),
                "best_step": info.get("best_step"),
                "train_seconds": info.get("train_seconds"),
                "curve": info.get("val_classes", []),
            }
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{variant} seed {seed}: best val Dice {record['best_val_dice']:.3f}", flush=True)


def table(path: Path, stall_step: int) -> str:
    """Markdown: per run the best validation Dice, the per-class Dice at ``stall_step`` and
    the classes lagging at the kept weights (``stalled_classes``)."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    lines = [
        f"| init | variant | lr | seed | best val Dice | per-class Dice at step {stall_step} | "
        "lagging class at the kept weights (Dice) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = [c for c in r["curve"] if c["step"] <= stall_step]
        point = at[-1] if at else {}
        names = [
            k[5:] for k in (r["curve"] or [{}])[0] if k.startswith("dice_") and k != "dice_mean"
        ]
        per = ", ".join(f"{n} {point.get(f'dice_{n}', 0.0):.2f}" for n in names)
        stuck = stalled_classes(r["curve"], names)
        what = ", ".join(f"{n} ({v:.2f})" for n, v in stuck.items()) or "none"
        lines.append(
            f"| {r.get('init', 'pretrained')} | {r['variant']} | {r['lr']:g} | {r['seed']} | "
            f"{r['best_val_dice']:.3f} | {per} | {what} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", help="3D store of the development pool (medfoundry prepare)")
    p.add_argument(
        "--pretrained", help="3D pretraining run folder (e.g. Volume Fusion), or none (scratch)"
    )
    p.add_argument(
        "--reference", help="with --pretrained none: build the network of this checkpoint"
    )
    p.add_argument("--config", default="hippocampus_fewshot_cpu")
    p.add_argument("--out", help="JSON-lines file the runs are appended to")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--seeds", type=int, nargs="+", default=[151])
    p.add_argument("--variants", nargs="+", default=["baseline"], choices=sorted(VARIANTS))
    p.add_argument("--table", type=Path, help="print the table of a finished --out file")
    p.add_argument("--stall-step", type=int, default=200)
    args = p.parse_args()
    if args.table:
        print(table(args.table, args.stall_step))
        return
    if not (args.store and args.pretrained and args.out):
        p.error("--store, --pretrained and --out are required to run")
    run(args)


if __name__ == "__main__":
    main()
