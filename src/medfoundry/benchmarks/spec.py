"""What a benchmark tells the engine: its data, arms, cells, one training call and its report.

A benchmark is a `BenchmarkSpec` subclass with a module-level ``SPEC`` instance in a module of
this package; the engine (`medfoundry.benchmarks.engine`) owns the jobs, resume, the results
layout, lr tuning, saving, merging and the CLI flags. The walk-through: docs/contributing.md.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfoundry.errors import MedfoundryError


@dataclass(frozen=True)
class Job:
    """One training run: ``kind`` "tune" (lr ``lr`` on repeat 0) or "run" (the chosen lr).

    ``group`` holds the result levels above the cell (Kermany's mode; empty for the others),
    ``cell`` the budget label (k, a case count, a percentage), ``repeat`` the subset draw.
    """

    kind: str
    arm: dict[str, Any] = field(hash=False, compare=False)
    group: tuple[str, ...]
    cell: str
    repeat: int
    lr: float | None = None

    @property
    def arm_name(self) -> str:
        return str(self.arm["name"])

    def label(self) -> str:
        """Progress-bar text: arm, group, cell, repeat and the tuned lr."""
        parts = [self.arm_name, *self.group, self.cell, f"r={self.repeat}"]
        return " ".join(parts) + (f" tune lr={self.lr:g}" if self.kind == "tune" else "")


@dataclass
class Context:
    """What `BenchmarkSpec.prepare` found: the arms and anything its `run_job` needs.

    ``header``: state keys this run sets (protocol: splits, ids, classes, ...);
    ``identity``: state keys whose stored value must equal this run's when results exist (the
    train/test folders' contents); ``data``: the spec's own cache (images, stores, splits).
    """

    arms: list[dict[str, Any]]
    header: dict[str, Any]
    identity: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    out_dir: Path = Path(".")


@dataclass(frozen=True)
class Flag:
    """A benchmark-specific CLI flag that sets one config key (``--shots 3 6`` → shots)."""

    name: str
    key: str
    help: str
    type: Any = None
    nargs: str | int | None = None
    metavar: Any = None


class BenchmarkSpec:
    """Base class: override the attributes and the methods that raise NotImplementedError."""

    name: str = ""  # results' "benchmark" value and the registry key (snake_case)
    command: str = ""  # the CLI subcommand (kebab-case)
    help: str = ""
    description: str | None = None
    preset: str = ""  # default config preset; "<preset>_cpu" is the CPU one
    defaults: dict[str, Any] = {}
    resume_free: Collection[str] = ()  # config keys that change no finished run
    group_levels: tuple[str, ...] = ()  # result levels above the cell (e.g. ("mode",))
    score: str = "val_dice"  # the validation score that lr tuning maximises
    size_flag: str | None = "image-size"  # "image-size" / "patch-size" / None
    has_steps: bool = True
    flags: tuple[Flag, ...] = ()
    train_help: str = "training folder"
    test_help: str = "test folder (evaluation only)"
    pretrained_help: str = "run folder(s)/checkpoint(s), or 'none' for scratch only"
    trains: bool = True  # False: an evaluation-only benchmark (one job per arm, no tuning)

    # --- configuration -------------------------------------------------------------------
    def resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` over `defaults`, checked and normalised."""
        return {**copy.deepcopy(self.defaults), **copy.deepcopy(config)}

    def free_keys(self, cfg: dict[str, Any], ctx: Context, stored: dict[str, Any]) -> set[str]:
        """Config keys a resume may change (``stored``: the stored config, or {})."""
        return set(self.resume_free)

    # --- data and arms ---------------------------------------------------------------------
    def prepare(
        self,
        cfg: dict[str, Any],
        train_data: Any,
        test_data: Any,
        pretrained: Sequence[str | Path | None],
        out_dir: Path,
        progress: bool,
    ) -> Context:
        """Resolve the arms, read both folders, draw the splits (nothing trains yet)."""
        raise NotImplementedError

    def init_state(self, state: dict[str, Any], cfg: dict[str, Any], ctx: Context) -> None:
        """Write this run's protocol into ``state`` (default: ``ctx.header`` over it)."""
        state.update(ctx.header)

    def arm_record(self, ctx: Context, arm: dict[str, Any]) -> dict[str, Any]:
        """The ``state["arms"][name]`` entry of an arm (checkpoint, network, load report)."""
        raise NotImplementedError

    # --- jobs ------------------------------------------------------------------------------
    def groups(self, cfg: dict[str, Any]) -> list[tuple[str, ...]]:
        """The result groups above the cells (default: one, empty)."""
        return [()]

    def cells(self, cfg: dict[str, Any], group: tuple[str, ...]) -> list[str]:
        """The cell labels of a group, in run order."""
        raise NotImplementedError

    def repeats(self, cfg: dict[str, Any]) -> int:
        return int(cfg["repeats"])

    def lr_grid(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> list[float]:
        """The learning rates to tune (empty: no tuning, `default_lr`)."""
        return []

    def default_lr(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> float:
        raise NotImplementedError

    def tune_cells(self, ctx: Context, group: tuple[str, ...]) -> list[str]:
        """The cells lr tuning runs on (repeat 0): the smallest and the largest budget."""
        raise NotImplementedError

    def run_job(self, ctx: Context, job: Job, lr: float) -> tuple[float | None, dict | None]:
        """Train (and, for a "run" job, test) one job: (validation score, run record)."""
        raise NotImplementedError

    def log_line(self, job: Job, record: dict[str, Any]) -> str:
        """The line printed after a finished run."""
        return f"{job.arm_name} {' '.join(job.group)} {job.cell} repeat={job.repeat}"

    # --- results ---------------------------------------------------------------------------
    def summarize(self, state: dict[str, Any], ctx: Context) -> None:
        """Set the summary keys of ``state`` from its runs (after every job and at the end)."""
        raise NotImplementedError

    def finalize(self, state: dict[str, Any], ctx: Context) -> None:
        """Keys of the final results only (default: none)."""

    def report(self, state: dict[str, Any], ctx: Context, out_dir: Path) -> None:
        """Write results.md and the plot."""
        raise NotImplementedError

    def run(
        self,
        train_data: Any,
        test_data: Any,
        pretrained: Sequence[str | Path | None],
        out_dir: str | Path,
        config: dict[str, Any],
        progress: bool = True,
        arms: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) the benchmark with the engine (`engine.run_benchmark`)."""
        from medfoundry.benchmarks import engine

        return engine.run_benchmark(
            self, train_data, test_data, pretrained, out_dir, config, progress, arms
        )

    def same_network(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        """Whether two folders' entries of one arm trained the same network (merge)."""
        return (a.get("network"), a.get("options")) == (b.get("network"), b.get("options"))


def parse_arms(selected: Sequence[str] | None, arms: list[dict[str, Any]]) -> list[dict]:
    """The arms named in ``selected`` (all when None), in the benchmark's order."""
    if not selected:
        return arms
    names = [a["name"] for a in arms]
    unknown = [s for s in selected if s not in names]
    if unknown:
        raise MedfoundryError(f"--arms {' '.join(unknown)}: no such arm; the arms are {names}")
    return [a for a in arms if a["name"] in selected]
