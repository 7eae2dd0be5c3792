"""ResNet backbones built on MONAI's ResNet, exposing pooled vectors and a feature pyramid.

`nets.create_backbone("resnet50", in_channels=1)` gives the paper's ResNet-50; `width` shrinks the
channel counts so CPU runs and tests stay feasible. Any input size works (global pooling).
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

# name -> (block, layers)
BACKBONES: dict[str, tuple[str, list[int]]] = {
    "resnet10": ("basic", [1, 1, 1, 1]),
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}
BASE_WIDTHS = (64, 128, 256, 512)


class ResNetBackbone(nn.Module):
    """A ResNet without classifier: `forward` -> pooled (B, D), `features` -> 5 maps.

    The feature maps have strides 2, 4, 8, 16, 32 (stem, layer1..layer4), so a U-Net decoder
    can use them as skips.
    """

    def __init__(
        self,
        name: str = "resnet18",
        in_channels: int = 1,
        width: float = 1.0,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
        block, layers = BACKBONES[name]
        widths = [max(8, int(round(w * width))) for w in BASE_WIDTHS]
        self.config: dict[str, Any] = {
            "name": name,
            "in_channels": in_channels,
            "width": width,
            "spatial_dims": spatial_dims,
        }
        net = ResNet(
            block=block,
            layers=layers,
            block_inplanes=widths,
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        expansion = 4 if block == "bottleneck" else 1
        stem = widths[0]
        self.feature_channels: list[int] = [stem] + [w * expansion for w in widths]
        self.out_dim: int = self.feature_channels[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32: [(B, C_i, H/s, W/s) ...]."""
        x0 = self.act(self.bn1(self.conv1(x)))
        x1 = self.layer1(self.maxpool(x0))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled embedding (B, D)."""
        feat = self.features(x)[-1]
        return feat.flatten(2).mean(-1)
