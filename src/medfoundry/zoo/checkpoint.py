"""Save and load pretrained backbones as `model.safetensors` + `medfoundry.json`.

The metadata says how to rebuild and feed the backbone (name, arguments, input channels,
size, normalisation, method); loading reports how many tensors loaded and fails loudly when
the backbone did not load, instead of the silent `strict=False` of the seed repositories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medfoundry.errors import CheckpointError
from medfoundry.runtime import atomic_save, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
META_NAME = "medfoundry.json"
FORMAT_VERSION = 1


@dataclass
class LoadReport:
    """What a load did: tensors loaded into the model, and the keys that did not match."""

    loaded: int
    total_model: int
    total_checkpoint: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"loaded {self.loaded}/{self.total_model} backbone tensors "
            f"({len(self.missing)} missing, {len(self.unexpected)} unused, "
            f"{len(self.shape_mismatch)} shape mismatches)"
        )


def save_checkpoint(
    out_dir: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write backbone weights and metadata atomically into `out_dir`; returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_save(out_dir / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
    meta = {"format_version": FORMAT_VERSION, **metadata}
    atomic_write_json(out_dir / META_NAME, meta)
    return out_dir


def _resolve(path: str | Path) -> Path:
    """Accept a checkpoint folder, a run folder holding `checkpoint/`, or the weights file."""
    path = Path(path)
    if path.is_file() and path.name == WEIGHTS_NAME:
        return path.parent
    for cand in (path, path / "checkpoint"):
        if (cand / WEIGHTS_NAME).is_file() and (cand / META_NAME).is_file():
            return cand
    raise CheckpointError(
        f"{path}: no medfoundry checkpoint ({WEIGHTS_NAME} + {META_NAME}) found here "
        f"or in {path / 'checkpoint'}"
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return the metadata of a checkpoint (folder, run folder or weights file)."""
    folder = _resolve(path)
    try:
        return json.loads((folder / META_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / META_NAME}: not valid JSON ({exc})") from exc


KNOWN_PREFIXES = ("module.", "backbone.", "encoder.", "method.backbone.", "model.encoder.")


def _strip_prefix(
    weights: dict[str, torch.Tensor], model_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Drop the wrapper prefix (`module.`, `backbone.`, ...) that matches the most model keys."""
    best, best_hits = weights, sum(k in model_keys for k in weights)
    for prefix in KNOWN_PREFIXES:
        stripped = {
            (k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in weights.items()
        }
        hits = sum(k in model_keys for k in stripped)
        if hits > best_hits:
            best, best_hits = stripped, hits
    return best


def load_backbone(
    path: str | Path, backbone: torch.nn.Module, min_fraction: float = 1.0
) -> LoadReport:
    """Load checkpoint weights into `backbone` and report; raise unless enough tensors loaded.

    `min_fraction` is the share of the backbone's tensors that must load (1.0: all of them).
    """
    folder = _resolve(path)
    try:
        weights = load_file(str(folder / WEIGHTS_NAME))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: unreadable weights ({exc})") from exc
    model_state = backbone.state_dict()
    weights = _strip_prefix(weights, set(model_state))
    matched: dict[str, torch.Tensor] = {}
    mismatch: list[str] = []
    for key, tensor in weights.items():
        if key in model_state:
            if model_state[key].shape == tensor.shape:
                matched[key] = tensor
            else:
                mismatch.append(key)
    missing = sorted(set(model_state) - set(matched))
    unexpected = sorted(set(weights) - set(model_state))
    report = LoadReport(
        loaded=len(matched),
        total_model=len(model_state),
        total_checkpoint=len(weights),
        missing=missing,
        unexpected=unexpected,
        shape_mismatch=mismatch,
    )
    if report.loaded == 0 or report.loaded < min_fraction * report.total_model:
        raise CheckpointError(
            f"{folder}: backbone did not load: {report.summary()}; "
            f"first missing keys: {missing[:5]}, first unused keys: {unexpected[:5]}"
        )
    backbone.load_state_dict(matched, strict=False)
    return report
