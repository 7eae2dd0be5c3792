"""The one benchmark engine: jobs, resume, results layout, lr tuning, saving (issue #13).

Every benchmark (a `BenchmarkSpec`) runs the same way:

- **Jobs**: per arm, per group (Kermany's mode; one empty group otherwise): first every lr of
  the spec's grid on repeat 0 at each tuning cell (the smallest and the largest budget), then
  every cell × repeat with the chosen lr.
- **Layout**: ``runs[arm][*group][cell][repeat]`` holds a run's record and
  ``tuning[arm][*group][score][repr(lr)][cell]`` a tuning job's validation score; with a grid,
  ``tuning[arm][*group]`` also holds ``budgets`` (the tuning cells), ``mean_<score>`` and
  ``chosen_lr``, and ``arms[arm]["lr"][*group]`` the lr every run of the group used.
- **lr choice**: the grid value with the best mean validation score over the tuning cells; a
  missing or NaN score counts as −∞ (that lr never wins unless every lr failed); ties go to
  the first value in the grid.
- **Resume**: ``results.partial.json`` is written atomically after every job; a restart with
  the same protocol (config outside the spec's resume-free keys, and the same data) skips
  finished jobs; another protocol is refused. ``results.json`` is written at the end.
- **Arms**: ``arms`` (the CLI's ``--arms``) runs only the named arms, each name as the full
  list would give it; run such processes into separate folders, then ``benchmark merge``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medfoundry.benchmarks import state as store
from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Job, parse_arms
from medfoundry.errors import MedfoundryError
from medfoundry.runtime import record_run


def nested(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """``d[k0][k1]...`` created as empty dicts where missing."""
    for k in keys:
        d = d.setdefault(k, {})
    return d


def peek(d: dict[str, Any], keys: Sequence[str]) -> Any:
    """``d[k0][k1]...`` or None where a level is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def build_jobs(spec: BenchmarkSpec, cfg: dict[str, Any], ctx: Context) -> list[Job]:
    """Every job of the benchmark in run order (module docstring)."""
    jobs: list[Job] = []
    for arm in ctx.arms:
        for group in spec.groups(cfg):
            grid = spec.lr_grid(ctx, arm, group)
            cells = spec.tune_cells(ctx, group) if grid else []
            jobs += [Job("tune", arm, group, c, 0, lr) for lr in grid for c in cells]
            jobs += [
                Job("run", arm, group, c, r)
                for c in spec.cells(cfg, group)
                for r in range(spec.repeats(cfg))
            ]
    return jobs


def is_done(spec: BenchmarkSpec, state: dict[str, Any], job: Job) -> bool:
    """Whether the job's result is in ``state``."""
    if job.kind == "tune":
        path = [job.arm_name, *job.group, spec.score, repr(job.lr)]
        return job.cell in (peek(state["tuning"], path) or {})
    return str(job.repeat) in (peek(state["runs"], [job.arm_name, *job.group, job.cell]) or {})


def chosen_lr(
    spec: BenchmarkSpec, state: dict[str, Any], ctx: Context, arm: dict, group: tuple[str, ...]
) -> float:
    """The lr of the group's runs (rule in the module docstring); records the choice."""
    grid = spec.lr_grid(ctx, arm, group)
    if not grid:
        return spec.default_lr(ctx, arm, group)
    cells = spec.tune_cells(ctx, group)
    tuning = nested(state["tuning"], [arm["name"], *group])
    scores = tuning.setdefault(spec.score, {})
    means = {}
    for lr in grid:
        vals = [(scores.get(repr(lr)) or {}).get(c) for c in cells]
        vals = [-math.inf if v is None or v != v else float(v) for v in vals]
        means[lr] = sum(vals) / len(vals)
    best = max(grid, key=lambda lr: means[lr])
    tuning.update({"budgets": cells, f"mean_{spec.score}": {repr(k): v for k, v in means.items()}})
    tuning["chosen_lr"] = best
    return best


def set_arm_lr(state: dict[str, Any], arm: str, group: tuple[str, ...], lr: float) -> None:
    """``arms[arm]["lr"][*group] = lr`` (``arms[arm]["lr"] = lr`` without groups)."""
    entry = state["arms"][arm]
    if not group:
        entry["lr"] = lr
        return
    nested(entry.setdefault("lr", {}), group[:-1])[group[-1]] = lr


def run_benchmark(
    spec: BenchmarkSpec,
    train_data: Any,
    test_data: Any,
    pretrained: Sequence[str | Path | None],
    out_dir: str | Path,
    config: dict[str, Any],
    progress: bool = True,
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``spec`` into ``out_dir``; returns the state written to results.json."""
    cfg = spec.resolve_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = spec.prepare(cfg, train_data, test_data, pretrained, out_dir, progress)
    ctx.arms = parse_arms(arms, ctx.arms)
    ctx.progress, ctx.out_dir = progress, out_dir
    found = store.stored_state(out_dir)
    free = spec.free_keys(cfg, ctx, found[1].get("config", {}) if found else {})
    state = store.load_state(out_dir, cfg, free)
    if state.get("runs") and any(state.get(k) != v for k, v in ctx.identity.items()):
        raise MedfoundryError(
            f"{out_dir}: holds results for other train/test folders; use another output folder"
        )
    spec.init_state(state, cfg, ctx)
    state["benchmark"], state["complete"] = spec.name, False
    for key in ("runs", "tuning", "arms"):
        state.setdefault(key, {})
    record_run(out_dir, cfg)
    for arm in ctx.arms:
        state["arms"].setdefault(arm["name"], {}).update(spec.arm_record(ctx, arm))

    def write_partial() -> None:
        spec.summarize(state, ctx)
        store.write_partial(out_dir, state)

    jobs = build_jobs(spec, cfg, ctx)
    todo = [j for j in jobs if not is_done(spec, state, j)]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=spec.name, disable=not progress)
    for job in todo:
        lr = job.lr if job.kind == "tune" else chosen_lr(spec, state, ctx, job.arm, job.group)
        if job.kind == "run":
            set_arm_lr(state, job.arm_name, job.group, lr)
        bar.set_description(job.label())
        score, record = spec.run_job(ctx, job, lr)
        if job.kind == "tune":
            path = [job.arm_name, *job.group, spec.score, repr(job.lr)]
            nested(state["tuning"], path)[job.cell] = score
        else:
            nested(state["runs"], [job.arm_name, *job.group, job.cell])[str(job.repeat)] = record
            bar.write(spec.log_line(job, record))
        write_partial()
        bar.update(1)
    bar.close()
    for arm in ctx.arms:
        for group in spec.groups(cfg):
            set_arm_lr(state, arm["name"], group, chosen_lr(spec, state, ctx, arm, group))
    spec.summarize(state, ctx)
    spec.finalize(state, ctx)
    state["complete"] = all(is_done(spec, state, j) for j in jobs)
    store.write_final(out_dir, state)
    spec.report(state, ctx, out_dir)
    return state
