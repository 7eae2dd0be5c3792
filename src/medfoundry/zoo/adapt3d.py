"""A checkpoint turned into a 3D segmentation network, and a fine-tuned 3D network's metadata.

- ``network_setup``: which network (``auto``: the checkpoint's, else ``resnet_unet``; a named
  network must be the one the checkpoint fits) with which options (``cfg[<network>]``, then the
  checkpoint's); a 2D checkpoint is refused (``require_3d_checkpoint``).
- ``build_segmenter3d``: that network with ``num_classes`` outputs, the encoder loaded from
  ``model.safetensors`` and the decoder from ``decoder.safetensors`` when there is one; the
  parts no checkpoint initialises (``new_parts``: the head, PCT-Net's ``aux_heads``) stay new.
  The load report's keys are ``LOAD_KEYS``.
- ``prepare_settings`` / ``check_preprocessing``: the checkpoint's recorded store preprocessing
  against a store's (the data side is ``data.store.checks``).
- ``checkpoint_meta``: the ``CheckpointMeta`` of a fine-tuned 3D segmenter (reusable as
  ``--pretrained``).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from medfoundry.data.store.reader import Store
from medfoundry.data.store.settings import describe_diff, prepare_kwargs, preprocessing_diff
from medfoundry.errors import CheckpointError
from medfoundry.nets.segmenters3d import (
    create_segmenter3d,
    get_segmenter3d,
    network_for_checkpoint,
    size_multiple_of,
)
from medfoundry.zoo.checkpoint import has_decoder, load_backbone, load_decoder
from medfoundry.zoo.meta import (
    AXIS_ORDER_3D,
    BackboneSpec,
    Checkpoint,
    CheckpointLike,
    CheckpointMeta,
    resolve_checkpoint,
)

__all__ = [
    "LOAD_KEYS",
    "build_segmenter3d",
    "check_preprocessing",
    "checkpoint_meta",
    "network_setup",
    "network_size_multiple",
    "new_parts",
    "prepare_settings",
    "require_3d_checkpoint",
]

#: The keys of ``build_segmenter3d``'s load info that a run's metrics.json keeps (``load``).
LOAD_KEYS = (
    "summary",
    "checkpoint",
    "encoder",
    "encoder_report",
    "decoder",
    "decoder_report",
    "new",
)


def require_3d_checkpoint(meta: CheckpointMeta, path: CheckpointLike) -> None:
    """Raise ``CheckpointError`` unless the checkpoint holds a 3D network."""
    dims = meta.spatial_dims
    if dims != 3:
        raise CheckpointError(
            f"{path}: a {dims}D checkpoint (method {meta.method!r}, backbone "
            f"{meta.backbone_name!r}) cannot initialise 3D segmentation; "
            "pretrain with a 3D method (volume_fusion, voco) or pass --pretrained none"
        )


def prepare_settings(cfg: dict[str, Any], meta: CheckpointMeta | None) -> dict[str, Any]:
    """``prepare_store`` arguments for raw folders: the checkpoint's preprocessing when it
    records one (and ``prepare.match_checkpoint``), else the ``prepare`` config."""
    prep = dict(cfg.get("prepare") or {})
    recorded = meta.store_preprocessing if meta is not None else None
    if recorded is not None and prep.get("match_checkpoint", True):
        return prepare_kwargs(recorded)
    return {
        "target_spacing": prep.get("target_spacing"),
        "modality": str(prep.get("modality", "auto")),
        "ct_clip": tuple(prep.get("ct_clip") or (-1000.0, 1000.0)),
        "mr_percentiles": tuple(prep.get("mr_percentiles") or (0.5, 99.5)),
        "crop_foreground": bool(prep.get("crop_foreground", True)),
    }


def check_preprocessing(
    meta: CheckpointMeta, checkpoint: CheckpointLike, store: Store, strict: bool = True
) -> None:
    """Stop (``CheckpointError``) when the checkpoint's store preprocessing differs from the
    store's, naming both; warn instead when ``strict`` is False or nothing was recorded."""
    recorded = meta.store_preprocessing
    if recorded is None:
        warnings.warn(
            f"{checkpoint}: records no 3D store preprocessing; cannot check it against "
            f"{store.root}",
            stacklevel=2,
        )
        return
    diff = preprocessing_diff(recorded, store.preprocessing)
    if not diff:
        return
    message = (
        f"checkpoint {checkpoint} and store {store.root} differ in preprocessing "
        f"({describe_diff(recorded, store.preprocessing, diff)}; checkpoint vs store); prepare "
        "the data with the checkpoint's settings or set check_preprocessing=false"
    )
    if strict:
        raise CheckpointError(message)
    warnings.warn(message, stacklevel=2)


