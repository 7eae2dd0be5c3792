"""U-Net with a ResNet encoder: the backbone's 5 feature maps feed a skip-connected decoder.

The encoder is a `ResNetBackbone` kept as `.encoder`, so a pretrained checkpoint loads into it
with `medfoundry.zoo.load_backbone(path, unet.encoder)`. The decoder follows the usual
"ResNet-UNet" layout: five upsampling blocks (strides 32 -> 16 -> 8 -> 4 -> 2 -> 1), the first
four concatenating the encoder map of the same stride, then a 3x3 convolution to `num_classes`
logits at the input resolution. Works for 2D and 3D backbones (`spatial_dims` of the backbone);
every spatial size must be divisible by 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.nets.resnet import ResNetBackbone


def _conv_bn_relu(dims: int, in_ch: int, out_ch: int) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return nn.Sequential(
        conv(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        norm(out_ch),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip (if any), two conv-BN-ReLU."""

    def __init__(self, dims: int, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(dims, in_ch + skip_ch, out_ch)
        self.conv2 = _conv_bn_relu(dims, out_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        target = skip.shape[2:] if skip is not None else [2 * s for s in x.shape[2:]]
        x = F.interpolate(x, size=tuple(target), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class ResNetUNet(nn.Module):
    """Segmentation network: `forward(x)` -> logits (B, num_classes, *x.shape[2:])."""

    def __init__(
        self,
        backbone: ResNetBackbone,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 values, got {list(decoder_channels)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = backbone
        self.num_classes = num_classes
        self.spatial_dims = int(backbone.config.get("spatial_dims", 2))
        dims = self.spatial_dims
        enc = list(backbone.feature_channels)  # strides 2, 4, 8, 16, 32
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        blocks = []
        in_ch = enc[4]
        for skip_ch, out_ch in zip(skips, decoder_channels, strict=True):
            blocks.append(DecoderBlock(dims, in_ch, skip_ch, int(out_ch)))
            in_ch = int(out_ch)
        self.decoder = nn.ModuleList(blocks)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.head = conv(in_ch, num_classes, kernel_size=3, padding=1)
        self.config = {
            "backbone": dict(backbone.config),
            "num_classes": num_classes,
            "decoder_channels": [int(c) for c in decoder_channels],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = [s for s in x.shape[2:] if s % 32]
        if bad:
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be divisible by 32")
        feats = self.encoder.features(x)
        skips: list[torch.Tensor | None] = [feats[3], feats[2], feats[1], feats[0], None]
        y = feats[4]
        for block, skip in zip(self.decoder, skips, strict=True):
            y = block(y, skip)
        return self.head(y)
