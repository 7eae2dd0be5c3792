"""One-change MoCo-v2 experiments at CPU scale: collapse signals and a frozen kNN probe.

The project's own MoCo module (views, encoders, EMA, queue, loss) in a plain SGD loop, small
enough for minutes on one core (ResNet-18 width 0.25, 64² views). Every ``--every`` steps it
prints the loss, the collapse signals of `medfoundry.methods.signals` (spread, mean-embedding
length, within-batch retrieval, queue-age cosines) and, with ``--probe-data``, the kNN / linear
probe AUC of the frozen backbone (`medfoundry.train.probe`). Defaults are the ``adam_cpu``
preset's ratios: batch 64, queue 4,096 (64 steps of keys), m 0.99, lr 0.03 x 64 / 256, cosine.
Each flag changes one thing:

    python perf/moco_experiments.py --data KERMANY_POOL JSRT_POOL/images --probe-data KERMANY_POOL
    ... --momentum 0.999 | --momentum-end 0.999 | --proj-bn | --queue 256 | --symmetric
    ... --bn-split 4 | --schedule constant | --lr 0.075 | --crop-scale 0.5 1 | --rotation 10
    ... --tag NAME --json OUT.json
    python perf/moco_experiments.py --table OUT.json [--plot OUT.png]   # table (and plot)

`--json` appends one record per run (settings and the logged rows) to a JSON-lines file, the
raw material of docs/representation.md.
"""

from __future__ import annotations

import argparse
import json
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
from medfoundry.train.schedules import cosine_lambda

SIGNALS = ("loss", "pos_sim", "neg_sim", "spread", "mean_length", "retrieval", "neg_new", "neg_old")


TABLE = (
    "retrieval",
    "mean_length",
    "spread",
    "neg_new",
    "neg_old",
    "loss",
    "knn_auc",
    "linear_auc",
)


def plot(path: Path, out: Path) -> None:
    """Retrieval, mean-embedding length and kNN AUC against the step, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in path.read_text().splitlines()]
    keys = ("retrieval", "mean_length", "knn_auc")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6))
    colors = plt.cm.tab20.colors
    for i, rec in enumerate(records):
        for ax, key in zip(axes, keys, strict=True):
            rows = [r for r in rec["rows"] if key in r]
            xs, ys = [r["step"] for r in rows], [r[key] for r in rows]
            ax.plot(xs, ys, label=rec["tag"], color=colors[i % 20], ls="-" if i < 10 else "--")
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(key)
        ax.set_xlabel("step")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, help="print the markdown table of a --json file, exit")
    p.add_argument("--plot", type=Path, help="with --table: also plot the runs to this PNG")
    add_data_flags(p, load_size=80, view_size=64)
    add_number_flags(p, width=0.25, queue=4096, steps=600, batch=64)
    p.add_argument("--lr", type=float, default=0.03 * 64 / 256, help="the preset's scaled lr")
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--momentum-end", type=float, default=None)
    p.add_argument("--proj-bn", action="store_true")
    p.add_argument("--symmetric", action="store_true")
    add_number_flags(p, bn_split=1, temperature=0.2)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--crop-scale", type=float, nargs=2, default=None, help="view crop area range")
    p.add_argument("--rotation", type=float, default=None, help="max view rotation (degrees)")
    add_run_flags(p)
    a = p.parse_args()
    if a.table is not None:
        print(last_rows_table(a.table, TABLE))
        if a.plot is not None:
            plot(a.table, a.plot)
        return
    if not a.data:
        p.error("--data is required")

    images, probe = load_experiment_data(a)
    augment = {}
    if a.crop_scale is not None:
        augment["scale"] = tuple(a.crop_scale)
    if a.rotation is not None:
        augment["rotation"] = a.rotation
    backbone = create_backbone(name="resnet18", width=a.width, in_channels=1)
    moco = build_method(
        "moco",
        backbone,
        out_size=a.view_size,
        proj_hidden=256,
        queue_size=a.queue,
        momentum=a.momentum,
        momentum_end=a.momentum_end,
        temperature=a.temperature,
        proj_bn=a.proj_bn,
        symmetric=a.symmetric,
        bn_splits=a.bn_split,
        augment=augment,
    )
    params = [q for q in moco.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    decay = cosine_lambda(a.steps, a.warmup) if a.schedule == "cosine" else (lambda _s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    gen = torch.Generator().manual_seed(a.seed)

    def train_step(step: int, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        moco.set_progress(step / a.steps)
        out = moco(batch, update=True)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        return out

    run_experiment(a, images, train_step, SIGNALS, gen, moco.backbone, probe)


if __name__ == "__main__":
    main()
