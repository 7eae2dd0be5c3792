"""One-change Adam-v2 experiments at CPU scale: DINO's collapse signals and a frozen kNN probe.

The project's own ``AdamV2`` module (views, student/teacher, centring, EMA, losses) in a plain
AdamW loop with the reference's rules (linear warm-up then cosine lr, per-parameter gradient
clipping at 3, last layer frozen for the first ``--freeze-last`` steps), small enough for minutes
on one core (ResNet-18 width 0.25, 64² globals). Every ``--every`` steps it prints the loss and
the signals (within-batch retrieval, the bottleneck's mean length and spread, the teacher's
target entropy and batch-mean entropy, docs/adam_v2.md) and, with ``--probe-data``, the kNN /
linear probe AUC of the frozen teacher backbone (what the method exports). Each flag changes
one thing:

    python perf/adam_v2_experiments.py --data KERMANY_POOL JSRT_POOL/images --probe-data KERMANY_POOL
    ... --head-bn | --centering sinkhorn | --teacher-temp 0.07 | --head-dim 1024 | --lr 1e-3 | --momentum 0.99
    ... --mode LCD --level 1 | --tag NAME --json OUT.json
    python perf/adam_v2_experiments.py --table OUT.json     # the last row of each run

`--json` appends one record per run (settings and rows) to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from bench_common import (
    add_data_flags,
    add_number_flags,
    add_run_flags,
    last_rows_table,
    load_experiment_data,
    run_experiment,
)

from medfoundry.methods import build_method
from medfoundry.nets import create_backbone
from medfoundry.train.pretrain_module import clip_per_parameter_

SIGNALS = (
    "loss_l",
    "retrieval",
    "mean_length",
    "spread",
    "teacher_entropy",
    "teacher_batch_entropy",
)
TABLE = (*SIGNALS, "knn_auc", "linear_auc", "eve_same_image", "eve_same_landmark", "eve_locality")


def eve_measure(backbone: torch.nn.Module, folder: Path, n: int, view_size: int):
    """A closure measuring the Eve of ``backbone`` on ``n`` JSRT-layout images of ``folder``: crops
    of ¼ of the image side at the 14 mask-derived landmarks, resized to ``view_size``. Returns
    the centred cosine of two landmarks of one image (identity), of one landmark across images
    (location; docs/eve.md) and the kNN accuracy of the landmark's name, half the images
    against the other half: the benchmark's locality, cheap enough for every logged row."""
    from medfoundry.data.normalize import XRAY_NORMALIZATION
    from medfoundry.embed.encoder import EveModel, load_images
    from medfoundry.evaluate.eve import _landmark_eve, _points, identity_vs_location, knn_accuracy
    from medfoundry.evaluate.jsrt_landmarks import LANDMARKS, read_jsrt_landmarks

    records = read_jsrt_landmarks(folder)[:n]
    names = list(LANDMARKS)
    model = EveModel(backbone, view_size, 256, 1, dict(XRAY_NORMALIZATION), "teacher")
    images, sizes = load_images([r.image for r in records], model)
    points = _points(records, names)
    crop = float(sizes.min()) / 4
    half = len(records) // 2

    def measure() -> dict[str, float]:
        was = backbone.training
        backbone.eval()
        eve = _landmark_eve(model, images, sizes, points, crop, 256)  # (N, L, D)
        backbone.train(was)
        lab = torch.arange(len(names))
        correct = knn_accuracy(
            eve[:half].reshape(-1, eve.shape[-1]), lab.repeat(half),
            eve[half:].reshape(-1, eve.shape[-1]), lab.repeat(len(records) - half), 5,
        )  # fmt: skip
        iv = identity_vs_location(eve)
        return {
            "eve_same_image": iv["same_image_other_landmark"],
            "eve_same_landmark": iv["same_landmark_other_image"],
            "eve_locality": float(correct.mean()),
        }

    return measure


