"""Backbones and heads (plain PyTorch; no torchvision)."""

from medfoundry.nets.factory import backbone_names, create_backbone
from medfoundry.nets.resnet import BACKBONES, ResNetBackbone
from medfoundry.nets.swin import SWIN_BACKBONES, SwinBackbone

__all__ = [
    "BACKBONES",
    "SWIN_BACKBONES",
    "ResNetBackbone",
    "SwinBackbone",
    "backbone_names",
    "create_backbone",
]
