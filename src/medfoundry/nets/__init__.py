"""Backbones and heads (plain PyTorch; no torchvision)."""

from medfoundry.nets.factory import backbone_names, create_backbone
from medfoundry.nets.pctnet import PCTNET_BACKBONES, PCTNet, PCTNetDecoder, PCTNetEncoder
from medfoundry.nets.resnet import BACKBONES, ResNetBackbone
from medfoundry.nets.swin import SWIN_BACKBONES, SwinBackbone

__all__ = [
    "BACKBONES",
    "PCTNET_BACKBONES",
    "SWIN_BACKBONES",
    "PCTNet",
    "PCTNetDecoder",
    "PCTNetEncoder",
    "ResNetBackbone",
    "SwinBackbone",
    "backbone_names",
    "create_backbone",
]
