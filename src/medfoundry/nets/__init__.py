"""Backbones and heads (plain PyTorch; no torchvision)."""

from medfoundry.nets.resnet import BACKBONES, ResNetBackbone, create_backbone

__all__ = ["BACKBONES", "ResNetBackbone", "create_backbone"]
