"""The typed metadata of a checkpoint (``medfoundry.json``), and the checkpoint it describes.

``CheckpointMeta`` is what every writer records (pretraining, fine-tuning 2D and 3D, import)
and every reader needs, as typed fields; method-specific keys (``mae``, ``voco``,
``volume_fusion``, ``patch_size``, ``config``, ``load_report``, ...) live in ``extra``. Rules:

- **One path**: only ``zoo`` reads or writes ``medfoundry.json``, through ``from_json`` /
  ``to_json``; the JSON keeps one flat object (fields and ``extra`` side by side), so a
  format-2 file reads like a format-1 file plus ``format_version: 2``.
- **Migration**: format 1 (today's files, with or without ``format_version``) takes its
  ``spatial_dims`` and ``in_channels`` from the backbone when the top level lacks them
  (defaults 2 and 1), a fine-tuned model (``task``) without ``method`` gets ``finetune``, and
  a list of ``structures`` becomes ``{name: [name]}``.
- **Checksums**: ``checksums`` maps each weights file (``model.safetensors``, and
  ``decoder.safetensors`` when there is one) to ``sha256:<hex>``; ``save_checkpoint`` records
  it and every load verifies it (``zoo.checkpoint.verify_weights``). A file written before
  checksums existed (format 1, or format 2 without the key) loads unverified; a recorded
  checksum that does not match is a ``CheckpointError`` naming the file.
- **Errors**: a missing required key, a wrong type, a null or out-of-range value (spatial dims
  not 2 or 3, an ``input_size`` that is not positive or does not fit the dims, an unregistered
  backbone name) or an unknown format version is a ``CheckpointError`` naming the file and
  the key.
- **Resolved once**: ``resolve_checkpoint(path)`` finds the checkpoint folder of a run folder,
  a checkpoint folder or its weights file and reads the metadata once; a ``Checkpoint`` passed
  in comes back as it is, so lower layers accept either.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medfoundry.errors import CheckpointError
from medfoundry.runtime import _json_default

WEIGHTS_NAME = "model.safetensors"
META_NAME = "medfoundry.json"
DECODER_NAME = "decoder.safetensors"  # optional: a pretrained decoder (MAE), for Swin-UNet
FORMAT_VERSION = 2
KNOWN_VERSIONS = (1, 2)
AXIS_ORDER_2D = "CHW"
AXIS_ORDER_3D = "CDHW (D, H, W = SPL)"


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's registered name and its constructor arguments (``create_backbone``)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., **args}``: what ``create_backbone(**config)`` takes (a fresh copy)."""
        return {"name": self.name, **json.loads(json.dumps(self.args))}

    @property
    def spatial_dims(self) -> int | None:
        """The dims the backbone records, or None."""
        value = self.args.get("spatial_dims")
        return None if value is None else int(value)

    @property
    def in_channels(self) -> int | None:
        """The input channels the backbone records, or None."""
        value = self.args.get("in_channels")
        return None if value is None else int(value)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BackboneSpec:
        """From ``{"name": ..., **args}`` (a backbone's ``.config``)."""
        args = {k: v for k, v in config.items() if k != "name"}
        return cls(str(config["name"]), args)


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything ``medfoundry.json`` records (module doc): how to rebuild, feed and trace it."""

    method: str  # pretraining method (adam, mae, voco, ...), or "finetune"
    spatial_dims: int = 2
    in_channels: int = 1
    task: str | None = None  # None: a pretrained backbone; classification / segmentation
    input_size: int | tuple[int, ...] | None = None  # 2D side (or (H, W)); 3D (D, H, W)
    axis_order: str | None = None
    normalization: dict[str, Any] | None = None  # 2D intensity spec, or {"name": "store", ...}
    backbone: BackboneSpec | None = None
    decoder: dict[str, Any] | None = None  # a decoder's config (type resnet_unet / pctnet / ...)
    decoder_channels: tuple[int, ...] | None = None  # 2D ResNet-UNet fine-tuning
    network: str | None = None  # 3D fine-tuning: the registered network ...
    network_options: dict[str, Any] | None = None  # ... and its options
    num_classes: int | None = None  # 3D: background + classes
    classes: tuple[str, ...] | None = None  # classification, in logit order
    structures: dict[str, list[str]] | None = None  # 2D segmentation: name -> mask folders
    labels: dict[str, str] | None = None  # 3D segmentation: label value -> name
    sliding_window: dict[str, Any] | None = None  # 3D inference settings
    levels_trained: tuple[int, ...] | None = None
    pretrained_from: str | None = None
    imported_from: dict[str, Any] | None = None
    training_data: dict[str, Any] | None = None
    checksums: dict[str, str] | None = None  # weights file name -> "sha256:<hex>"
    extra: dict[str, Any] = field(default_factory=dict)

    # --- derived views ---------------------------------------------------------------------
    @property
    def backbone_config(self) -> dict[str, Any] | None:
        """The backbone's ``create_backbone`` arguments (a fresh dict), or None."""
        return None if self.backbone is None else self.backbone.config

    @property
    def backbone_name(self) -> str | None:
        """The backbone's registered name, or None."""
        return None if self.backbone is None else self.backbone.name

    @property
    def store_preprocessing(self) -> dict[str, Any] | None:
        """The 3D store preprocessing the checkpoint records (``normalization`` named
        ``store``, without the name), or None."""
        norm = self.normalization
        if not isinstance(norm, dict) or norm.get("name") != "store":
            return None
        return {k: v for k, v in norm.items() if k != "name"}

    @property
    def label_names(self) -> dict[int, str]:
        """3D: class value -> name of the classes recorded in ``labels``."""
        return {int(k): str(v) for k, v in (self.labels or {}).items()}

    # --- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The ``medfoundry.json`` object (format 2): fields that are set, then ``extra``."""
        out: dict[str, Any] = {"format_version": FORMAT_VERSION}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, BackboneSpec):
                value = value.config
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        clash = sorted(set(self.extra) & set(out))
        if clash:
            raise CheckpointError(f"extra metadata keys {clash} shadow CheckpointMeta fields")
        out.update(self.extra)
        # plain JSON types (Paths, numpy scalars as the run record writes them), detached
        return json.loads(json.dumps(out, default=_json_default))

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str | Path) -> CheckpointMeta:
        """Parse (and migrate, module doc) a ``medfoundry.json`` object read from ``source``."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: metadata is not a JSON object")
        raw = dict(data)
        version = raw.pop("format_version", 1)
        if version not in KNOWN_VERSIONS:
            raise CheckpointError(
                f"{source}: unknown metadata format_version {version!r} "
                f"(this medfoundry reads {list(KNOWN_VERSIONS)})"
            )
        if version == 1:
            raw = _migrate_v1(raw)
        for key in _REQUIRED:
            if raw.get(key) is None:
                raise CheckpointError(f"{source}: metadata lacks required key {key!r}")
        values: dict[str, Any] = {}
        for name, (kind, parse) in _FIELDS.items():
            if name not in raw:
                continue
            value = raw.pop(name)
            if value is None and name in _NOT_NULL:
                raise CheckpointError(
                    f"{source}: metadata key {name!r} is null, expected {_kind_name(kind)}"
                )
            if value is None:
                values[name] = None
                continue
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise CheckpointError(
                    f"{source}: metadata key {name!r} is {type(value).__name__} "
                    f"({value!r:.60}), expected {_kind_name(kind)}"
                )
            try:
                values[name] = parse(value)
            except (TypeError, ValueError, KeyError) as e:
                raise CheckpointError(f"{source}: metadata key {name!r}: {e}") from e
        meta = cls(**values, extra=raw)
        _check_values(meta, source)
        return meta


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _size(value: Any) -> int | tuple[int, ...]:
    return int(value) if isinstance(value, int | float) else tuple(int(v) for v in value)


def _backbone(value: dict[str, Any]) -> BackboneSpec:
    name = value.get("name")
    if not isinstance(name, str):
        raise ValueError("a backbone needs a string 'name'")
    # lazily: nets builds torch models, and only a reader of a backbone needs it
    from medfoundry.nets.factory import backbone_arguments, backbone_names

    known = backbone_names()
    if name not in known:
        raise ValueError(f"unknown backbone name {name!r} (known: {', '.join(known)})")
    unknown = sorted(set(value) - set(backbone_arguments(name)))
    if unknown:
        raise ValueError(
            f"{name} takes no argument(s) {unknown} (it takes {list(backbone_arguments(name))})"
        )
    return BackboneSpec.from_config(value)


_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


def _checksums(value: dict[str, Any]) -> dict[str, str]:
    for name, digest in value.items():
        if not isinstance(digest, str) or not _CHECKSUM.fullmatch(digest):
            raise ValueError(f"{name}: {digest!r:.80} is not 'sha256:' + 64 hex digits")
    return {str(k): str(v) for k, v in value.items()}


def file_checksum(path: str | Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file, read in ``chunk``-byte pieces (any size, little memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _check_values(meta: CheckpointMeta, source: str | Path) -> None:
    """Values a reader relies on, checked once (a hand-edited file fails here, naming the key)."""

    def fail(key: str, problem: str) -> None:
        raise CheckpointError(f"{source}: metadata key {key!r}: {problem}")

    if meta.spatial_dims not in (2, 3):
        fail("spatial_dims", f"{meta.spatial_dims} is not 2 or 3")
    if meta.in_channels < 1:
        fail("in_channels", f"{meta.in_channels} is not a positive channel count")
    size = meta.input_size
    if size is not None:
        sides = (size,) if isinstance(size, int) else size
        allowed = (1, 2) if meta.spatial_dims == 2 else (3,)
        if len(sides) not in allowed or min(sides) < 1:
            shape = "a side or (H, W)" if meta.spatial_dims == 2 else "(D, H, W)"
            fail("input_size", f"{list(sides)} is not {shape} of positive sizes")
    dims = None if meta.backbone is None else meta.backbone.spatial_dims
    if dims is not None and dims != meta.spatial_dims:
        fail("backbone", f"spatial_dims {dims} differs from the checkpoint's {meta.spatial_dims}")
    if meta.num_classes is not None and meta.num_classes < 1:
        fail("num_classes", f"{meta.num_classes} is not a positive class count")
    if meta.classes is not None and not meta.classes:
        fail("classes", "an empty list")


def _structures(value: dict[str, Any] | list[Any]) -> dict[str, list[str]]:
    if isinstance(value, list):
        return {str(s): [str(s)] for s in value}
    return {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in value.items()}


_REQUIRED = ("method",)
_FIELDS: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "method": (str, str),
    "spatial_dims": (int, int),
    "in_channels": (int, int),
    "task": (str, str),
    "input_size": ((int, list), _size),
    "axis_order": (str, str),
    "normalization": (dict, dict),
    "backbone": (dict, _backbone),
    "decoder": (dict, dict),
    "decoder_channels": (list, lambda v: tuple(int(c) for c in v)),
    "network": (str, str),
    "network_options": (dict, dict),
    "num_classes": (int, int),
    "classes": (list, lambda v: tuple(str(c) for c in v)),
    "structures": ((dict, list), _structures),
    "labels": (dict, lambda v: {str(k): str(n) for k, n in v.items()}),
    "sliding_window": (dict, dict),
    "levels_trained": (list, lambda v: tuple(int(x) for x in v)),
    "pretrained_from": (str, str),
    "imported_from": (dict, dict),
    "training_data": (dict, dict),
    "checksums": (dict, _checksums),
}
# keys whose null is never written (to_json drops None): a null there is a hand edit
_NOT_NULL = ("method", "spatial_dims", "in_channels", "input_size", "backbone", "checksums")


def _migrate_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Format 1 -> 2: top-level ``spatial_dims`` / ``in_channels`` from the backbone when
    missing (defaults 2 and 1), ``method`` ``finetune`` for a fine-tuned model (a ``task``)
    that lacks it; other keys keep their meaning."""
    out = dict(raw)
    if out.get("method") is None and out.get("task") is not None:
        out["method"] = "finetune"  # what every fine-tuning writer recorded
    backbone = out.get("backbone") if isinstance(out.get("backbone"), dict) else {}
    if out.get("spatial_dims") is None:
        out["spatial_dims"] = int(backbone.get("spatial_dims", 2))
    if out.get("in_channels") is None:
        out["in_channels"] = int(backbone.get("in_channels", 1))
    return out


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder resolved once: where it is, its metadata, and its weight files;
    ``source`` is the path as the user gave it (a run folder, say), what ``str()`` returns."""

    folder: Path
    meta: CheckpointMeta
    source: str = ""

    @property
    def weights(self) -> Path:
        """The backbone's (or whole network's) ``model.safetensors``."""
        return self.folder / WEIGHTS_NAME

    @property
    def decoder_weights(self) -> Path | None:
        """The pretrained decoder's ``decoder.safetensors``, or None when there is none."""
        path = self.folder / DECODER_NAME
        return path if path.is_file() else None

    @property
    def has_decoder(self) -> bool:
        """Whether the checkpoint carries a pretrained decoder."""
        return self.decoder_weights is not None

    def __str__(self) -> str:
        return self.source or str(self.folder)

    def __hash__(self) -> int:
        return hash((self.folder, self.source))


