"""Resumable benchmark state: `results.partial.json` while running, `results.json` when done.

A restart with the same configuration continues from the stored state; a restart with a
configuration that would change finished runs' numbers is refused instead of mixing results.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from medfoundry.errors import MedfoundryError
from medfoundry.runtime import atomic_write_json

RESULTS = "results.json"
PARTIAL = "results.partial.json"


def protocol(config: dict[str, Any], resume_free: Collection[str]) -> dict[str, Any]:
    """The config keys that change finished runs (all but `resume_free`)."""
    return {k: v for k, v in config.items() if k not in resume_free}


def stored_state(out_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The first readable stored state of `out_dir` (partial, then final) and its path."""
    for name in (PARTIAL, RESULTS):
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            return path, json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
    return None


def load_state(
    out_dir: Path, config: dict[str, Any], resume_free: Collection[str]
) -> dict[str, Any]:
    """The stored state of `out_dir` (partial first, then final), or {} when there is none.

    Raises `MedfoundryError` when the stored configuration differs from `config` in a key
    outside `resume_free`.
    """
    found = stored_state(out_dir)
    if found is None:
        return {}
    path, state = found
    old = json.loads(json.dumps(protocol(state.get("config", {}), resume_free)))
    new = json.loads(json.dumps(protocol(config, resume_free)))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise MedfoundryError(
            f"{path}: results of a different configuration (differs in {diff}); "
            "use another output folder or remove the old results"
        )
    return state


def write_partial(out_dir: Path, state: dict[str, Any]) -> None:
    """Atomically store the running state (a kill never leaves a half-written file)."""
    atomic_write_json(out_dir / PARTIAL, state)


def write_final(out_dir: Path, state: dict[str, Any]) -> None:
    """Store the final state as results.json and drop the partial file."""
    atomic_write_json(out_dir / RESULTS, state)
    partial = out_dir / PARTIAL
    if partial.exists():
        partial.unlink()
