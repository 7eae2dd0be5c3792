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
from safetensors.torch import load_file
from torch import nn

from medfoundry.data.preprocess3d import VolumeSettings
from medfoundry.data.store3d_settings import checkpoint_preprocessing
from medfoundry.errors import CheckpointError, MedfoundryError
from medfoundry.nets.factory import create_backbone
from medfoundry.nets.segmenters2d import create_segmenter2d, is_swin_config
from medfoundry.nets.segmenters3d import create_segmenter3d, size_multiple_of
from medfoundry.zoo.checkpoint import WEIGHTS_NAME, checkpoint_dir, read_metadata

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
    meta: dict[str, Any]
    settings: VolumeSettings
    roi: tuple[int, int, int]
    sliding_window: dict[str, Any]
    size_multiple: tuple[int, int, int]
    tensors: int
    amp: bool = False

    @property
    def labels(self) -> dict[int, str]:
        """Class value -> name of the classes the checkpoint records (its ``labels``)."""
        return {int(k): str(v) for k, v in (self.meta.get("labels") or {}).items()}


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
    meta:          the raw ``medfoundry.json``.
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
    meta: dict[str, Any]
    tensors: int
    segmenter3d: TrainedSegmenter3D | None = None

    @property
    def spatial_dims(self) -> int:
        """2 for images, 3 for volumes."""
        return 3 if self.kind == "segmentation3d" else 2


def _spatial_dims(meta: dict[str, Any]) -> int:
    """The spatial dims a checkpoint records (its own, else its backbone's; default 2)."""
    return int(meta.get("spatial_dims", (meta.get("backbone") or {}).get("spatial_dims", 2)))


def model_kind(folder: Path, meta: dict[str, Any]) -> str:
    """The ``KINDS`` entry of a checkpoint's metadata, or a ``CheckpointError`` saying why it is
    not a fine-tuned model."""
    task = meta.get("task")
    if task is None:
        method = meta.get("method")
        what = f" (method {method!r})" if method else ""
        raise CheckpointError(f"{folder}: {PRETRAINED_PROBLEM}{what}")
    dims = _spatial_dims(meta)
    if task == "classification" and dims == 2:
        return "classification"
    if task == "segmentation" and dims in (2, 3):
        return f"segmentation{dims}d"
    raise CheckpointError(
        f"{folder}: unknown model (task {task!r}, {dims}D); expected one of {KINDS}"
    )


