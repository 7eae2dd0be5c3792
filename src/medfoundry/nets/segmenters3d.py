"""3D segmentation networks by name: a registry of builders for fine-tuning and benchmarks.

``create_segmenter3d(name, in_channels, num_classes, **options)`` builds a network mapping
(B, C, D, H, W) to logits (B, num_classes, D, H, W). Each entry (``Segmenter3D``) says

- ``build(in_channels, num_classes, options) -> nn.Module``;
- ``size_multiple``: what every patch / sliding-window side must be divisible by, per axis
  (D, H, W): a 3-tuple, or a function of the options for networks whose rule depends on them
  (PCT-Net's ``resolution_mode``); ``size_multiple_of(name, options)`` resolves it;
- ``from_checkpoint(backbone, decoder) -> options`` (a checkpoint's backbone config and its
  decoder config or None), or None for networks trained from scratch only. A
  network that loads checkpoints exposes ``.encoder`` (``model.safetensors`` loads into it via
  ``zoo.load_backbone``), optionally ``.decoder`` (``decoder.safetensors``, ``zoo.load_decoder``)
  and ``.head`` (the output layer, always freshly initialised for the downstream classes).

Networks: ``resnet_unet`` (the 3D ResNet-UNet of ``nets.unet``, Volume Fusion's segmenter and a
VoCo backbone's U-Net), ``pctnet`` (MIS-FM's PCT-Net, ``nets.pctnet``: Volume Fusion's
``volume_fusion_pctnet`` checkpoints, or from scratch; options ``backbone`` (the
``PCTNetEncoder`` arguments) and ``deep_supervision``), ``unet`` (MONAI ``BasicUNet``, scratch
only) and ``swinunetr`` (MONAI ``SwinUNETR`` as ``nets.swinunetr.SwinUNETRNet``: checkpoints
imported from VoCo / Swin-UNETR SSL, or from scratch; its ``einops`` is a dependency). Adding a network
is one entry of ``SEGMENTERS_3D``.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from medfoundry.errors import MedfoundryError
from medfoundry.nets import pctnet
from medfoundry.nets.factory import create_backbone
from medfoundry.nets.resnet import BACKBONES
from medfoundry.nets.unet import ResNetUNet

Options = dict[str, Any]
Triple = tuple[int, int, int]
SizeMultiple = Triple | Callable[[Options], Triple]


@dataclass(frozen=True)
class Segmenter3D:
    """A registered 3D segmentation network (see the module doc for the contract).

    ``size_rule(options)`` (optional) explains the size rule in errors (how options set it).
    """

    build: Callable[[int, int, Options], nn.Module]
    size_multiple: SizeMultiple
    from_checkpoint: Callable[[Options, Options | None], Options] | None = None
    description: str = ""
    size_rule: Callable[[Options], str] | None = None


def _build_resnet_unet(in_channels: int, num_classes: int, options: Options) -> nn.Module:
    """3D ResNet encoder (``backbone``: name, width) + skip decoder (``decoder_channels``)."""
    bb = {"name": "resnet18", "width": 1.0, **dict(options.get("backbone") or {})}
    backbone = create_backbone(
        name=str(bb["name"]),
        in_channels=in_channels,
        width=float(bb["width"]),
        spatial_dims=3,
    )
    channels = options.get("decoder_channels") or (256, 128, 64, 32, 16)
    return ResNetUNet(backbone, num_classes, decoder_channels=[int(c) for c in channels])


def _resnet_unet_options(backbone: Options, decoder: Options | None) -> Options:
    """The ResNet-UNet a checkpoint's encoder (and Volume Fusion decoder) fits into."""
    bb = dict(backbone)
    options: Options = {"backbone": {"name": bb["name"], "width": float(bb.get("width", 1.0))}}
    decoder = decoder or {}
    if decoder.get("type") == "resnet_unet" and decoder.get("decoder_channels"):
        options["decoder_channels"] = [int(c) for c in decoder["decoder_channels"]]
    return options


_PCTNET_DEFAULT_MODE = int(
    inspect.signature(pctnet.PCTNetEncoder).parameters["resolution_mode"].default
)
_PCTNET_FIXED = ("in_channels", "spatial_dims")  # set by the builder, not by options


