"""Load a fine-tuned model from its run folder: one typed value, resolved once.

``load_model(path)`` accepts a run folder of ``medfoundry finetune`` or its ``checkpoint/``
(``model.safetensors`` + ``medfoundry.json``) and returns a ``LoadedModel``: the network in
eval mode with every tensor loaded strictly, what kind of model it is, its class or structure
names, input channels and size, and the preprocessing it was trained with. Rules:

- **Kinds**: ``task = classification`` is a 2D classifier (backbone + linear head, weights
  ``backbone.*`` / ``head.*``); ``task = segmentation`` is a 2D U-Net (ResNet-UNet or
  Swin-UNet, the whole network's ``state_dict``) or, with ``spatial_dims = 3``, a 3D segmenter
  (``load_segmenter3d``: network, store preprocessing, sliding-window settings).
- **Strict**: a missing, unused or mis-shaped tensor is a ``CheckpointError`` naming the folder
  (never the silent ``strict=False``); so is metadata that lacks what the network needs.
- **Not a model**: a pretraining checkpoint (a backbone, no ``task``) is a ``CheckpointError``
  that says to fine-tune it first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfoundry.data.store.preprocess import VolumeSettings
from medfoundry.errors import CheckpointError, MedfoundryError
from medfoundry.nets.factory import create_backbone
from medfoundry.nets.segmenters2d import create_segmenter2d, is_swin_config
from medfoundry.nets.segmenters3d import create_segmenter3d, size_multiple_of
from medfoundry.zoo.checkpoint import read_weights
from medfoundry.zoo.meta import (
    WEIGHTS_NAME,
    Checkpoint,
    CheckpointLike,
    CheckpointMeta,
    resolve_checkpoint,
)

__all__ = [
    "KINDS",
    "Classifier",
    "LoadedModel",
    "TrainedSegmenter3D",
    "load_model",
    "load_segmenter3d",
    "model_kind",
]

#: The kinds of fine-tuned model ``load_model`` returns.
KINDS = ("classification", "segmentation2d", "segmentation3d")

PRETRAINED_PROBLEM = "a pretrained backbone, not a fine-tuned model; fine-tune it first " + (
    "(medfoundry finetune)"
)


class Classifier(nn.Module):
    """A backbone and a linear head: ``forward(x)`` (B, C, H, W) -> logits (B, K); the same
    tensor names (``backbone.*``, ``head.*``) as ``medfoundry finetune --task classification``."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.out_dim), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class TrainedSegmenter3D:
    """A fine-tuned 3D segmenter ready to predict: the network (eval mode), its folder and
    metadata, the preprocessing, the roi (D, H, W), sliding-window settings, size rule, the
    number of tensors loaded, and whether it validated under bfloat16 autocast (CUDA only)."""

    network: nn.Module
    folder: Path
    meta: CheckpointMeta
    settings: VolumeSettings
    roi: tuple[int, int, int]
    sliding_window: dict[str, Any]
    size_multiple: tuple[int, int, int]
    tensors: int
    amp: bool = False

    @property
    def labels(self) -> dict[int, str]:
        """Class value -> name of the classes the checkpoint records (its ``labels``)."""
        return self.meta.label_names


@dataclass
class LoadedModel:
    """A fine-tuned model ready to use (``load_model``).

    network:       eval mode, on the requested device; classification: logits (B, K);
                   segmentation: logits (B, K, *spatial) (2D: sigmoid per structure; 3D:
                   softmax over background + classes).
    kind:          one of ``KINDS``.
    names:         classes (classification, in logit order), structures (2D segmentation, in
                   channel order) or foreground classes (3D, label values 1, 2, ...).
    in_channels:   image channels the network takes.
    input_size:    (H, W) the 2D network runs at; the roi (D, H, W) of the 3D sliding window.
    preprocessing: 2D: the intensity ``normalization`` spec; 3D: the store's preprocessing.
    meta:          the checkpoint's ``CheckpointMeta``.
    tensors:       how many tensors loaded (all of the network's).
    segmenter3d:   the 3D specifics (settings, sliding window, size rule), for 3D only.
    """

    network: nn.Module
    kind: str
    folder: Path
    names: tuple[str, ...]
    in_channels: int
    input_size: tuple[int, ...]
    preprocessing: dict[str, Any]
    meta: CheckpointMeta
    tensors: int
    segmenter3d: TrainedSegmenter3D | None = None

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return 3 if self.kind == "segmentation3d" else 2


