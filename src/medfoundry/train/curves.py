"""Plot a pretraining run's curves across its stages: the loss and each method's own metrics.

One look at `curves.png` tells whether a run learned. A falling loss alone does not: for
Adam/MoCo within-batch retrieval should rise far above chance, the spread stay well above 0 and
the mean-embedding length well below 1, the newest and oldest negatives look alike (no
key-freshness shortcut) and the pruned fraction stay far from 1; with a probe set, the frozen
kNN / linear AUC should rise (docs/representation.md); for Adam-v2 the teacher's per-image
target entropy should stay well below 1 and the entropy of its batch mean well above 0 (DINO's
two collapses); for VoCo the overlap error should fall below a constant guess's; for Volume Fusion
the voxel accuracy should rise.

Which panels a method gets is its spec's (``MethodSpec.curve_panels``: titles and logged metric
names), after the loss; the signal and probe panels follow for any method that logs them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.methods import method_spec
from medfoundry.methods.spec import Panel
from medfoundry.runtime import atomic_save

GENERIC_LOSS = Panel("loss (dots: validation)", ())
# Panels any method gets when it logs their series: collapse signals and the online probe.
SIGNAL_PANELS = (
    Panel(
        "spread (solid; 1 = uniform, 0 = collapse), mean-embedding length (dashed)",
        (("train/spread_step", "-"), ("train/mean_length_step", "--")),
        (-0.02, 1.05),
    ),
    Panel(
        "frozen probe: kNN AUC (solid), linear AUC (dashed)",
        (("probe/knn_auc", "o-"), ("probe/linear_auc", "s--")),
    ),
)


def panels_for(
    logs: list[dict[str, list[tuple[int, float]]]], method: str | None = None
) -> tuple[Panel, ...]:
    """The loss panel, ``method``'s own (``MethodSpec.curve_panels``; a method that declares
    none, or no method, gets none, an unregistered name is a ValueError), then the signal and
    probe panels whose series some stage logged."""
    logged = {key for s in logs for key in s}
    extra = tuple(p for p in SIGNAL_PANELS if any(key in logged for key, _ in p.series))
    if method is None:
        return (GENERIC_LOSS, *extra)
    spec = method_spec(method)
    return (Panel(spec.loss_title, ()), *spec.curve_panels, *extra)


def run_method(run_dir: Path) -> str | None:
    """The method a run folder's ``config.json`` names, or None (no or unreadable record)."""
    try:
        record = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    method = record.get("method") if isinstance(record, dict) else None
    return str(method) if method is not None else None


def read_stage_log(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Series from a stage's Lightning CSV log: metric name -> [(global step, value)]."""
    path = stage_dir / "logs" / "metrics.csv"
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.get("step") or 0)
            for key, value in row.items():
                if key in ("epoch", "step") or value in (None, ""):
                    continue
                series.setdefault(key, []).append((step, float(value)))
    return series


def plot_pretrain_curves(
    run_dir: str | Path, out: str | Path | None = None, method: str | None = None
) -> Path | None:
    """Write `run_dir/curves.png` (or `out`) with `method`'s panels (default: the method of the
    run's `config.json`); None when the run has no logs yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    stages = sorted(d for d in run_dir.glob("stage*") if d.is_dir())
    logs = [(d.name, read_stage_log(d)) for d in stages]
    logs = [(name, s) for name, s in logs if s]
    if not logs:
        return None
    panels = panels_for([s for _, s in logs], method or run_method(run_dir))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    axes = axes[: len(panels)]
    offset = 0
    for i, (name, s) in enumerate(logs):
        color = f"C{i}"
        shift = lambda pts, o=offset: ([o + p for p, _ in pts], [v for _, v in pts])  # noqa: E731
        axes[0].plot(*shift(s.get("train/loss_step", [])), color=color, lw=0.8, label=name)
        axes[0].plot(*shift(s.get("val/loss", [])), "o-", color=color, ms=3, lw=1.2)
        for ax, panel in zip(axes[1:], panels[1:], strict=True):
            for key, style in panel.series:
                ax.plot(*shift(s.get(key, [])), style, color=color, lw=0.8, ms=3)
        steps = [p for series in s.values() for p, _ in series]
        offset += max(steps, default=0) + 1
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("training step (all stages)")
        ax.grid(alpha=0.3)
        if panel.ylim is not None:
            ax.set_ylim(*panel.ylim)
    axes[0].legend(fontsize=7, title="stage", title_fontsize=7)
    fig.suptitle(run_dir.name, fontsize=10)
    fig.tight_layout()
    target = Path(out) if out is not None else run_dir / "curves.png"
    atomic_save(target, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return target


def plot_reconstructions(
    images: Any, masked: Any, recon: Any, out: str | Path, title: str = ""
) -> Path:
    """Rows of (image, masked input, reconstruction) for an MAE run: what it learned to fill in.

    `images`, `masked`, `recon`: (N, C, H, W) tensors or arrays; the first channel is shown,
    all three panels of a row on the image's own grey scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    for r in range(n):
        img = np.asarray(images[r][0], dtype=np.float32)
        lo, hi = float(img.min()), float(img.max())
        panels = (img, np.asarray(masked[r][0]), np.asarray(recon[r][0]))
        for c, (panel, name) in enumerate(
            zip(panels, ("image", "masked", "reconstruction"), strict=True)
        ):
            axes[r][c].imshow(panel, cmap="gray", vmin=lo, vmax=hi)
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    target = Path(out)
    atomic_save(target, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return target
