"""SSL methods: ``torch.nn.Module``s whose ``forward(images, update=...)`` returns ``{"loss", ...}``.

``build_method(name, backbone, **kwargs)`` is the one entry point; ``METHODS`` maps each method's
name (the same name used by configs and the CLI) to its factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from medfoundry.methods.adam_v2 import AdamV2, adam_v2_stages
from medfoundry.methods.mae import MaskedAutoencoder
from medfoundry.methods.moco import MoCo
from medfoundry.methods.stages import Stage
from medfoundry.methods.voco import VoCo
from medfoundry.methods.volume_fusion import VolumeFusion
from medfoundry.nets.pctnet import PCTNet, PCTNetEncoder
from medfoundry.nets.unet import ResNetUNet

# Adam-v1's coarse-to-fine schedule: grid sides of the anatomy decomposer, stage by stage.
ADAM_LEVELS: tuple[int, ...] = (0, 2, 4)
# Volume Fusion's ResNet-UNet decoder channels when the config gives none.
RESNET_UNET_DECODER: tuple[int, ...] = (256, 128, 64, 32, 16)


def _build_adam(backbone: nn.Module, **kwargs: Any) -> MoCo:
    """Adam-v1: MoCo-v2 + anatomy decomposer + purposive pruner (the caller sets the level)."""
    kwargs.setdefault("prune_threshold", 0.8)
    return MoCo(backbone, **kwargs)


def _build_moco(backbone: nn.Module, **kwargs: Any) -> MoCo:
    """MoCo-v2, Adam's main baseline: whole-image views (level 0), plain InfoNCE."""
    if kwargs.pop("prune_threshold", None) is not None:
        raise ValueError("moco does not prune negatives: prune_threshold must be None")
    if kwargs.pop("level", 0) != 0:
        raise ValueError("moco uses whole-image views: level must be 0")
    return MoCo(backbone, prune_threshold=None, level=0, **kwargs)


def _build_mae(backbone: nn.Module, **kwargs: Any) -> MaskedAutoencoder:
    """VIS-MAE: a Swin encoder, 16-px mask units at 75 % (learned mask token), Swin decoder."""
    if not hasattr(backbone, "embed_dim"):
        name = getattr(backbone, "config", {}).get("name", type(backbone).__name__)
        raise ValueError(f"mae needs a Swin backbone (e.g. name: swin), got {name!r}")
    return MaskedAutoencoder(backbone, **kwargs)


def _require_3d(method: str, backbone: nn.Module) -> None:
    """Raise a clear error unless ``backbone`` is a 3D network (``config["spatial_dims"] == 3``)."""
    config = getattr(backbone, "config", {})
    dims = config.get("spatial_dims")
    if dims != 3:
        name = config.get("name", type(backbone).__name__)
        raise ValueError(
            f"{method} pretrains on 3D crops: it needs a 3D backbone (e.g. name: resnet18, "
            f"spatial_dims: 3), got {name!r} with spatial_dims={dims}"
        )


def _build_volume_fusion(
    backbone: nn.Module,
    num_classes: int = 5,
    decoder_channels: Sequence[int] | None = None,
    deep_supervision: bool | None = None,
    **kwargs: Any,
) -> VolumeFusion:
    """MIS-FM Volume Fusion: a 3D segmenter predicts the K + 1 blend-weight classes.

    A ``PCTNetEncoder`` gets the PCT-Net decoder with deep supervision (MIS-FM's setting;
    ``deep_supervision: false`` turns it off); any other 3D backbone with feature maps gets a
    ``ResNetUNet`` with ``decoder_channels`` (default ``RESNET_UNET_DECODER``).
    """
    _require_3d("volume_fusion", backbone)
    if isinstance(backbone, PCTNetEncoder):
        if decoder_channels is not None:
            raise ValueError(
                "volume_fusion with PCT-Net: its decoder mirrors the encoder's channels, so "
                "decoder_channels must be null (see the volume_fusion_pctnet preset)"
            )
        ds = True if deep_supervision is None else bool(deep_supervision)
        segmenter: nn.Module = PCTNet(backbone, num_classes, deep_supervision=ds)
        return VolumeFusion(segmenter, num_classes=num_classes, **kwargs)
    if not hasattr(backbone, "feature_channels"):
        raise ValueError("volume_fusion needs a ResNet backbone (its U-Net uses the feature maps)")
    if deep_supervision:
        raise ValueError("volume_fusion: deep_supervision needs a PCT-Net backbone (name: pctnet)")
    channels = RESNET_UNET_DECODER if decoder_channels is None else decoder_channels
    segmenter = ResNetUNet(backbone, num_classes, decoder_channels=channels)
    return VolumeFusion(segmenter, num_classes=num_classes, **kwargs)


def _build_voco(backbone: nn.Module, **kwargs: Any) -> VoCo:
    """VoCo: base/random crop overlap prediction on a 3D backbone (EMA teacher by default)."""
    _require_3d("voco", backbone)
    return VoCo(backbone, **kwargs)


def _build_adam_v2(backbone: nn.Module, **kwargs: Any) -> AdamV2:
    """Adam-v2: DINO student/teacher with localizability, composability, decomposability."""
    return AdamV2(backbone, **kwargs)


METHODS: dict[str, Callable[..., nn.Module]] = {
    "adam": _build_adam,
    "adam_v2": _build_adam_v2,
    "moco": _build_moco,
    "mae": _build_mae,
    "volume_fusion": _build_volume_fusion,
    "voco": _build_voco,
}


# Methods that declare their own stages (config -> [Stage]); the others train their levels.
STAGE_PLANS: dict[str, Callable[[dict[str, Any]], list[Stage]]] = {
    "adam_v2": adam_v2_stages,
}


def build_method(name: str, backbone: nn.Module, **kwargs: Any) -> nn.Module:
    """Build the SSL method ``name`` around ``backbone``; kwargs go to the method's class."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    model = METHODS[name](backbone, **kwargs)
    model.method_name = name
    return model


__all__ = [
    "ADAM_LEVELS",
    "METHODS",
    "STAGE_PLANS",
    "AdamV2",
    "MaskedAutoencoder",
    "MoCo",
    "Stage",
    "VoCo",
    "VolumeFusion",
    "build_method",
]