def model_kind(folder: Path, meta: CheckpointMeta) -> str:
    """The ``KINDS`` entry of a checkpoint's metadata, or a ``CheckpointError`` saying why it is
    not a fine-tuned model."""
    task = meta.task
    if task is None:
        method = meta.method
        what = f" (method {method!r})" if method else ""
        raise CheckpointError(f"{folder}: {PRETRAINED_PROBLEM}{what}")
    dims = meta.spatial_dims
    if task == "classification" and dims == 2:
        return "classification"
    if task == "segmentation" and dims in (2, 3):
        return f"segmentation{dims}d"
    raise CheckpointError(
        f"{folder}: unknown model (task {task!r}, {dims}D); expected one of {KINDS}"
    )


def _require(folder: Path, meta: CheckpointMeta, keys: tuple[str, ...], what: str) -> None:
    """A ``CheckpointError`` naming the fields of ``keys`` the metadata lacks."""
    missing = [k for k in keys if getattr(meta, k) is None]
    if missing:
        raise CheckpointError(f"{folder}: {what} metadata lacks {', '.join(missing)}")


def _load_strict(folder: Path, meta: CheckpointMeta, network: nn.Module, what: str) -> int:
    """Load every tensor of ``network`` from the folder's weights (checksum verified), or raise
    a ``CheckpointError`` counting the missing / unused / mis-shaped ones; the tensor count."""
    weights = read_weights(folder / WEIGHTS_NAME, meta.checksums)
    state = network.state_dict()
    missing = sorted(set(state) - set(weights))
    unused = sorted(set(weights) - set(state))
    shapes = sorted(k for k in set(state) & set(weights) if state[k].shape != weights[k].shape)
    if missing or unused or shapes:
        raise CheckpointError(
            f"{folder}: the weights do not fit the {what} of its medfoundry.json "
            f"({len(missing)} missing, {len(unused)} unused, {len(shapes)} shape "
            f"mismatches; first: {(missing + unused + shapes)[:3]})"
        )
    network.load_state_dict(weights, strict=True)
    return len(weights)


def _size_2d(folder: Path, value: Any) -> tuple[int, int]:
    """``input_size`` of a 2D checkpoint as (H, W): an int is square."""
    try:
        if isinstance(value, int | float):
            return int(value), int(value)
        h, w = (int(v) for v in value)
        return h, w
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: input_size {value!r} is not a 2D size") from e


def _roi_3d(folder: Path, value: Any) -> tuple[int, int, int]:
    """``input_size`` of a 3D checkpoint as (D, H, W)."""
    if isinstance(value, tuple) and len(value) == 3:
        return value[0], value[1], value[2]
    raise CheckpointError(f"{folder}: input_size {value!r} is not a 3D size (D, H, W)")


def _build(folder: Path, what: str, make: Any) -> nn.Module:
    """``make()`` with construction errors turned into a ``CheckpointError`` naming the folder."""
    try:
        return make()
    except (ValueError, TypeError, KeyError, MedfoundryError) as e:
        raise CheckpointError(f"{folder}: cannot rebuild the {what}: {e}") from e


def _load_classifier(folder: Path, meta: CheckpointMeta, device: str | torch.device) -> LoadedModel:
    """A 2D classifier (backbone + linear head), strictly loaded."""
    _require(folder, meta, ("classes", "backbone", "input_size", "normalization"), "classification")
    assert meta.backbone is not None and meta.classes is not None and meta.normalization
    backbone_cfg = meta.backbone.config
    classes = meta.classes
    name = meta.backbone.name

    def make() -> nn.Module:
        return Classifier(create_backbone(**backbone_cfg), len(classes))

    network = _build(folder, f"{name!r} classifier", make)
    tensors = _load_strict(folder, meta, network, f"{name!r} classifier")
    return LoadedModel(
        network=network.to(device).eval(),
        kind="classification",
        folder=folder,
        names=classes,
        in_channels=meta.in_channels,
        input_size=_size_2d(folder, meta.input_size),
        preprocessing=dict(meta.normalization),
        meta=meta,
        tensors=tensors,
    )


