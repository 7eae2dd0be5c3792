"""Per-epoch table of a pretraining run folder: loss, collapse signals, pruned fraction, probe.

Reads each stage's Lightning CSV log (`stage*/logs/metrics.csv`) and prints one markdown row
per epoch: the epoch means of the training signals, the validation retrieval and the probe
scores (the probe's step-0 row, when logged, is the starting weights'). Columns no row of the
run has (a method's signals it does not log) are left out.

    python tools/summarize_pretrain.py runs/adam_cpu
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

COLUMNS = (
    ("train/loss_epoch", "loss"),
    ("train/retrieval_epoch", "retrieval"),
    ("train/mean_length_epoch", "mean length"),
    ("train/spread_epoch", "spread"),
    ("train/pruned_fraction_epoch", "pruned"),
    ("train/teacher_entropy_epoch", "teacher entropy"),
    ("train/teacher_batch_entropy_epoch", "teacher batch entropy"),
    ("train/loss_c_epoch", "C"),
    ("train/loss_d_epoch", "D"),
    ("val/retrieval", "val retrieval"),
    ("probe/knn_auc", "kNN AUC"),
    ("probe/linear_auc", "linear AUC"),
)


def stage_rows(stage: Path) -> list[dict[str, str]]:
    """One merged dict per (epoch, step) row group of a stage's CSV log, in order."""
    path = stage / "logs" / "metrics.csv"
    if not path.is_file():
        return []
    merged: dict[tuple[str, str], dict[str, str]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not any(row.get(k) for k, _ in COLUMNS):
                continue
            key = (row.get("epoch") or "", row.get("step") or "")
            merged.setdefault(key, {}).update({k: v for k, v in row.items() if v})
    return list(merged.values())


def summarize(run: Path) -> str:
    """Markdown table of every stage's epochs."""
    stages = [(d.name, stage_rows(d)) for d in sorted(run.glob("stage*")) if d.is_dir()]
    present = {k for _, rows in stages for row in rows for k in row}
    columns = [(k, name) for k, name in COLUMNS if k in present]
    head = "| stage | epoch | step | " + " | ".join(name for _, name in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 3)]
    for name, rows in stages:
        for row in rows:
            cells = [f"{float(row[k]):.3f}" if k in row else "" for k, _ in columns]
            trained = any(k.startswith("train/") for k in row)
            epoch = row.get("epoch", "") if trained else "start"
            lines.append(
                f"| {name} | {epoch} | {row.get('step', '')} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a pretraining run folder")
    print(summarize(p.parse_args().run))


if __name__ == "__main__":
    main()