CheckpointLike = str | Path | Checkpoint


def require_2d_backbone(checkpoint: Checkpoint, task: str) -> tuple[BackboneSpec, int | None]:
    """The backbone and square input side (None: not recorded) of a checkpoint a 2D ``task``
    starts from; a ``CheckpointError`` naming it when it is 3D, has no backbone, or records a
    non-square size (the 2D tasks train on square images)."""
    meta = checkpoint.meta
    if meta.spatial_dims != 2:
        raise CheckpointError(
            f"{checkpoint}: a {meta.spatial_dims}D checkpoint (method {meta.method}); {task} "
            "needs a 2D backbone (3D checkpoints fine-tune 3D segmentation: finetune --task "
            "segmentation --data <3D store or MSD folder>)"
        )
    if meta.backbone is None:
        raise CheckpointError(f"{checkpoint}: checkpoint metadata has no 'backbone' entry")
    size = meta.input_size
    if isinstance(size, tuple):
        if len(set(size)) != 1:
            raise CheckpointError(
                f"{checkpoint}: input_size {list(size)} is not square; {task} trains on square "
                "images (set the image size explicitly)"
            )
        size = size[0]
    return meta.backbone, size


def checkpoint_folder(path: CheckpointLike) -> Path:
    """The checkpoint folder of a checkpoint folder, a run folder holding ``checkpoint/``, or
    the weights file (``CheckpointError`` when there is none); reads no metadata."""
    if isinstance(path, Checkpoint):
        return path.folder
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


def read_meta_file(folder: Path) -> CheckpointMeta:
    """Parse ``folder/medfoundry.json`` (the one place that reads it)."""
    file = folder / META_NAME
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"{file}: unreadable ({exc})") from exc
    return CheckpointMeta.from_json(data, file)


def resolve_checkpoint(path: CheckpointLike) -> Checkpoint:
    """The ``Checkpoint`` of a run folder, checkpoint folder or weights file, its metadata read
    once; a ``Checkpoint`` comes back unchanged."""
    if isinstance(path, Checkpoint):
        return path
    folder = checkpoint_folder(path)
    return Checkpoint(folder, read_meta_file(folder), str(path))


__all__ = [
    "DECODER_NAME",
    "FORMAT_VERSION",
    "META_NAME",
    "WEIGHTS_NAME",
    "BackboneSpec",
    "Checkpoint",
    "CheckpointLike",
    "CheckpointMeta",
    "checkpoint_folder",
    "file_checksum",
    "read_meta_file",
    "require_2d_backbone",
    "resolve_checkpoint",
]
