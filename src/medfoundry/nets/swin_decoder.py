"""Swin-Unet expanding path: VIS-MAE's pixel decoder, and later a Swin-UNet segmentation decoder.

From the stride-32 map (8C) it alternates PatchExpanding (2x up, half the channels) and Swin
stages: expand to 4C, blocks, expand to 2C, blocks, expand to C, blocks, LayerNorm, then a
per-token ``Linear(C -> patch**2 * out_channels)`` rearranged into pixels, giving an image-sized
output (B, out_channels, H, W). VIS-MAE's decoder is ``skips=False`` with 2 blocks per stage
(6.5M parameters at C=96, 3 output channels).

With ``skips=True`` every stage first concatenates the encoder map of its stride and fuses it
with ``Linear(2d -> d)`` (Swin-Unet's ``concat_back_dim``); the modules of the no-skip path keep
their names and shapes, so a VIS-MAE decoder checkpoint loads into a skip decoder except for the
fusion layers (and the head when ``out_channels`` differs). Swin-Unet taps each stage's *input*;
here the skips are ``SwinBackbone.features`` (each stage's output), which carry the same
channels at the same strides.

With ``conv_skip=s > 0`` (UNETR / Swin-UNETR's convolutional skip from the raw image) the
decoder also takes the input image and runs a two-level conv U-Net top on it, as UNETR's
full- and half-resolution encoder blocks: ``conv_stem`` (two Conv3x3 + BatchNorm + ReLU, s
channels, full resolution) and ``conv_down`` (stride-2 Conv3x3, then Conv3x3, 2s channels);
the stride-4 decoder tokens (after ``norm_up``) are upsampled bilinearly to half resolution and
fused with ``conv_down`` (``conv_half``), that map is upsampled to full resolution and fused
with ``conv_stem`` (``conv_fuse``: Conv3x3 + BN + ReLU, Conv1x1), and the result is added, as
per-pixel logits, to the head's patch logits. Without it
no full-resolution information reaches the output: the head predicts a ``patch x patch`` block
from one LayerNorm'd token, which cannot draw thin structures (clavicles) or sharp borders.
The default ``conv_skip=0`` builds exactly the VIS-MAE module tree (MAE decoders keep it off); a
skip decoder with ``conv_skip`` loads a VIS-MAE decoder checkpoint by name, the conv parts new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfoundry.nets.swin_blocks import (
    LayerNorm,
    PatchExpanding,
    SwinStage,
    drop_path_rates,
    init_swin_weights,
)


class SwinDecoder(nn.Module):
    """Swin-Unet-style decoder: ``forward(features) -> (B, out_channels, H, W)``.

    Args:
        embed_dim: C, the encoder's stride-4 width (the input map has C * 2**len(depths)).
        out_channels: values predicted per pixel (image channels for MAE, classes for segmentation).
        depths: Swin blocks per decoder stage, coarse to fine (VIS-MAE: (2, 2, 2)).
        num_heads: heads per stage, coarse to fine (default: C * 2**i / 32, i.e. 12, 6, 3).
        window_size, mlp_ratio, qkv_bias: as in the encoder.
        patch_size: pixels per stride-4 token side (the head predicts patch x patch pixels).
        drop_path: stochastic depth of the decoder blocks (VIS-MAE's MAE decoder: 0).
        skips: fuse the encoder maps of matching stride (Swin-UNet); False for MAE.
        conv_skip: channels of the full-resolution conv skip from the image (0: off, MAE).
        in_channels: image channels the conv skip reads (used only with ``conv_skip``).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        out_channels: int = 1,
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] | None = None,
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        skips: bool = False,
        use_checkpoint: bool = False,
        conv_skip: int = 0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        n = len(depths)
        dims = [embed_dim * 2 ** (n - 1 - i) for i in range(n)]  # coarse to fine: 4C, 2C, C
        heads = list(num_heads) if num_heads is not None else [max(1, d // 32) for d in dims]
        if len(heads) != n:
            raise ValueError(f"num_heads {heads} needs one entry per decoder stage ({n})")
        self.config: dict[str, Any] = {
            "embed_dim": int(embed_dim),
            "out_channels": int(out_channels),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in heads],
            "window_size": int(window_size),
            "patch_size": int(patch_size),
            "mlp_ratio": float(mlp_ratio),
            "qkv_bias": bool(qkv_bias),
            "drop_path": float(drop_path),
            "skips": bool(skips),
        }
        if conv_skip:  # only then: configs of VIS-MAE decoders stay as they were
            self.config.update(conv_skip=int(conv_skip), in_channels=int(in_channels))
        if conv_skip < 0:
            raise ValueError(f"conv_skip must be >= 0, got {conv_skip}")
        self.conv_skip = int(conv_skip)
        self.patch_size, self.out_channels, self.skips = int(patch_size), int(out_channels), skips
        self.in_dim = 2 * dims[0]
        self.expand = nn.ModuleList(PatchExpanding(2 * d) for d in dims)
        rates = drop_path_rates(depths, drop_path)
        self.layers_up = nn.ModuleList(
            SwinStage(d, depth, h, window_size, mlp_ratio, qkv_bias, r, use_checkpoint)
            for d, depth, h, r in zip(dims, depths, heads, rates, strict=True)
        )
        self.skip_fuse = (
            nn.ModuleList(nn.Linear(2 * d, d) for d in dims) if skips else nn.ModuleList()
        )
        self.norm_up = LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, patch_size**2 * out_channels)
        self.apply(init_swin_weights)
        if self.conv_skip:
            s = self.conv_skip
            self.conv_stem = nn.Sequential(_conv_bn_relu(in_channels, s), _conv_bn_relu(s, s))
            self.conv_down = nn.Sequential(_conv_bn_relu(s, 2 * s, 2), _conv_bn_relu(2 * s, 2 * s))
            self.conv_half = _conv_bn_relu(embed_dim + 2 * s, 2 * s)
            self.conv_fuse = nn.Sequential(
                _conv_bn_relu(3 * s, s), nn.Conv2d(s, out_channels, kernel_size=1)
            )

    def forward(self, features: Sequence[Tensor], image: Tensor | None = None) -> Tensor:
        """``features``: the encoder maps [(B, C_i, h_i, w_i)] fine to coarse (as returned by
        ``SwinBackbone.features``); the last one is decoded, the others give the target grid
        of each stage (odd sizes were padded by the encoder; the decoder crops back) and, with
        ``skips``, the skip tensors. ``image`` (B, in_channels, h_0 * p, w_0 * p): the input,
        required with ``conv_skip``. Returns (B, out_channels, h_0 * p, w_0 * p)."""
        if self.conv_skip and image is None:
            raise ValueError("a decoder with conv_skip needs the input image")
        n = len(self.layers_up)
        if len(features) < n + 1:
            raise ValueError(f"need {n + 1} feature maps, got {len(features)}")
        x = features[-1].permute(0, 2, 3, 1)  # (B, h, w, 8C)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"decoder expects {self.in_dim} channels, got {x.shape[-1]}")
        for i in range(n):
            skip = features[-2 - i].permute(0, 2, 3, 1)  # (B, h', w', d)
            x = self.expand[i](x)[:, : skip.shape[1], : skip.shape[2]]  # (B, h', w', d)
            if self.skips:
                x = self.skip_fuse[i](torch.cat([x, skip], dim=-1))
            x = self.layers_up[i](x)
        x = self.norm_up(x)  # (B, h0, w0, C)
        out = tokens_to_image(self.head(x), self.patch_size, self.out_channels)
        if not self.conv_skip:
            return out
        size = out.shape[-2:]
        if image is None or tuple(image.shape[-2:]) != tuple(size):
            raise ValueError(f"conv_skip image must be {tuple(size)}, got {image.shape[-2:]}")
        full = self.conv_stem(image)  # (B, s, H, W)
        half = self.conv_down(full)  # (B, 2s, ceil(H/2), ceil(W/2))
        up = _resize(x.permute(0, 3, 1, 2), half.shape[-2:])
        half = self.conv_half(torch.cat([up, half], dim=1))
        return out + self.conv_fuse(torch.cat([_resize(half, size), full], dim=1))


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of a (B, C, h, w) map to ``size`` (the conv skip's upsampling)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """Conv3x3 (no bias) + BatchNorm + ReLU, the U-Net block of the conv skip."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def tokens_to_image(tokens: Tensor, patch_size: int, channels: int) -> Tensor:
    """(B, h, w, p*p*C) per-token pixel values (order p_row, p_col, C) -> (B, C, h*p, w*p)."""
    b, h, w, _ = tokens.shape
    x = tokens.reshape(b, h, w, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, h * patch_size, w * patch_size)


def image_to_tokens(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, H/p, W/p, p*p*C), the inverse of ``tokens_to_image`` (MAE patchify)."""
    b, c, hh, ww = images.shape
    h, w = hh // patch_size, ww // patch_size
    x = images.reshape(b, c, h, patch_size, w, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h, w, patch_size * patch_size * c)