def _load_segmenter2d(
    folder: Path, meta: CheckpointMeta, device: str | torch.device
) -> LoadedModel:
    """A 2D U-Net (ResNet-UNet or Swin-UNet), strictly loaded."""
    keys = ("structures", "backbone", "input_size", "normalization")
    backbone_cfg = meta.backbone_config or {}
    swin = is_swin_config(backbone_cfg)
    _require(folder, meta, keys if swin else (*keys, "decoder_channels"), "2D segmentation")
    assert meta.structures is not None and meta.normalization is not None
    names = tuple(meta.structures)  # in order
    what = f"{meta.backbone_name!r} {'Swin-UNet' if swin else 'ResNet-UNet'}"
    if swin and meta.decoder is None:
        what += " (default decoder: this checkpoint does not record its decoder config)"

    def make() -> nn.Module:
        channels = list(meta.decoder_channels or (256, 128, 64, 32, 16))
        return create_segmenter2d(backbone_cfg, len(names), channels, meta.decoder)

    network = _build(folder, what, make)
    tensors = _load_strict(folder, meta, network, what)
    return LoadedModel(
        network=network.to(device).eval(),
        kind="segmentation2d",
        folder=folder,
        names=names,
        in_channels=meta.in_channels,
        input_size=_size_2d(folder, meta.input_size),
        preprocessing=dict(meta.normalization),
        meta=meta,
        tensors=tensors,
    )


def load_segmenter3d(
    run_dir: CheckpointLike, device: str | torch.device = "cpu"
) -> TrainedSegmenter3D:
    """The 3D segmenter of a fine-tuning run folder (or its ``checkpoint/``, or a resolved
    ``Checkpoint``), strictly loaded."""
    checkpoint = resolve_checkpoint(run_dir)
    folder, meta = checkpoint.folder, checkpoint.meta
    kind = model_kind(folder, meta)
    if kind != "segmentation3d":
        raise CheckpointError(
            f"{folder}: a {'2D segmentation' if kind == 'segmentation2d' else kind} model, not a "
            "3D segmentation model; medfoundry.zoo.load_model loads any kind"
        )
    preprocessing = meta.store_preprocessing
    missing = [k for k in ("network", "num_classes", "input_size") if getattr(meta, k) is None]
    if preprocessing is None or missing:
        what = ", ".join(missing + ([] if preprocessing else ["normalization (store)"]))
        raise CheckpointError(f"{folder}: 3D segmentation metadata lacks {what}")
    assert meta.network is not None and meta.num_classes is not None
    name, options = meta.network, dict(meta.network_options or {})
    num_classes = meta.num_classes
    network = _build(
        folder,
        f"network {name!r}",
        lambda: create_segmenter3d(name, meta.in_channels, num_classes, **options),
    )
    settings = _build(
        folder, "preprocessing", lambda: VolumeSettings.from_preprocessing(preprocessing)
    )
    tensors = _load_strict(folder, meta, network, f"{name!r} network")
    sw = dict(meta.sliding_window or {})
    roi = _roi_3d(folder, meta.input_size)
    return TrainedSegmenter3D(
        network=network.to(device).eval(),
        folder=folder,
        meta=meta,
        settings=settings,
        roi=roi,
        sliding_window={
            "overlap": float(sw.get("overlap", 0.5)),
            "sw_batch_size": int(sw.get("sw_batch_size", 4)),
            "mode": str(sw.get("mode", "gaussian")),
        },
        size_multiple=size_multiple_of(name, options),
        tensors=tensors,
        amp=bool(sw.get("amp", False)),
    )


def from_segmenter3d(model: TrainedSegmenter3D) -> LoadedModel:
    """The ``LoadedModel`` view of a loaded 3D segmenter."""
    labels = model.labels
    names = tuple(labels[k] for k in sorted(labels) if k != 0)
    return LoadedModel(
        network=model.network,
        kind="segmentation3d",
        folder=model.folder,
        names=names,
        in_channels=model.meta.in_channels,
        input_size=model.roi,
        preprocessing=dict(model.meta.store_preprocessing or {}),
        meta=model.meta,
        tensors=model.tensors,
        segmenter3d=model,
    )


def load_model(path: CheckpointLike, device: str | torch.device = "cpu") -> LoadedModel:
    """The fine-tuned model of a run folder (or its ``checkpoint/``, or a resolved
    ``Checkpoint``), strictly loaded (rules: module doc)."""
    checkpoint: Checkpoint = resolve_checkpoint(path)
    folder, meta = checkpoint.folder, checkpoint.meta
    kind = model_kind(folder, meta)
    if kind == "classification":
        return _load_classifier(folder, meta, device)
    if kind == "segmentation2d":
        return _load_segmenter2d(folder, meta, device)
    return from_segmenter3d(load_segmenter3d(checkpoint, device))
