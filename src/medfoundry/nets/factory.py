"""Build any registered backbone from its name and arguments (as stored in checkpoint metadata).

ResNets (``BACKBONES``) take ``width``/``spatial_dims``; Swin encoders (``SWIN_BACKBONES``) take
the ``SwinBackbone`` arguments; ``pctnet`` takes the ``PCTNetEncoder`` arguments (3D only);
``swinvit3d`` the ``nets.swinunetr.SwinViT3D`` arguments (MONAI's 3D Swin, VoCo's backbone).
``create_backbone(**backbone.config)`` rebuilds a backbone.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from medfoundry.nets.pctnet import PCTNET_BACKBONES, PCTNetEncoder
from medfoundry.nets.resnet import BACKBONES, ResNetBackbone
from medfoundry.nets.swin import SWIN_BACKBONES, SwinBackbone

SWINVIT3D_BACKBONES: tuple[str, ...] = ("swinvit3d",)  # nets.swinunetr (imported lazily)


def backbone_names() -> list[str]:
    """Every name ``create_backbone`` accepts."""
    return sorted([*BACKBONES, *SWIN_BACKBONES, *PCTNET_BACKBONES, *SWINVIT3D_BACKBONES])


def _backbone_class(name: str) -> type[nn.Module]:
    """The class ``create_backbone(name=name)`` builds (``ValueError`` for an unknown name)."""
    if name in SWIN_BACKBONES:
        return SwinBackbone
    if name in PCTNET_BACKBONES:
        return PCTNetEncoder
    if name in SWINVIT3D_BACKBONES:
        from medfoundry.nets.swinunetr import SwinViT3D

        return SwinViT3D
    if name in BACKBONES:
        return ResNetBackbone
    raise ValueError(f"unknown backbone {name!r}; choose from {backbone_names()}")


def backbone_arguments(name: str) -> tuple[str, ...]:
    """The arguments ``create_backbone(name=name, ...)`` takes (``name`` included), so that a
    misspelled one in a config or checkpoint is named before any network is built."""
    params = inspect.signature(_backbone_class(name).__init__).parameters
    return ("name", *sorted(p for p in params if p not in ("self", "name")))


def create_backbone(name: str = "resnet18", in_channels: int = 1, **kwargs: Any) -> nn.Module:
    """A backbone with ``forward -> (B, out_dim)``, ``features -> maps`` and ``config``."""
    if name in SWIN_BACKBONES:
        return SwinBackbone(name=name, in_channels=in_channels, **kwargs)
    if name in PCTNET_BACKBONES:
        return PCTNetEncoder(in_channels=in_channels, **kwargs)
    if name in SWINVIT3D_BACKBONES:
        from medfoundry.nets.swinunetr import SwinViT3D

        return SwinViT3D(name=name, in_channels=in_channels, **kwargs)
    if name in BACKBONES:
        return ResNetBackbone(name=name, in_channels=in_channels, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose from {backbone_names()}")
