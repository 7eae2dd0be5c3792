"""Save and load pretrained backbones as `model.safetensors` + `medfoundry.json`.

The metadata says how to rebuild and feed the backbone (name, arguments, input channels,
size, normalisation, method); loading reports how many tensors loaded and fails loudly when
the backbone did not load, instead of the silent `strict=False` of the seed repositories.
The metadata also records a sha256 of each weights file, verified before any tensor is read
(`verify_weights`): a damaged or edited file is an error naming it, not a silent load of
changed numbers (safetensors checks the header, not the tensor bytes).
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from medfoundry.errors import CheckpointError
from medfoundry.runtime import atomic_save, atomic_write_json
from medfoundry.zoo.meta import (
    DECODER_NAME,
    META_NAME,
    WEIGHTS_NAME,
    Checkpoint,
    CheckpointLike,
    CheckpointMeta,
    checkpoint_folder,
    file_checksum,
    read_meta_file,
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
    data = save(tensors)  # bytes written by Python: a full disk is an OSError naming the file
    atomic_save(path, lambda p: p.write_bytes(data))


def save_checkpoint(
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    metadata: CheckpointMeta | Mapping[str, Any],
    decoder: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write backbone weights (and a pretrained decoder's, if any) and metadata atomically into
    `out_dir`; the metadata goes last, so a folder with `medfoundry.json` is complete.

    `metadata` is a `CheckpointMeta`; a mapping (a format-1 dict) is parsed and migrated first,
    so a malformed one fails here rather than at load time. The sha256 of each weights file
    written is recorded in the metadata's `checksums` (verified on load)."""
    out_dir = Path(out_dir)
    meta = (
        metadata
        if isinstance(metadata, CheckpointMeta)
        else CheckpointMeta.from_json(metadata, out_dir / META_NAME)
    )
    meta.to_json()  # fails on clashing extra keys before any file is written
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {WEIGHTS_NAME: state_dict} | ({DECODER_NAME: decoder} if decoder is not None else {})
    for name, tensors in files.items():
        _save_tensors(out_dir / name, tensors)
    checksums = {name: file_checksum(out_dir / name) for name in files}
    document = dataclasses.replace(meta, checksums=checksums).to_json()
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
    file = checkpoint_folder(path) / WEIGHTS_NAME
    return _load_into(file, _checksums_of(path, file), backbone, min_fraction, "backbone")


def has_decoder(path: CheckpointLike) -> bool:
    """Whether the checkpoint carries a pretrained decoder (`decoder.safetensors`)."""
    return (checkpoint_folder(path) / DECODER_NAME).is_file()


def load_decoder(path: CheckpointLike, decoder: torch.nn.Module) -> LoadReport:
    """Load a checkpoint's pretrained decoder where names and shapes match, and report.

    Parts that a downstream decoder adds (skip fusions, a head for another number of classes)
    stay at their initialisation; it raises only when nothing at all loaded.
    """
    file = checkpoint_folder(path) / DECODER_NAME
    return _load_into(file, _checksums_of(path, file), decoder, 0.0, "decoder")


def _checksums_of(path: CheckpointLike, file: Path) -> Mapping[str, str] | None:
    """The checksums the checkpoint of ``file`` records (None: no metadata, or none recorded)."""
    if isinstance(path, Checkpoint):
        return path.meta.checksums
    if not (file.parent / META_NAME).is_file():  # bare weights: nothing to verify against
        return None
    return read_meta_file(file.parent).checksums


# files verified in this process, as (path, size, mtime, checksum): a benchmark loads one
# checkpoint for every run, and hashing it once is enough while the file is unchanged
_VERIFIED: set[tuple[str, int, int, str]] = set()


def verify_weights(file: Path, checksums: Mapping[str, str] | None) -> None:
    """Raise a ``CheckpointError`` naming ``file`` when its sha256 differs from the one the
    metadata records; a file without a recorded checksum (older checkpoints) passes."""
    expected = (checksums or {}).get(file.name)
    if expected is None:
        return
    try:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, expected)
        if key in _VERIFIED:
            return
        found = file_checksum(file)
    except OSError as exc:
        raise CheckpointError(f"{file}: unreadable weights ({exc.strerror or exc})") from exc
    if found != expected:
        raise CheckpointError(
            f"{file}: checksum mismatch (file damaged or edited); {META_NAME} records "
            f"{expected[:19]}..., the file is {found[:19]}...; copy or re-export the checkpoint"
        )
    if time.time() - stat.st_mtime > 2.0:  # an edit later must show in a coarse-grained mtime
        _VERIFIED.add(key)


def read_weights(file: Path, checksums: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, verified against ``checksums`` first (``verify_weights``);
    an unreadable or damaged file is a ``CheckpointError`` naming it."""
    verify_weights(file, checksums)
    if not os.path.isfile(file):
        raise CheckpointError(f"{file}: weights file not found")
    try:
        return load_file(str(file))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{file}: unreadable weights ({exc})") from exc


def _load_into(
    file: Path,
    checksums: Mapping[str, str] | None,
    module: torch.nn.Module,
    min_fraction: float,
    part: str,
) -> LoadReport:
    folder = file.parent
    weights = read_weights(file, checksums)
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
