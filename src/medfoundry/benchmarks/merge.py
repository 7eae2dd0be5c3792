"""Merge arms that ran as separate processes into one benchmark folder.

A benchmark trains its arms one after another; on a machine with idle cores (or several
machines) each arm can run as its own process into its own folder with the same command,
config and ``--pretrained`` list plus ``--arms NAME``. ``merge_arms`` copies the finished runs
and lr-tuning scores of the sources' arms into the destination's ``results.partial.json``
after checking that every folder holds the same protocol (config, splits, pool and test cases)
and that an arm present in two folders trains the same network; rerunning the destination's
command then finds those jobs done and writes results.json, results.md and the plot. The
results layout is the engine's (``medfoundry.benchmarks.engine``): runs and tuning scores
nested by the benchmark's group levels (Kermany's mode), then cell, then repeat or lr.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from medfoundry.benchmarks.engine import nested
from medfoundry.benchmarks.spec import BenchmarkSpec
from medfoundry.benchmarks.state import PARTIAL, RESULTS, protocol, stored_state, write_partial
from medfoundry.errors import MedfoundryError

# Top-level state keys that describe one process's run, not the protocol.
_RUN_KEYS = frozenset(
    {"runs", "tuning", "arms", "summary", "summary_hd95", "rows", "complete", "stores"}
    | {"train_data", "test_data", "budget_summary"}
)


def read_state(folder: Path) -> dict[str, Any]:
    """The benchmark state of ``folder`` (partial first, then final)."""
    found = stored_state(folder)
    if found is None:
        raise MedfoundryError(
            f"{folder}: no readable {PARTIAL} or {RESULTS} (not a benchmark folder)"
        )
    return found[1]


def _protocol_view(state: dict[str, Any], resume_free: Collection[str]) -> dict[str, Any]:
    view = {k: v for k, v in state.items() if k not in _RUN_KEYS}
    view["config"] = protocol(state.get("config", {}), resume_free)
    return json.loads(json.dumps(view))


def _leaves(tree: dict[str, Any], depth: int, path: tuple[str, ...] = ()):
    """(path, value) of a nested dict's entries ``depth`` levels down."""
    if depth == 0:
        yield path, tree
        return
    for key, sub in tree.items():
        if isinstance(sub, dict):
            yield from _leaves(sub, depth - 1, (*path, key))


def merge_arms(
    into: str | Path, sources: Sequence[str | Path], spec: BenchmarkSpec
) -> dict[str, list[str]]:
    """Copy every arm's runs and tuning scores from ``sources`` into ``into``.

    Returns {source: arms}. Refuses (``MedfoundryError``, nothing written) when a source's
    protocol differs from the destination's, when an arm is in two folders with different
    networks (``spec.same_network``), or when two folders hold different results for the same
    job. Runs are ``runs[arm][*group][cell][repeat]``, tuning scores
    ``tuning[arm][*group][spec.score][lr][cell]``; the lr choice is recomputed by the rerun.
    """
    into = Path(into)
    dst = read_state(into)
    want = _protocol_view(dst, spec.resume_free)
    levels = len(spec.group_levels)
    merged: dict[str, list[str]] = {}
    for src_dir in map(Path, sources):
        src = read_state(src_dir)
        have = _protocol_view(src, spec.resume_free)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            if diff == ["config"]:
                c1, c2 = have["config"], want["config"]
                diff = [f"config.{k}" for k in sorted(set(c1) | set(c2)) if c1.get(k) != c2.get(k)]
            raise MedfoundryError(
                f"{src_dir}: a different protocol than {into} (differs in {diff})"
            )
        for arm in dict.fromkeys([*src.get("runs", {}), *src.get("tuning", {})]):
            src_arm = src.get("arms", {}).get(arm, {})
            dst_arm = dst.setdefault("arms", {}).get(arm)
            if dst_arm is not None and not spec.same_network(src_arm, dst_arm):
                raise MedfoundryError(
                    f"arm {arm!r}: {src_dir} trained another network than {into} "
                    f"({src_arm.get('network')} {src_arm.get('options')} vs "
                    f"{dst_arm.get('network')} {dst_arm.get('options')})"
                )
            runs = src.get("runs", {}).get(arm, {})
            for path, record in _leaves(runs, levels + 2):
                *cell_path, rep = path
                old = nested(dst.setdefault("runs", {}), [arm, *cell_path]).get(rep)
                if old is not None and old != record:
                    where = ", ".join(
                        f"{n} {v}"
                        for n, v in zip([*spec.group_levels, "budget"], cell_path, strict=True)
                    )
                    raise MedfoundryError(
                        f"arm {arm!r}, {where}, repeat {rep}: different results in "
                        f"{src_dir} and {into}"
                    )
                nested(dst["runs"], [arm, *cell_path])[rep] = record
            tuning = src.get("tuning", {}).get(arm, {})
            for group, entry in _leaves(tuning, levels):
                for lr, scores in (entry.get(spec.score) or {}).items():
                    target = nested(dst.setdefault("tuning", {}), [arm, *group, spec.score, lr])
                    target.update(scores)
            if dst_arm is None:
                dst["arms"][arm] = src_arm
            merged.setdefault(str(src_dir), []).append(arm)
    dst["complete"] = False
    write_partial(into, dst)  # the rerun reads the partial state first
    return merged


def merge_benchmark_folders(
    into: str | Path, sources: Sequence[str | Path]
) -> dict[str, list[str]]:
    """``merge_arms`` with the spec of the destination's benchmark."""
    from medfoundry.benchmarks import get_spec

    name = str(read_state(Path(into)).get("benchmark"))
    try:
        spec = get_spec(name)
    except KeyError:
        raise MedfoundryError(f"unknown benchmark {name!r} in the destination folder") from None
    return merge_arms(into, sources, spec)
