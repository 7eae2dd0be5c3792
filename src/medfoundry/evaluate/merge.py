"""Merge arms that ran as separate processes into one benchmark folder.

A benchmark trains its arms one after another; on a machine with idle cores (or several
machines) each arm can run as its own process into its own folder with the same command and
config, e.g. ``--pretrained none`` for the scratch arm. ``merge_arms`` copies the finished runs
and lr-tuning scores of the sources' arms into the destination's ``results.partial.json``
after checking that every folder holds the same protocol (config, splits, pool and test cases)
and that an arm present in two folders trains the same network; rerunning the destination's
command then finds those jobs done and writes results.json, results.md and the plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from medfoundry.errors import MedfoundryError
from medfoundry.evaluate.resume import PARTIAL, RESULTS, protocol, stored_state, write_partial

# Top-level state keys that describe one process's run, not the protocol.
_RUN_KEYS = frozenset(
    {"runs", "tuning", "arms", "summary", "summary_hd95", "rows", "complete", "stores"}
    | {"train_data", "test_data"}
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


def merge_arms(
    into: str | Path,
    sources: Sequence[str | Path],
    resume_free: Collection[str] = (),
    same_network: Callable[[dict[str, Any], dict[str, Any]], bool] | None = None,
) -> dict[str, list[str]]:
    """Copy every arm's runs and tuning from ``sources`` into ``into``; returns {source: arms}.

    Refuses (``MedfoundryError``, nothing written) when a source's protocol differs from the
    destination's, when an arm is in two folders with different networks (``same_network`` on
    their ``arms`` entries; default: equal ``network`` and ``options``), or when two folders
    hold different results for the same arm, budget and repeat.
    """
    into = Path(into)
    dst = read_state(into)
    want = _protocol_view(dst, resume_free)
    same = same_network or (
        lambda a, b: (a.get("network"), a.get("options")) == (b.get("network"), b.get("options"))
    )
    merged: dict[str, list[str]] = {}
    for src_dir in map(Path, sources):
        src = read_state(src_dir)
        have = _protocol_view(src, resume_free)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            if diff == ["config"]:
                c1, c2 = have["config"], want["config"]
                diff = [f"config.{k}" for k in sorted(set(c1) | set(c2)) if c1.get(k) != c2.get(k)]
            raise MedfoundryError(
                f"{src_dir}: a different protocol than {into} (differs in {diff})"
            )
        for arm in dict.fromkeys([*src.get("runs", {}), *src.get("tuning", {})]):
            budgets = src.get("runs", {}).get(arm, {})
            src_arm = src.get("arms", {}).get(arm, {})
            dst_arm = dst.setdefault("arms", {}).get(arm)
            if dst_arm is not None and not same(src_arm, dst_arm):
                raise MedfoundryError(
                    f"arm {arm!r}: {src_dir} trained another network than {into} "
                    f"({src_arm.get('network')} {src_arm.get('options')} vs "
                    f"{dst_arm.get('network')} {dst_arm.get('options')})"
                )
            runs = dst.setdefault("runs", {}).setdefault(arm, {})
            for budget, repeats in budgets.items():
                for rep, record in repeats.items():
                    old = runs.get(budget, {}).get(rep)
                    if old is not None and old != record:
                        raise MedfoundryError(
                            f"arm {arm!r}, budget {budget}, repeat {rep}: different results in "
                            f"{src_dir} and {into}"
                        )
                    runs.setdefault(budget, {})[rep] = record
            if arm in src.get("tuning", {}):
                tuned = dst.setdefault("tuning", {}).setdefault(arm, {"val_dice": {}})
                for lr, scores in src["tuning"][arm].get("val_dice", {}).items():
                    tuned["val_dice"].setdefault(lr, {}).update(scores)
            if dst_arm is None:
                dst["arms"][arm] = src_arm
            merged.setdefault(str(src_dir), []).append(arm)
    dst["complete"] = False
    write_partial(into, dst)  # the rerun reads the partial state first
    return merged


def benchmark_rules(
    name: str,
) -> tuple[Collection[str], Callable[[dict[str, Any], dict[str, Any]], bool] | None]:
    """(resume-free config keys, arm network comparison) of the benchmark called ``name``."""
    if name == "hippocampus_fewshot":
        from medfoundry.evaluate import hippocampus_fewshot as hf

        return hf._RESUME_FREE, hf.same_arm_network
    if name == "jsrt_fewshot":
        from medfoundry.evaluate import jsrt_fewshot as jf

        return jf._RESUME_FREE, None
    if name == "kermany_label_efficiency":
        from medfoundry.evaluate import kermany_label_efficiency as kl

        return kl._RESUME_FREE, None
    raise MedfoundryError(f"unknown benchmark {name!r} in the destination folder")


def merge_benchmark_folders(
    into: str | Path, sources: Sequence[str | Path]
) -> dict[str, list[str]]:
    """``merge_arms`` with the rules of the destination's benchmark."""
    resume_free, same = benchmark_rules(str(read_state(Path(into)).get("benchmark")))
    return merge_arms(into, sources, resume_free, same)
