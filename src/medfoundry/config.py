"""YAML presets and overrides: one dict per run, every CLI flag maps to one (dotted) key."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medfoundry.errors import MedfoundryError


def preset_path(name: str) -> Path:
    """Path of a packaged preset (`adam`, `jsrt_fewshot_cpu`, ...)."""
    return Path(str(resources.files("medfoundry") / "configs" / f"{name}.yaml"))


def list_presets() -> list[str]:
    folder = Path(str(resources.files("medfoundry") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """Load a preset by packaged name or a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = preset_path(str(name_or_path))
    if not path.is_file():
        raise MedfoundryError(
            f"{name_or_path}: no such config file or preset (presets: {', '.join(list_presets())})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise MedfoundryError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise MedfoundryError(f"{path}: a config must be a mapping of keys to values")
    base = data.pop("extends", None)
    if base:
        return merge(load_config(base), data)
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    parts = key.split(".")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def apply_overrides(cfg: dict[str, Any], pairs: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings (value parsed as YAML: numbers, lists, null) to a copy of cfg."""
    out = copy.deepcopy(cfg)
    for pair in pairs:
        if "=" not in pair:
            raise MedfoundryError(f"override {pair!r} must look like key=value")
        key, raw = pair.split("=", 1)
        set_dotted(out, key.strip(), yaml.safe_load(raw))
    return out
