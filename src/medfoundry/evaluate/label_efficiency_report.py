"""Reports of a label-efficiency benchmark: mean ± sd summaries, a Markdown table, a PNG plot.

Layout of the summaries: `summary[arm][mode][budget] = {"auc": d, "accuracy": d}` and
`budget_summary[budget] = {"n_images": d, "fraction": d}` with `d = describe(values)`
(mean, sd, n over repeats). Fractions are of the labeled pool (training images minus the
repeat's validation images).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medfoundry.evaluate.arms import arm_table_row
from medfoundry.evaluate.report import format_mean_sd, save_figure
from medfoundry.metrics.summary import describe

MODE_TITLES = {"finetune": "fine-tune", "linear_probe": "linear probe"}


def summarize_runs(
    runs: Mapping[str, Any], budgets: Sequence[str], repeats: int
) -> dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """Mean ± sd of AUC and accuracy over the finished repeats, per arm, mode and budget."""
    out: dict[str, Any] = {}
    for arm, per_mode in runs.items():
        for mode, per_budget in per_mode.items():
            for b in budgets:
                reps = [per_budget.get(b, {}).get(str(r)) for r in range(repeats)]
                reps = [r for r in reps if r is not None]
                if reps:
                    out.setdefault(arm, {}).setdefault(mode, {})[b] = {
                        m: describe([r[m] for r in reps]) for m in ("auc", "accuracy")
                    }
    return out


def summarize_budgets(
    splits: Mapping[str, Any], budgets: Sequence[str], repeats: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Images used and fraction of the labeled pool per budget, mean ± sd over repeats."""
    out: dict[str, Any] = {}
    for b in budgets:
        reps = [splits[b][str(r)] for r in range(repeats) if str(r) in splits.get(b, {})]
        out[b] = {
            "n_images": describe([s["n_images"] for s in reps]),
            "n_patients": describe([s["n_patients"] for s in reps]),
            "fraction": describe([s["fraction"] for s in reps]),
        }
    return out


def _row_name(arm: str, mode: str) -> str:
    return f"{arm} · {MODE_TITLES.get(mode, mode)}"


def markdown_report(state: Mapping[str, Any], arms: Sequence[str], modes: Sequence[str]) -> str:
    """results.md: AUC and accuracy (%) per arm × mode and budget, then budgets and arms."""
    cfg = state["config"]
    budgets = list(state["budgets"])
    bsum = state["budget_summary"]
    summary = state["summary"]
    header = ["arm · mode"] + [
        f"{b} ({bsum[b]['n_images']['mean']:.0f} img)" if bsum[b]["n_images"]["n"] else b
        for b in budgets
    ]
    lines = [
        f"# {state.get('title', 'Label efficiency')}",
        "",
        f"Test AUC (%) / accuracy (%) on all {state['n_test']} test images, mean ± sd over "
        f"{cfg['repeats']} repeats (different labeled subsets and validation patients per "
        f"repeat, identical for every arm and mode). Validation: {100 * cfg['val_fraction']:g} % "
        f"of the training patients per class (at most {cfg['val_max_patients']}), never the test "
        "folder.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for arm in arms:
        for mode in modes:
            cells = [_row_name(arm, mode)]
            for b in budgets:
                c = summary.get(arm, {}).get(mode, {}).get(b)
                if c is None:
                    cells.append("–")
                    continue
                auc = format_mean_sd(c["auc"]["mean"], c["auc"]["sd"])
                acc = format_mean_sd(c["accuracy"]["mean"], c["accuracy"]["sd"])
                cells.append(f"{auc} / {acc}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| budget | labeled images | patients | % of the labeled pool |",
        "|---|---|---|---|",
    ]
    for b in budgets:
        s = bsum[b]
        lines.append(
            f"| {b} | {format_mean_sd(s['n_images']['mean'], s['n_images']['sd'], 1.0, 0)} | "
            f"{format_mean_sd(s['n_patients']['mean'], s['n_patients']['sd'], 1.0, 0)} | "
            f"{format_mean_sd(s['fraction']['mean'], s['fraction']['sd'], 100.0, 2)} |"
        )
    lines += [
        "",
        "| arm | checkpoint | network | input | load report | "
        + " | ".join(f"lr {MODE_TITLES.get(m, m)}" for m in modes)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(modes),
    ]
    for arm in arms:
        info = state["arms"][arm]
        lrs = " | ".join(f"{info.get('lr', {}).get(m, '–')}" for m in modes)
        lines.append(arm_table_row(arm, info, lrs))
    if not state.get("complete"):
        lines += ["", "**Incomplete**: some runs have not finished yet."]
    return "\n".join(lines) + "\n"


def plot_label_efficiency(
    state: Mapping[str, Any],
    arms: Sequence[str],
    modes: Sequence[str],
    out_path: str | Path,
    title: str | None = None,
) -> Path:
    """PNG: AUC and accuracy vs % of the labeled pool (log x), a line per arm × mode, sd bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullLocator

    budgets = list(state["budgets"])
    bsum = state["budget_summary"]
    positions = {  # x of a budget: its mean % of the labeled pool
        b: 100 * bsum[b]["fraction"]["mean"]
        for b in budgets
        if bsum[b]["fraction"]["n"] and not math.isnan(bsum[b]["fraction"]["mean"])
    }
    lo, hi = (min(positions.values()), max(positions.values())) if positions else (1.0, 100.0)
    ticks = [
        m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5) if lo / 1.5 <= m * 10.0**e <= hi * 1.5
    ]
    fig = Figure(figsize=(11, 4.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2", "#937860", "#DA8BC3"]
    styles = {"finetune": ("-", "o"), "linear_probe": ("--", "s")}
    for ax, metric, label in zip(
        axes, ("auc", "accuracy"), ("AUC (%)", "accuracy (%)"), strict=True
    ):
        for i, arm in enumerate(arms):
            for mode in modes:
                xs, ys, es = [], [], []
                for b in budgets:
                    c = state["summary"].get(arm, {}).get(mode, {}).get(b)
                    if c is None or b not in positions or math.isnan(c[metric]["mean"]):
                        continue
                    xs.append(positions[b])
                    ys.append(100 * c[metric]["mean"])
                    sd = c[metric]["sd"]
                    es.append(0.0 if sd is None or math.isnan(sd) else 100 * sd)
                if xs:
                    line, marker = styles.get(mode, ("-.", "^"))
                    ax.errorbar(
                        xs,
                        ys,
                        yerr=es,
                        linestyle=line,
                        marker=marker,
                        capsize=3,
                        color=colors[i % len(colors)],
                        label=_row_name(arm, mode),
                    )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        top = ax.secondary_xaxis("top")  # the budgets' names at their positions
        top.xaxis.set_major_locator(FixedLocator(list(positions.values())))
        top.xaxis.set_minor_locator(NullLocator())
        top.xaxis.set_major_formatter(FixedFormatter(list(positions)))
        top.tick_params(labelsize="x-small", labelrotation=45)
        ax.set_xlabel("labeled training images used (% of the labeled pool, log scale)")
        ax.set_ylabel(label)
        ax.set_title(label.split(" ")[0])
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="small")
    return save_figure(fig, out_path, title)
