"""`medfoundry benchmark eve`: the Eve evaluation (``medfoundry.evaluate.eve``) per arm.

An evaluation-only benchmark: one job per arm (a checkpoint or a random initialisation of its
network), nothing trained and no lr to tune, so it runs its own loop over the arms while
sharing the engine's resume state, registry and CLI flags. Resumable per arm
(``results.partial.json``); protocol and rules: docs/eve.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfoundry.benchmarks.spec import BenchmarkSpec, Flag, parse_arms
from medfoundry.benchmarks.state import load_state, write_final, write_partial
from medfoundry.evaluate.eve import (
    RESUME_FREE,
    _subset,
    evaluate_arm,
    plot_results,
    report_table,
    resolve_eve_arms,
)
from medfoundry.evaluate.jsrt_landmarks import read_jsrt_landmarks
from medfoundry.runtime import atomic_write_text, record_run


class EveBenchmark(BenchmarkSpec):
    """Eve on JSRT landmarks: matching, locality and compositionality per arm."""

    name = "eve"
    command = "eve"
    help = "Eve on JSRT landmarks: matching across patients, locality (kNN), compositionality"
    description = (
        "For every checkpoint and a random initialisation of each network, on the "
        "test folder only: landmark matching error (px), kNN accuracy of the landmark name and "
        "cosine of a whole's Eve with its parts' mean; writes results.json, results.md, "
        "results.png and a t-SNE map per arm; a rerun resumes (protocol: "
        "medfoundry.evaluate.eve, docs/eve.md)."
    )
    preset = "eve"
    resume_free = RESUME_FREE
    trains = False
    has_steps = False
    size_flag = None
    flags = (
        Flag("--crop-size", "crop_size", "[crop_size] landmark crop side in pixels", type=int),
        Flag("--stride", "stride", "[stride] dense matching grid step in pixels", type=int),
    )
    train_help = "JSRT-layout folder: reference images and the kNN memory"
    test_help = "JSRT-layout test folder"
    pretrained_help = "2D run folder(s)/checkpoint(s)"

    def run(
        self,
        train_data: Path,
        test_data: Path,
        pretrained: Sequence[str | Path | None],
        out_dir: str | Path,
        config: dict[str, Any],
        progress: bool = True,
        arms: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return run_eve_benchmark(train_data, test_data, pretrained, out_dir, config, progress, arms)


def run_eve_benchmark(
    train_data: Path,
    test_data: Path,
    pretrained: Sequence[str | Path | None],
    out_dir: str | Path,
    cfg: dict[str, Any],
    progress: bool = True,
    arms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the Eve benchmark; writes results.json, results.md, results.png."""
    out_dir = Path(out_dir)
    chosen = parse_arms(arms, resolve_eve_arms(pretrained))
    train = read_jsrt_landmarks(train_data)
    test = read_jsrt_landmarks(test_data)
    names = list(train[0].points)
    seed = int(cfg["seed"])
    memory = _subset(train, cfg.get("memory_images"), seed)
    refs = _subset(memory, int(cfg["references"]), seed + 1)
    tests = _subset(test, cfg.get("max_test_images"), seed + 2)
    protocol = {
        **cfg,
        "train_data": str(train_data),
        "test_data": str(test_data),
        "references": [r.id for r in refs],
        "memory": [r.id for r in memory],
        "tests": [r.id for r in tests],
        "landmarks": names,
    }
    state = load_state(out_dir, protocol, RESUME_FREE)
    state["config"] = protocol
    results: dict[str, Any] = state.setdefault("arms", {})
    record_run(out_dir, {**protocol, "pretrained": [str(p) for p in pretrained]}, "run_config.json")
    for arm in chosen:
        if arm["name"] in results:
            continue
        results[arm["name"]] = evaluate_arm(arm, refs, memory, tests, names, cfg, out_dir, progress)
        write_partial(out_dir, state)
    atomic_write_text(out_dir / "results.md", report_table(results, cfg))
    plot_results(results, out_dir / "results.png")
    write_final(out_dir, state)
    return state


SPEC = EveBenchmark()
