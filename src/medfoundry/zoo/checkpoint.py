"""Save and load pretrained backbones as `model.safetensors` + `medfoundry.json`.

The metadata says how to rebuild and feed the backbone (name, arguments, input channels,
size, normalisation, method); loading reports how many tensors loaded and fails loudly when
the backbone did not load, instead of the silent `strict=False` of the seed repositories.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medfoundry.errors import CheckpointError
from medfoundry.runtime import atomic_save, atomic_write_json
from medfoundry.zoo.meta import (
    DECODER_NAME,
    META_NAME,
    WEIGHTS_NAME,
    CheckpointLike,
    CheckpointMeta,
    checkpoint_folder,
    resolve_checkpoint,
)
from medfoundry.zoo.meta import (
    FORMAT_VERSION as META_FORMAT_VERSION,
)

FORMAT_VERSION = META_FORMAT_VERSION


@dataclass
class LoadReport:
    """What a load did: tensors loaded into the model, and the keys that did not match."""

    loaded: int
    total_model: int
    total_checkpoint: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    part: str = "backbone"

    def summary(self) -> str:
        return (
            f"loaded {self.loaded}/{self.total_model} {self.part} tensors "
            f"({len(self.missing)} missing, {len(self.unexpected)} unused, "
            f"{len(self.shape_mismatch)} shape mismatches)"
        )


def _save_tensors(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_save(path, lambda p: save_file(tensors, str(p)))


def save_checkpoint(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    metadata: CheckpointMeta | Mapping[str, Any],
    decoder: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write backbone weights (and a pretrained decoder's, if any) and metadata atomically into
    `out_dir`; the metadata goes last, so a folder with `medfoundry.json` is complete.

    `metadata` is a `CheckpointMeta`; a mapping (a format-1 dict) is parsed and migrated first,
    so a malformed one fails here rather than at load time."""
    out_dir = Path(out_dir)
    meta = (
        metadata
        if isinstance(metadata, CheckpointMeta)
        else CheckpointMeta.from_json(metadata, out_dir / META_NAME)
    )
    document = meta.to_json()
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tensors(out_dir / WEIGHTS_NAME, state_dict)
    if decoder is not None:
        _save_tensors(out_dir / DECODER_NAME, decoder)
    atomic_write_json(out_dir / META_NAME, document)
    return out_dir


def checkpoint_dir(path: CheckpointLike) -> Path:
    """The checkpoint folder of a checkpoint folder, a run folder holding `checkpoint/`, or the
    weights file (`CheckpointError` when there is none)."""
    return checkpoint_folder(path)


def read_meta(path: CheckpointLike) -> CheckpointMeta:
    """The typed metadata of a checkpoint (folder, run folder, weights file or `Checkpoint`)."""
    return resolve_checkpoint(path).meta


def read_metadata(path: CheckpointLike) -> dict[str, Any]:
    """Deprecated: the JSON view (format 2) of a checkpoint's metadata; use `read_meta`."""
    warnings.warn(
        "read_metadata returns a dict; use read_meta (a CheckpointMeta)",
        DeprecationWarning,
        stacklevel=2,
    )
    return read_meta(path).to_json()


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
    path: CheckpointLike, backbone: torch.nn.Module, min_fraction: float = 1.0
) -> LoadReport:
    """Load checkpoint weights into `backbone` and report; raise unless enough tensors loaded.

    `min_fraction` is the share of the backbone's tensors that must load (1.0: all of them).
    """
    return _load_into(checkpoint_folder(path) / WEIGHTS_NAME, backbone, min_fraction, "backbone")


def has_decoder(path: CheckpointLike) -> bool:
    """Whether the checkpoint carries a pretrained decoder (`decoder.safetensors`)."""
    return (checkpoint_folder(path) / DECODER_NAME).is_file()


def load_decoder(path: CheckpointLike, decoder: torch.nn.Module) -> LoadReport:
    """Load a checkpoint's pretrained decoder where names and shapes match, and report.

    Parts that a downstream decoder adds (skip fusions, a head for another number of classes)
    stay at their initialisation; it raises only when nothing at all loaded.
    """
    return _load_into(checkpoint_folder(path) / DECODER_NAME, decoder, 0.0, "decoder")


def _load_into(file: Path, module: torch.nn.Module, min_fraction: float, part: str) -> LoadReport:
    folder = file.parent
    try:
        weights = load_file(str(file))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{file}: unreadable weights ({exc})") from exc
    model_state = module.state_dict()
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
        part=part,
    )
    if report.loaded == 0 or report.loaded < min_fraction * report.total_model:
        raise CheckpointError(
            f"{folder}: {part} did not load: {report.summary()}; "
            f"first missing keys: {missing[:5]}, first unused keys: {unexpected[:5]}"
        )
    module.load_state_dict(matched, strict=False)
    return report