def lr_at(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``base`` to ``floor``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, help="print the markdown table of a --json file, exit")
    add_data_flags(p, load_size=128, view_size=64)
    add_number_flags(p, local_size=24, n_local=4, width=0.25)
    p.add_argument("--mode", choices=["L", "LCD"], default="L")
    add_number_flags(p, level=0, steps=300, batch=32)
    p.add_argument("--lr", type=float, default=5e-4 * 32 / 256, help="the reference's scaled lr")
    add_number_flags(p, warmup=15, weight_decay=0.04, head_dim=4096, head_hidden=512)
    p.add_argument("--head-bn", action="store_true")
    p.add_argument("--bottleneck-bn", action="store_true")
    p.add_argument("--free-gain", action="store_true", help="learn the prototypes' norm gain")
    add_number_flags(p, teacher_temp=0.04, student_temp=0.1, center_momentum=0.9)
    p.add_argument("--centering", choices=["ema", "sinkhorn"], default="ema")
    add_number_flags(p, momentum=0.98, momentum_end=0.995)
    p.add_argument("--freeze-last", type=int, default=30, help="steps with the last layer frozen")
    p.add_argument("--rotation", type=float, default=None, help="stage-L rotation (degrees)")
    p.add_argument("--local-scale", type=float, nargs=2, default=None, help="stage-L local areas")
    p.add_argument("--global-scale", type=float, nargs=2, default=None, help="stage-L global areas")
    add_number_flags(p, squares_per_image=1)
    p.add_argument("--eve-data", type=Path, help="JSRT-layout folder for the Eve measures")
    add_number_flags(p, eve_images=24)
    add_run_flags(p)
    a = p.parse_args()
    if a.table is not None:
        print(last_rows_table(a.table, TABLE))
        return
    if not a.data:
        p.error("--data is required")

    images, probe = load_experiment_data(a)
    augment = {
        "n_local": a.n_local,
        "local_size": a.local_size,
        "part_size": a.view_size // 2,
    }
    if a.rotation is not None:
        augment["rotation"] = a.rotation
    if a.local_scale is not None:
        augment["local_scale"] = tuple(a.local_scale)
    if a.global_scale is not None:
        augment["global_scale"] = tuple(a.global_scale)
    backbone = create_backbone(name="resnet18", width=a.width, in_channels=1)
    method = build_method(
        "adam_v2",
        backbone,
        out_size=a.view_size,
        level=a.level,
        mode=a.mode,
        augment=augment,
        head_dim=a.head_dim,
        head_hidden=a.head_hidden,
        head_bn=a.head_bn,
        bottleneck_bn=a.bottleneck_bn,
        head_norm_last_layer=not a.free_gain,
        momentum=a.momentum,
        momentum_end=a.momentum_end,
        center_momentum=a.center_momentum,
        centering=a.centering,
        student_temp=a.student_temp,
        teacher_temp=a.teacher_temp,
        squares_per_image=a.squares_per_image,
    )
    groups = method.param_groups(a.weight_decay)
    opt = torch.optim.AdamW(groups, lr=a.lr)
    last_layer = list(method.head.last_layer.parameters())
    gen = torch.Generator().manual_seed(a.seed)
    keys = [*SIGNALS, "loss_c", "loss_d"] if a.mode == "LCD" else list(SIGNALS)

    def train_step(step: int, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        method.set_progress(step / a.steps)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.warmup, a.lr, 1e-6)
        out = method(batch, update=True, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        if step < a.freeze_last:
            for q in last_layer:
                q.grad = None
        clip_per_parameter_([q.grad for q in method.parameters() if q.grad is not None], 3.0)
        opt.step()
        return out

    method.train()
    extra = None
    if a.eve_data is not None:
        extra = eve_measure(method.teacher_backbone, a.eve_data, a.eve_images, a.view_size)
    run_experiment(a, images, train_step, keys, gen, method.teacher_backbone, probe, extra)


if __name__ == "__main__":
    main()