def network_setup(cfg: dict[str, Any], pretrained: CheckpointLike | None) -> dict[str, Any]:
    """The network to build: ``{"network", "options", "checkpoint", "meta", "resolved"}``
    (``checkpoint``: the path as given; ``resolved``: its ``Checkpoint``, read once here or
    passed in; ``meta``: its ``CheckpointMeta``).

    ``cfg["network"]`` = ``auto`` (default) takes the checkpoint's network, ``resnet_unet``
    without one; a named network must be the one the checkpoint fits (a mismatch is an error,
    not a silent swap). Options come from ``cfg[<network>]``, then the checkpoint's.
    """
    name = str(cfg.get("network", "auto"))
    if name != "auto":
        get_segmenter3d(name)  # a clear error for an unknown name
    meta: CheckpointMeta | None = None
    resolved: Checkpoint | None = None
    if pretrained is not None:
        resolved = resolve_checkpoint(pretrained)
        meta = resolved.meta
        require_3d_checkpoint(meta, pretrained)
        if name != "auto" and get_segmenter3d(name).from_checkpoint is None:
            raise CheckpointError(
                f"network {name!r} trains from scratch only; a checkpoint ({pretrained}) "
                "initialises resnet_unet (or another network that loads checkpoints)"
            )
        try:
            fitted = network_for_checkpoint(meta.backbone_config, meta.decoder)
        except ValueError as e:
            raise CheckpointError(f"{pretrained}: {e}") from e
        if name not in ("auto", fitted):
            raise CheckpointError(
                f"network {name!r} is configured but the checkpoint {pretrained} initialises "
                f"{fitted!r}; set network: auto (or {fitted}) to fine-tune it"
            )
        name = fitted
        if meta.in_channels != 1:
            raise CheckpointError(
                f"{pretrained}: {meta.in_channels} input channels; 3D stores hold one"
            )
    elif name == "auto":
        name = "resnet_unet"
    options = copy.deepcopy(dict(cfg.get(name) or {}))
    if meta is not None:
        from_checkpoint = get_segmenter3d(name).from_checkpoint
        assert from_checkpoint is not None
        options.update(from_checkpoint(meta.backbone_config or {}, meta.decoder))
    return {
        "network": name,
        "options": options,
        "checkpoint": None if pretrained is None else str(pretrained),
        "meta": meta,
        "resolved": resolved,
    }


def build_segmenter3d(
    setup: dict[str, Any], num_classes: int, min_fraction: float = 1.0, decoder: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``setup`` with ``num_classes`` outputs, initialised from its checkpoint
    (encoder, then decoder when there is one and ``decoder``; the head stays new); returns
    (model, load info)."""
    model = create_segmenter3d(setup["network"], 1, num_classes, **setup["options"])
    if setup["checkpoint"] is None:
        return model, {"summary": "random initialisation"}
    ckpt: CheckpointLike = setup.get("resolved") or setup["checkpoint"]
    enc = load_backbone(ckpt, model.encoder, min_fraction=min_fraction)
    info: dict[str, Any] = {
        "checkpoint": setup["checkpoint"],
        "encoder": f"{enc.loaded}/{enc.total_model}",
        "encoder_report": enc.summary(),
        "head": "re-initialised",
    }
    net_decoder = getattr(model, "decoder", None)
    if decoder and has_decoder(ckpt) and isinstance(net_decoder, nn.Module):
        dec = load_decoder(ckpt, net_decoder)
        info["decoder"] = f"{dec.loaded}/{dec.total_model}"
        info["decoder_report"] = dec.summary()
    else:
        info["decoder"] = (
            "not loaded (load_decoder: false)" if has_decoder(ckpt) else "none in checkpoint"
        )
    new = new_parts(model)
    info["new"] = ", ".join(new)
    info["summary"] = (
        f"encoder {info['encoder']} tensors, decoder "
        + (f"{info['decoder']} tensors" if "decoder_report" in info else info["decoder"])
        + f", {' and '.join(new)} re-initialised"
    )
    return model, info


def new_parts(model: nn.Module) -> list[str]:
    """Top-level parts of ``model`` no checkpoint initialises (all but encoder and decoder;
    ``head`` first): the head, PCT-Net's ``aux_heads``."""
    parts = {k.split(".")[0] for k in model.state_dict()} - {"encoder", "decoder"}
    return sorted(parts, key=lambda p: (p != "head", p))


def network_size_multiple(setup: dict[str, Any]) -> tuple[int, int, int]:
    """The per-axis (D, H, W) size rule of the network of ``setup``."""
    return size_multiple_of(setup["network"], setup["options"])


def checkpoint_meta(
    setup: dict[str, Any],
    model: nn.Module,
    store: Store,
    cfg: dict[str, Any],
    classes: Sequence[int],
    names: Sequence[str],
    load: dict[str, Any],
) -> CheckpointMeta:
    """Metadata of a fine-tuned 3D segmenter (rebuild, feed and reuse it as --pretrained)."""
    encoder = getattr(model, "encoder", None)
    backbone = (
        BackboneSpec.from_config(encoder.config)
        if isinstance(encoder, nn.Module) and hasattr(encoder, "config")
        else None
    )
    decoder = getattr(model, "decoder", None)
    decoder_cfg: dict[str, Any] | None = None
    if setup["network"] == "resnet_unet":
        decoder_cfg = {
            "type": "resnet_unet",
            "decoder_channels": list(model.config["decoder_channels"]),
        }
    elif isinstance(getattr(decoder, "config", None), dict):  # PCT-Net: its decoder.config
        decoder_cfg = dict(decoder.config)
    return CheckpointMeta(
        task="segmentation",
        method="finetune",
        network=setup["network"],
        network_options=copy.deepcopy(setup["options"]),
        num_classes=max(classes) + 1,
        labels={str(v): n for v, n in zip(classes, names, strict=True)},
        in_channels=1,
        spatial_dims=3,
        axis_order=AXIS_ORDER_3D,
        input_size=tuple(int(s) for s in cfg["patch_size"]),
        sliding_window=dict(cfg["sliding_window"]),
        normalization={"name": "store", **store.preprocessing},
        pretrained_from=setup["checkpoint"],
        backbone=backbone,
        decoder=decoder_cfg,
        extra={"load_report": load.get("summary")},
    )
