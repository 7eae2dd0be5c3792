"""Swin-UNet: a Swin encoder and a Swin decoder fused with the encoder maps (skips).

The decoder is VIS-MAE's pixel decoder with skip fusions added, so an MAE checkpoint can
initialise both halves: the encoder fully, the decoder's Swin stages and expansions where names
and shapes match (the skip fusions are new; the head is new when the class count differs from
the image channels).

The segmentation decoder adds a full-resolution convolutional skip from the image
(``conv_skip``, `DEFAULT_CONV_SKIP` channels unless the decoder config says otherwise; see
``swin_decoder``): without it the patch-4 head cannot resolve thin structures.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medfoundry.nets.swin import SwinBackbone
from medfoundry.nets.swin_decoder import SwinDecoder

# channels of the decoder's full-resolution conv skip when the decoder config does not set it
DEFAULT_CONV_SKIP = 16


def default_decoder_config(backbone: SwinBackbone) -> dict[str, Any]:
    """The VIS-MAE decoder matching `backbone`: depths (2, 2, 2), heads mirrored."""
    n = len(backbone.depths)
    return {
        "embed_dim": backbone.embed_dim,
        "depths": [2] * (n - 1),
        "num_heads": list(reversed(backbone.num_heads[: n - 1])),
        "window_size": backbone.window_size,
        "patch_size": backbone.patch_size,
        "mlp_ratio": backbone.mlp_ratio,
    }


class SwinUNet(nn.Module):
    """Segmentation network: `forward(x)` -> logits (B, num_classes, H, W).

    The encoder is kept as `.encoder` (pretrained checkpoints load into it; the fine-tuning
    recipe's encoder learning rate applies to it) and the decoder as `.decoder`.
    """

    def __init__(
        self,
        backbone: SwinBackbone,
        num_classes: int,
        decoder_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        cfg = {**(decoder_cfg or default_decoder_config(backbone))}
        cfg.update(out_channels=num_classes, skips=True, in_channels=backbone.in_channels)
        cfg.setdefault("conv_skip", DEFAULT_CONV_SKIP)  # an MAE decoder config has none
        self.encoder = backbone
        self.decoder = SwinDecoder(**cfg)
        self.num_classes = num_classes
        self.config = {
            "backbone": dict(backbone.config),
            "num_classes": num_classes,
            "decoder": dict(self.decoder.config),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder.features(x), image=x)