def _pctnet_backbone(options: Options) -> Options:
    """The ``PCTNetEncoder`` arguments of ``options["backbone"]`` (its ``name``, if any, must
    be ``pctnet``; ``in_channels`` / ``spatial_dims`` are the builder's)."""
    bb = {k: v for k, v in dict(options.get("backbone") or {}).items() if k not in _PCTNET_FIXED}
    name = bb.pop("name", "pctnet")
    if name != "pctnet":
        raise ValueError(f"network pctnet needs a pctnet backbone, got {name!r}")
    return bb


def _build_pctnet(in_channels: int, num_classes: int, options: Options) -> nn.Module:
    """PCT-Net (``backbone``: ``PCTNetEncoder`` arguments) with its mirrored decoder and head;
    ``deep_supervision`` (default True, as MIS-FM fine-tunes) adds the three auxiliary heads,
    so that in training mode it returns [main, aux_y1, aux_d2, aux_d3]."""
    encoder = create_backbone(name="pctnet", in_channels=in_channels, **_pctnet_backbone(options))
    deep = bool(options.get("deep_supervision", True))
    return pctnet.PCTNet(encoder, num_classes, deep_supervision=deep)


def _pctnet_mode(options: Options) -> int:
    return int(_pctnet_backbone(options).get("resolution_mode", _PCTNET_DEFAULT_MODE))


def _pctnet_multiple(options: Options) -> Triple:
    """PCT-Net's per-axis rule: the stride of its deepest map for ``resolution_mode``."""
    return pctnet.size_multiple(_pctnet_mode(options))


def _pctnet_rule(options: Options) -> str:
    """The rule in words: this resolution_mode, and what every mode needs."""
    modes = ", ".join(f"{m}: {pctnet.size_multiple(m)}" for m in sorted(pctnet.MODE_STRIDES))
    return f"PCT-Net with resolution_mode {_pctnet_mode(options)} (per mode, {modes})"


def _pctnet_options(backbone: Options, decoder: Options | None) -> Options:
    """The PCT-Net a checkpoint's encoder (and Volume Fusion decoder) fits into: the encoder's
    recorded arguments (the decoder mirrors them)."""
    bb = dict(backbone)
    if bb.get("name") != "pctnet":
        raise ValueError(f"a pctnet decoder needs a pctnet backbone, got {bb.get('name')!r}")
    return {"backbone": {k: v for k, v in bb.items() if k not in _PCTNET_FIXED}}


def _build_unet(in_channels: int, num_classes: int, options: Options) -> nn.Module:
    """MONAI BasicUNet (4 poolings; ``features``: six channel counts)."""
    from monai.networks.nets import BasicUNet

    features = tuple(int(f) for f in options.get("features") or (16, 16, 32, 64, 128, 16))
    return BasicUNet(
        spatial_dims=3, in_channels=in_channels, out_channels=num_classes, features=features
    )


def _build_swinunetr(in_channels: int, num_classes: int, options: Options) -> nn.Module:
    """MONAI SwinUNETR (``feature_size`` divisible by 12, ``depths``, ``num_heads``,
    ``use_v2``) as ``nets.swinunetr.SwinUNETRNet`` (``encoder`` = the Swin transformer, so a
    VoCo / Swin-UNETR SSL checkpoint imported by ``medfoundry import`` loads); MONAI's
    implementation needs the ``einops`` package."""
    if importlib.util.find_spec("einops") is None:
        raise MedfoundryError(
            "network swinunetr needs the einops package (MONAI's SwinUNETR uses it): "
            "pip install einops"
        )
    from medfoundry.nets.swinunetr import SwinUNETRNet, SwinViT3D

    encoder = SwinViT3D(
        in_channels=in_channels,
        feature_size=int(options.get("feature_size", 24)),
        depths=tuple(int(d) for d in options.get("depths") or (2, 2, 2, 2)),
        num_heads=tuple(int(h) for h in options.get("num_heads") or (3, 6, 12, 24)),
        window_size=int(options.get("window_size", 7)),
        use_v2=bool(options.get("use_v2", False)),
    )
    return SwinUNETRNet(encoder, num_classes)


def _swinunetr_options(backbone: Options, decoder: Options | None) -> Options:
    """The SwinUNETR a ``swinvit3d`` checkpoint's encoder fits into (its recorded arguments)."""
    bb = dict(backbone)
    if bb.get("name") != "swinvit3d":
        raise ValueError(f"a swinunetr decoder needs a swinvit3d backbone, got {bb.get('name')!r}")
    keys = ("feature_size", "depths", "num_heads", "window_size", "use_v2")
    return {k: bb[k] for k in keys if k in bb}


