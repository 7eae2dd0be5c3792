"""Benchmark reports: mean ± sd summaries, Markdown tables and metric-vs-k plots.

The layout is generic: `summary[arm][k][structure] = {"mean": m, "sd": s, "n": n}` (k a
label-count: shots, label fraction, ...). Tables have one row per arm and one column per
(structure, k); plots have one panel per structure with one line per arm and sd error bars.
Plots are drawn with matplotlib's Agg canvas (no display, no global backend switch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfoundry.runtime import atomic_path

Summary = Mapping[str, Mapping[Any, Mapping[str, Mapping[str, float]]]]


def format_mean_sd(mean: float, sd: float, scale: float = 100.0, digits: int = 1) -> str:
    """`85.3 ± 1.2` (values scaled by `scale`, e.g. Dice in percent); `–` when missing."""
    if mean is None or math.isnan(mean):
        return "–"
    sd_txt = "–" if sd is None or math.isnan(sd) else f"{sd * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {sd_txt}"


def _cell(summary: Summary, arm: str, k: Any, structure: str) -> Mapping[str, float] | None:
    per_k = summary.get(arm, {})
    entry = per_k.get(k, per_k.get(str(k)))  # JSON round-trips turn int keys into strings
    return None if entry is None else entry.get(structure)


def markdown_table(
    summary: Summary,
    structures: Sequence[str],
    ks: Sequence[Any],
    arms: Sequence[str] | None = None,
    scale: float = 100.0,
    digits: int = 1,
    k_label: str = "k",
) -> str:
    """Markdown table: rows = arms, columns = structure × k, cells `mean ± sd` (scaled)."""
    arms = list(arms) if arms is not None else list(summary)
    header = ["arm"] + [f"{s} {k_label}={k}" for s in structures for k in ks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm in arms:
        cells = [arm]
        for s in structures:
            for k in ks:
                c = _cell(summary, arm, k, s)
                cells.append(
                    "–" if c is None else format_mean_sd(c["mean"], c["sd"], scale, digits)
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_metric_vs_k(
    summary: Summary,
    structures: Sequence[str],
    ks: Sequence[Any],
    out_path: str | Path,
    arms: Sequence[str] | None = None,
    metric: str = "Dice",
    k_label: str = "training images (k)",
    scale: float = 100.0,
    title: str | None = None,
    log_x: bool = True,
) -> Path:
    """PNG with one panel per structure: metric (mean, sd error bars) vs k, a line per arm."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    arms = list(arms) if arms is not None else list(summary)
    n = max(1, len(structures))
    fig = Figure(figsize=(4.2 * n, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    xs_all = [float(k) for k in ks]
    for ax, s in zip(axes, structures, strict=False):
        for arm in arms:
            xs, ys, es = [], [], []
            for k in ks:
                c = _cell(summary, arm, k, s)
                if c is None or c.get("mean") is None or math.isnan(c["mean"]):
                    continue
                xs.append(float(k))
                ys.append(c["mean"] * scale)
                es.append(0.0 if math.isnan(c.get("sd", 0.0)) else c.get("sd", 0.0) * scale)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm)
        if log_x and xs_all and min(xs_all) > 0:
            ax.set_xscale("log")
        ax.set_xticks(xs_all)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_title(s)
        ax.set_xlabel(k_label)
        ax.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
        ax.grid(alpha=0.3)
    if arms:
        axes[0].legend(fontsize="small")
    return save_figure(fig, out_path, title)


def save_figure(fig: Any, out_path: str | Path, title: str = "") -> Path:
    """Title, tight layout, atomic PNG write, and close (figures pile up in long benchmarks)."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_path