def _require(folder: Path, meta: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    """A ``CheckpointError`` naming the keys of ``keys`` the metadata lacks."""
    missing = [k for k in keys if meta.get(k) is None]
    if missing:
        raise CheckpointError(f"{folder}: {what} metadata lacks {', '.join(missing)}")


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (a ``CheckpointError`` for an unreadable file)."""
    try:
        return load_file(str(folder / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: unreadable weights ({e})") from e


def _load_strict(folder: Path, network: nn.Module, what: str) -> int:
    """Load every tensor of ``network`` from the folder's weights, or raise a
    ``CheckpointError`` counting the missing / unused / mis-shaped ones; the tensor count."""
    weights = _load_weights(folder)
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


def _build(folder: Path, what: str, make: Any) -> nn.Module:
    """``make()`` with construction errors turned into a ``CheckpointError`` naming the folder."""
    try:
        return make()
    except (ValueError, TypeError, KeyError, MedfoundryError) as e:
        raise CheckpointError(f"{folder}: cannot rebuild the {what}: {e}") from e


def _load_classifier(folder: Path, meta: dict[str, Any], device: str | torch.device) -> LoadedModel:
    """A 2D classifier (backbone + linear head), strictly loaded."""
    _require(folder, meta, ("classes", "backbone", "input_size", "normalization"), "classification")
    backbone_cfg = dict(meta["backbone"])
    classes = tuple(str(c) for c in meta["classes"])
    name = backbone_cfg.get("name")

    def make() -> nn.Module:
        return Classifier(create_backbone(**backbone_cfg), len(classes))

    network = _build(folder, f"{name!r} classifier", make)
    tensors = _load_strict(folder, network, f"{name!r} classifier")
    return LoadedModel(
        network=network.to(device).eval(),
        kind="classification",
        folder=folder,
        names=classes,
        in_channels=int(meta.get("in_channels", backbone_cfg.get("in_channels", 1))),
        input_size=_size_2d(folder, meta["input_size"]),
        preprocessing=dict(meta["normalization"]),
        meta=meta,
        tensors=tensors,
    )


def _load_segmenter2d(
    folder: Path, meta: dict[str, Any], device: str | torch.device
) -> LoadedModel:
    """A 2D U-Net (ResNet-UNet or Swin-UNet), strictly loaded."""
    keys = ("structures", "backbone", "input_size", "normalization")
    backbone_cfg = dict(meta.get("backbone") or {})
    swin = is_swin_config(backbone_cfg)
    _require(folder, meta, keys if swin else (*keys, "decoder_channels"), "2D segmentation")
    names = tuple(str(s) for s in meta["structures"])  # a mapping's keys or a list, in order
    what = f"{backbone_cfg.get('name')!r} {'Swin-UNet' if swin else 'ResNet-UNet'}"
    if swin and meta.get("decoder") is None:
        what += " (default decoder: this checkpoint does not record its decoder config)"

    def make() -> nn.Module:
        channels = meta.get("decoder_channels") or (256, 128, 64, 32, 16)
        return create_segmenter2d(backbone_cfg, len(names), channels, meta.get("decoder"))

    network = _build(folder, what, make)
    tensors = _load_strict(folder, network, what)
    return LoadedModel(
        network=network.to(device).eval(),
        kind="segmentation2d",
        folder=folder,
        names=names,
        in_channels=int(meta.get("in_channels", backbone_cfg.get("in_channels", 1))),
        input_size=_size_2d(folder, meta["input_size"]),
        preprocessing=dict(meta["normalization"]),
        meta=meta,
        tensors=tensors,
    )


def load_segmenter3d(run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedSegmenter3D:
    """The 3D segmenter of a fine-tuning run folder (or its ``checkpoint/``), strictly loaded."""
    folder = checkpoint_dir(run_dir)
    meta = read_metadata(folder)
    kind = model_kind(folder, meta)
    if kind != "segmentation3d":
        raise CheckpointError(
            f"{folder}: a {'2D segmentation' if kind == 'segmentation2d' else kind} model, not a "
            "3D segmentation model; medfoundry.zoo.load_model loads any kind"
        )
    preprocessing = checkpoint_preprocessing(meta)
    missing = [k for k in ("network", "num_classes", "input_size") if k not in meta]
    if preprocessing is None or missing:
        what = ", ".join(missing + ([] if preprocessing else ["normalization (store)"]))
        raise CheckpointError(f"{folder}: 3D segmentation metadata lacks {what}")
    name, options = str(meta["network"]), dict(meta.get("network_options") or {})
    network = _build(
        folder,
        f"network {name!r}",
        lambda: create_segmenter3d(
            name, int(meta.get("in_channels", 1)), int(meta["num_classes"]), **options
        ),
    )
    settings = _build(
        folder, "preprocessing", lambda: VolumeSettings.from_preprocessing(preprocessing)
    )
    tensors = _load_strict(folder, network, f"{name!r} network")
    sw = dict(meta.get("sliding_window") or {})
    roi = tuple(int(v) for v in meta["input_size"])
    return TrainedSegmenter3D(
        network=network.to(device).eval(),
        folder=folder,
        meta=meta,
        settings=settings,
        roi=(roi[0], roi[1], roi[2]),
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
        in_channels=int(model.meta.get("in_channels", 1)),
        input_size=model.roi,
        preprocessing=dict(checkpoint_preprocessing(model.meta) or {}),
        meta=model.meta,
        tensors=model.tensors,
        segmenter3d=model,
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The fine-tuned model of a run folder (or its ``checkpoint/``), strictly loaded (rules:
    module doc)."""
    folder = checkpoint_dir(path)
    meta = read_metadata(folder)
    kind = model_kind(folder, meta)
    if kind == "classification":
        return _load_classifier(folder, meta, device)
    if kind == "segmentation2d":
        return _load_segmenter2d(folder, meta, device)
    return from_segmenter3d(load_segmenter3d(folder, device))
