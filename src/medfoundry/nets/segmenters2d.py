"""The 2D segmentation network of a backbone config: a ResNet-UNet or a Swin-UNet.

One constructor for training (``medfoundry.tasks.segmentation.build_segmenter``) and loading
(``medfoundry.zoo.load_model``), so a fine-tuned checkpoint rebuilds exactly the network it
was trained as: ResNet encoders get a ResNet-UNet (``decoder_channels``), Swin encoders a
Swin-UNet (``decoder_cfg``: the pretrained MAE decoder's config, or the VIS-MAE default).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from medfoundry.nets.factory import create_backbone
from medfoundry.nets.swin_unet import SwinUNet
from medfoundry.nets.unet import ResNetUNet

__all__ = ["create_segmenter2d", "segmenter_backbone_args", "is_swin_config"]


def is_swin_config(backbone_cfg: dict[str, Any]) -> bool:
    """True when ``backbone_cfg`` builds a Swin encoder (hence a Swin-UNet)."""
    return str(backbone_cfg.get("name", "")).startswith("swin")


def segmenter_backbone_args(backbone_cfg: dict[str, Any]) -> dict[str, Any]:
    """Every argument of a Swin backbone; the architecture keys of a ResNet (a config may
    carry others, e.g. a run's recorded extras)."""
    if is_swin_config(backbone_cfg):
        return dict(backbone_cfg)
    keys = ("name", "in_channels", "width", "spatial_dims")
    return {k: backbone_cfg[k] for k in keys if k in backbone_cfg}


def create_segmenter2d(
    backbone_cfg: dict[str, Any],
    num_classes: int,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_cfg: dict[str, Any] | None = None,
) -> nn.Module:
    """A randomly initialised U-Net for ``backbone_cfg`` whose ``forward(x)`` gives logits
    (B, num_classes, H, W): a Swin-UNet (``decoder_cfg``) or a ResNet-UNet (``decoder_channels``)."""
    backbone = create_backbone(**segmenter_backbone_args(backbone_cfg))
    if hasattr(backbone, "embed_dim"):
        return SwinUNet(backbone, num_classes, decoder_cfg)
    return ResNetUNet(backbone, num_classes, decoder_channels=decoder_channels)