SEGMENTERS_3D: dict[str, Segmenter3D] = {
    "resnet_unet": Segmenter3D(
        _build_resnet_unet,
        (32, 32, 32),
        _resnet_unet_options,
        "3D ResNet-UNet (Volume Fusion, VoCo)",
    ),
    "pctnet": Segmenter3D(
        _build_pctnet,
        _pctnet_multiple,
        _pctnet_options,
        "MIS-FM PCT-Net (Volume Fusion volume_fusion_pctnet), deep supervision",
        _pctnet_rule,
    ),
    "unet": Segmenter3D(_build_unet, (16, 16, 16), None, "MONAI BasicUNet, scratch only"),
    "swinunetr": Segmenter3D(
        _build_swinunetr,
        (32, 32, 32),
        _swinunetr_options,
        "MONAI SwinUNETR (imported VoCo / Swin-UNETR SSL checkpoints, or from scratch)",
    ),
}


def segmenter3d_names() -> list[str]:
    """Every name ``create_segmenter3d`` accepts."""
    return sorted(SEGMENTERS_3D)


def get_segmenter3d(name: str) -> Segmenter3D:
    """The registry entry of ``name`` (ValueError naming the choices otherwise)."""
    if name not in SEGMENTERS_3D:
        raise ValueError(f"unknown 3D network {name!r}; choose from {segmenter3d_names()}")
    return SEGMENTERS_3D[name]


def create_segmenter3d(name: str, in_channels: int, num_classes: int, **options: Any) -> nn.Module:
    """Build the registered 3D network ``name`` (logits (B, num_classes, D, H, W))."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
    return get_segmenter3d(name).build(int(in_channels), int(num_classes), options)


def size_multiple_of(name: str, options: Options | None = None) -> Triple:
    """What each side (D, H, W) of a patch / sliding-window roi of network ``name`` built with
    ``options`` must be divisible by (an int entry counts for all three axes)."""
    rule = get_segmenter3d(name).size_multiple
    value = rule(dict(options or {})) if callable(rule) else rule
    if isinstance(value, int):
        return (value, value, value)
    d, h, w = (int(v) for v in value)
    return d, h, w


def check_patch(name: str, patch: Sequence[int], options: Options | None = None) -> None:
    """Raise ValueError unless every side of ``patch`` (D, H, W) suits network ``name`` (with
    ``options``), naming the per-axis rule and the sides that break it."""
    entry = get_segmenter3d(name)
    multiple = size_multiple_of(name, options)
    sides = [int(s) for s in patch]
    bad = [f"{a} = {s}" for a, s, m in zip("DHW", sides, multiple, strict=False) if s < 1 or s % m]
    if len(sides) != 3 or bad:
        rule = str(multiple[0]) if len(set(multiple)) == 1 else f"{multiple} along (D, H, W)"
        raise ValueError(
            f"patch {sides} (D, H, W) does not fit {name}: every side must be a positive "
            f"multiple of {rule}"
            + (f" ({', '.join(bad)} is not)" if bad else " (three sides needed)")
            + (f"; {entry.size_rule(dict(options or {}))}" if entry.size_rule else "")
        )


def network_for_checkpoint(backbone_cfg: Options | None, decoder: Options | None = None) -> str:
    """The registered network a 3D checkpoint (its backbone config and decoder config) loads
    into: its decoder's type, else its backbone's name, else ``resnet_unet`` for a ResNet."""
    decoder_type = (decoder or {}).get("type")
    backbone = str((backbone_cfg or {}).get("name", ""))
    for candidate in (decoder_type, backbone):
        if candidate in SEGMENTERS_3D and SEGMENTERS_3D[candidate].from_checkpoint is not None:
            return str(candidate)
    if backbone in BACKBONES:
        return "resnet_unet"
    loadable = [n for n, s in SEGMENTERS_3D.items() if s.from_checkpoint is not None]
    raise ValueError(
        f"no 3D network loads a checkpoint with backbone {backbone!r} and decoder "
        f"{decoder_type!r}; networks that load checkpoints: {loadable}"
    )
