"""PCT-Net (MIS-FM): a 3D CNN embedding, then parallel convolution + Swin-transformer blocks.

``PCTNetEncoder`` is a backbone like ``ResNetBackbone`` (``forward -> (B, out_dim)``, ``features
-> 5 maps``, ``config``); ``PCTNetDecoder`` mirrors it, and ``PCTNet`` adds the class head (and
the deep-supervision heads Volume Fusion trains with). ``size_multiple(mode)`` /
``check_input_size`` give the input-size rule, ``scaled_channels`` the channels at a ``width``.

Rules (layout, Swin layers, input sizes, width rounding): docs/rules/pctnet.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfoundry.nets.swin_blocks import drop_path_rates
from medfoundry.nets.swin_blocks3d import SwinLayer3d

PCTNET_BACKBONES: tuple[str, ...] = ("pctnet",)
Triple = tuple[int, int, int]
# resolution_mode -> max-pool strides (D, H, W) of the embedding's two downsamplings x0->x1->x2
MODE_STRIDES: dict[int, tuple[Triple, Triple]] = {
    0: ((2, 2, 2), (2, 2, 2)),
    1: ((1, 2, 2), (2, 2, 2)),
    2: ((1, 2, 2), (1, 2, 2)),
}


# --- geometry ---------------------------------------------------------------------------------
def _check_mode(mode: int) -> None:
    if mode not in MODE_STRIDES:
        raise ValueError(f"resolution_mode must be one of {sorted(MODE_STRIDES)}, got {mode!r}")


def level_strides(mode: int) -> list[Triple]:
    """Stride (D, H, W) of each of the 5 maps x0, x1, e2, e3, e4 relative to the input."""
    _check_mode(mode)
    out: list[Triple] = [(1, 1, 1)]
    for sd, sh, sw in (*MODE_STRIDES[mode], (2, 2, 2), (2, 2, 2)):
        d, h, w = out[-1]
        out.append((d * sd, h * sh, w * sw))
    return out


def level_kernels(mode: int) -> list[Triple]:
    """Conv kernel of each level: 1x3x3 where the level is anisotropic (its remaining pooling
    to R is weaker along D than in-plane), else 3x3x3."""
    strides = level_strides(mode)
    r = strides[2]
    return [
        (1, 3, 3) if r[0] // s[0] < r[1] // s[1] else (3, 3, 3)
        for s in strides[:2]  # x0, x1; R and below are isotropic
    ] + [(3, 3, 3)] * 3


def size_multiple(mode: int) -> Triple:
    """What each input axis (D, H, W) must be divisible by: the stride of e4."""
    return level_strides(mode)[-1]


def check_input_size(shape: Sequence[int], mode: int) -> None:
    """Raise ``ValueError`` unless ``shape`` (D, H, W) suits ``resolution_mode`` ``mode``."""
    multiple = size_multiple(mode)
    if len(shape) != 3 or any(s % m or s < m for s, m in zip(shape, multiple, strict=True)):
        raise ValueError(
            f"PCT-Net (resolution_mode {mode}) needs a (D, H, W) input with each side a "
            f"multiple of {multiple}, got {tuple(shape)}"
        )


def scaled_channels(channels: Sequence[int], width: float, num_heads: Sequence[int]) -> list[int]:
    """``round(c * width)`` (>= 1); the Swin levels (last 3) rounded up to a multiple of heads."""
    out = [max(1, int(round(c * width))) for c in channels]
    for i, heads in enumerate(num_heads, start=len(out) - len(num_heads)):
        out[i] = int(math.ceil(out[i] / heads) * heads)
    return out


def _padding(kernel: Triple) -> Triple:
    """'Same' padding of an odd kernel."""
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


# --- convolutional parts ----------------------------------------------------------------------
class ConvBlock(nn.Sequential):
    """BN -> PReLU -> Conv -> BN -> PReLU -> Dropout -> Conv (no residual), as in PCT-Net."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: Triple = (3, 3, 3), dropout: float = 0.0
    ) -> None:
        pad = _padding(kernel)
        super().__init__(
            nn.BatchNorm3d(in_ch),
            nn.PReLU(),
            nn.Conv3d(in_ch, out_ch, kernel, padding=pad),
            nn.BatchNorm3d(out_ch),
            nn.PReLU(),
            nn.Dropout(dropout),
            nn.Conv3d(out_ch, out_ch, kernel, padding=pad),
        )


class Down(nn.Sequential):
    """Max-pool by ``stride`` then a conv that changes the channel count; with ``preact`` a
    BN -> PReLU before the conv, as MIS-FM's ``DownSample`` (published PCT-Net weights)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: Triple, kernel: Triple, preact: bool = False
    ) -> None:
        act = [nn.BatchNorm3d(in_ch), nn.PReLU()] if preact else []
        super().__init__(
            nn.MaxPool3d(stride, stride),
            *act,
            nn.Conv3d(in_ch, out_ch, kernel, padding=_padding(kernel)),
        )


class Up(nn.Module):
    """BN -> PReLU -> ConvTranspose(stride) -> concat skip -> BN -> PReLU -> Conv."""

    def __init__(self, in_ch: int, out_ch: int, stride: Triple, kernel: Triple) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.BatchNorm3d(in_ch), nn.PReLU(), nn.ConvTranspose3d(in_ch, out_ch, stride, stride)
        )
        self.fuse = nn.Sequential(
            nn.BatchNorm3d(2 * out_ch),
            nn.PReLU(),
            nn.Conv3d(2 * out_ch, out_ch, kernel, padding=_padding(kernel)),
        )

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """(B, C_in, s) and skip (B, C_out, s * stride) -> (B, C_out, s * stride)."""
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


# --- PCT block --------------------------------------------------------------------------------
class PCTBlock(nn.Module):
    """Parallel convolution + transformer: ``ConvBlock(x) + SwinLayer(x)``, same shape."""

    def __init__(
        self,
        dim: int,
        dropout: float,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        self.conv = ConvBlock(dim, dim, (3, 3, 3), dropout)
        self.swin = SwinLayer3d(dim, depth, num_heads, window_size, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.swin(x)


# --- networks ---------------------------------------------------------------------------------
def _check_lengths(**values: tuple[Sequence, int]) -> None:
    for name, (seq, n) in values.items():
        if len(seq) != n:
            raise ValueError(f"{name} needs {n} values, got {list(seq)}")


class PCTNetEncoder(nn.Module):
    """PCT-Net encoder: ``forward`` -> pooled (B, out_dim), ``features`` -> [x0, x1, e2, e3, e4].

    Args:
        in_channels: image channels.
        feature_channels: channels of x0, x1, e2, e3, e4 at ``width`` 1.
        dropout: ``ConvBlock`` dropout per level (the decoder reuses it).
        depths, num_heads: Swin blocks and heads at e2, e3, e4.
        window_size: Swin window side (shift ``window_size // 2``).
        resolution_mode: 0 / 1 / 2 for total embedding strides (4,4,4) / (2,4,4) / (1,4,4).
        drop_path: stochastic-depth rate of the last Swin block.
        width: channel multiplier (rounding: docs/rules/pctnet.md).
        spatial_dims: must be 3 (accepted so ``create_backbone(**config)`` round-trips).
        down_preact: BN -> PReLU before each downsampling conv, as MIS-FM's released PCT-Net
            (``medfoundry import --format misfm``); off by default (our pretraining runs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_channels: Sequence[int] = (24, 48, 128, 256, 512),
        dropout: Sequence[float] = (0.0, 0.0, 0.2, 0.2, 0.2),
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 16),
        window_size: int = 6,
        resolution_mode: int = 1,
        drop_path: float = 0.2,
        width: float = 1.0,
        spatial_dims: int = 3,
        down_preact: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"PCT-Net is a 3D network: spatial_dims must be 3, got {spatial_dims}")
        _check_lengths(
            feature_channels=(feature_channels, 5),
            dropout=(dropout, 5),
            depths=(depths, 3),
            num_heads=(num_heads, 3),
        )
        _check_mode(resolution_mode)
        if width <= 0 or window_size < 1:
            raise ValueError(f"width must be > 0 and window_size >= 1, got {width}, {window_size}")
        self.config: dict[str, Any] = {
            "name": "pctnet",
            "in_channels": int(in_channels),
            "feature_channels": [int(c) for c in feature_channels],
            "dropout": [float(p) for p in dropout],
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "window_size": int(window_size),
            "resolution_mode": int(resolution_mode),
            "drop_path": float(drop_path),
            "width": float(width),
            "spatial_dims": 3,
        }
        if down_preact:  # only then: configs of our own runs stay as they were
            self.config["down_preact"] = True
        pre = bool(down_preact)
        ch = scaled_channels(feature_channels, width, num_heads)
        self.feature_channels: list[int] = ch
        self.out_dim: int = ch[-1]
        self.resolution_mode = int(resolution_mode)
        self.strides = level_strides(resolution_mode)
        pool = [*MODE_STRIDES[resolution_mode], (2, 2, 2), (2, 2, 2)]
        k = level_kernels(resolution_mode)
        rates = drop_path_rates(depths, drop_path)
        # embedding
        self.proj = nn.Conv3d(in_channels, ch[0], k[0], padding=_padding(k[0]))
        self.block0 = ConvBlock(ch[0], ch[0], k[0], dropout[0])  # x0
        self.down1 = Down(ch[0], ch[1], pool[0], k[1], pre)
        self.block1 = ConvBlock(ch[1], ch[1], k[1], dropout[1])  # x1
        self.down2 = Down(ch[1], ch[2], pool[1], k[2], pre)  # x2
        # PCT pyramid
        self.pct2 = PCTBlock(ch[2], dropout[2], depths[0], num_heads[0], window_size, rates[0])
        self.down3 = Down(ch[2], ch[3], pool[2], k[3], pre)
        self.pct3 = PCTBlock(ch[3], dropout[3], depths[1], num_heads[1], window_size, rates[1])
        self.down4 = Down(ch[3], ch[4], pool[3], k[4], pre)
        self.pct4 = PCTBlock(ch[4], dropout[4], depths[2], num_heads[2], window_size, rates[2])

    def features(self, x: Tensor) -> list[Tensor]:
        """Maps [x0, x1, e2, e3, e4] of (B, C_i, D/sd_i, H/sh_i, W/sw_i); strides ``strides``."""
        if x.ndim != 5:
            raise ValueError(f"PCT-Net expects (B, C, D, H, W), got shape {tuple(x.shape)}")
        check_input_size(x.shape[2:], self.resolution_mode)
        x0 = self.block0(self.proj(x))  # (B, C0, D, H, W)
        x1 = self.block1(self.down1(x0))
        e2 = self.pct2(self.down2(x1))  # (B, C2, R)
        e3 = self.pct3(self.down3(e2))  # (B, C3, R / 2)
        e4 = self.pct4(self.down4(e3))  # (B, C4, R / 4)
        return [x0, x1, e2, e3, e4]

    def forward(self, x: Tensor) -> Tensor:
        """Global-average-pooled e4 (B, out_dim)."""
        return self.features(x)[-1].flatten(2).mean(-1)


class PCTNetDecoder(nn.Module):
    """PCT-Net decoder without a class head: [x0, x1, e2, e3, e4] -> [y0, y1, d2, d3].

    ``y0`` (C0 channels, full size) feeds the head; ``y1`` (C1), ``d2`` (C2, R) and ``d3``
    (C3, R/2) feed the deep-supervision heads. ``feature_channels`` are the encoder's actual
    (width-scaled) channels; ``PCTNetDecoder.from_config(decoder.config)`` rebuilds it.
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        dropout: Sequence[float] = (0.0, 0.0, 0.2, 0.2, 0.2),
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 16),
        window_size: int = 6,
        resolution_mode: int = 1,
        drop_path: float = 0.2,
    ) -> None:
        super().__init__()
        _check_lengths(
            feature_channels=(feature_channels, 5),
            dropout=(dropout, 5),
            depths=(depths, 3),
            num_heads=(num_heads, 3),
        )
        _check_mode(resolution_mode)
        ch = [int(c) for c in feature_channels]
        self.config: dict[str, Any] = {
            "type": "pctnet",
            "feature_channels": ch,
            "dropout": [float(p) for p in dropout],
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "window_size": int(window_size),
            "resolution_mode": int(resolution_mode),
            "drop_path": float(drop_path),
        }
        pool = [*MODE_STRIDES[resolution_mode], (2, 2, 2), (2, 2, 2)]
        k = level_kernels(resolution_mode)
        rates = drop_path_rates(depths, drop_path)  # each block mirrors its encoder level
        self.up3 = Up(ch[4], ch[3], pool[3], k[3])
        self.pct3 = PCTBlock(ch[3], dropout[3], depths[1], num_heads[1], window_size, rates[1])
        self.up2 = Up(ch[3], ch[2], pool[2], k[2])
        self.pct2 = PCTBlock(ch[2], dropout[2], depths[0], num_heads[0], window_size, rates[0])
        self.up1 = Up(ch[2], ch[1], pool[1], k[1])
        self.block1 = ConvBlock(ch[1], ch[1], k[1], dropout[1])
        self.up0 = Up(ch[1], ch[0], pool[0], k[0])
        self.block0 = ConvBlock(ch[0], ch[0], k[0], dropout[0])

    @classmethod
    def from_encoder(cls, encoder: PCTNetEncoder) -> PCTNetDecoder:
        """The decoder that mirrors ``encoder``."""
        cfg = encoder.config
        return cls(
            encoder.feature_channels,
            **{k: cfg[k] for k in ("dropout", "depths", "num_heads", "window_size")},
            resolution_mode=cfg["resolution_mode"],
            drop_path=cfg["drop_path"],
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PCTNetDecoder:
        """Rebuild from ``decoder.config`` (as stored in checkpoint metadata)."""
        cfg = dict(config)
        kind = cfg.pop("type", "pctnet")
        if kind != "pctnet":
            raise ValueError(f"not a PCT-Net decoder config (type {kind!r})")
        return cls(**cfg)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        x0, x1, e2, e3, e4 = features
        d3 = self.pct3(self.up3(e4, e3))  # (B, C3, R / 2)
        d2 = self.pct2(self.up2(d3, e2))  # (B, C2, R)
        y1 = self.block1(self.up1(d2, x1))  # (B, C1, x1's size)
        y0 = self.block0(self.up0(y1, x0))  # (B, C0, D, H, W)
        return [y0, y1, d2, d3]


def _head(in_ch: int, num_classes: int) -> nn.Sequential:
    """BN -> PReLU -> 1x1 conv to class logits."""
    return nn.Sequential(nn.BatchNorm3d(in_ch), nn.PReLU(), nn.Conv3d(in_ch, num_classes, 1))


class PCTNet(nn.Module):
    """Segmentation network: ``forward(x)`` -> logits (B, num_classes, *x.shape[2:]).

    With ``deep_supervision`` and in training mode it returns [main, aux_y1, aux_d2, aux_d3],
    each upsampled (trilinear) to the input size; weigh them with
    ``methods.losses.deep_supervision_loss``.
    """

    def __init__(
        self, encoder: PCTNetEncoder, num_classes: int, deep_supervision: bool = False
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.encoder = encoder
        self.decoder = PCTNetDecoder.from_encoder(encoder)
        ch = encoder.feature_channels
        self.head = _head(ch[0], num_classes)
        self.deep_supervision = bool(deep_supervision)
        self.aux_heads = nn.ModuleList(
            [_head(c, num_classes) for c in ch[1:4]] if deep_supervision else []
        )
        self.num_classes = int(num_classes)
        self.config: dict[str, Any] = {
            "backbone": dict(encoder.config),
            "num_classes": self.num_classes,
            "deep_supervision": self.deep_supervision,
            "decoder": dict(self.decoder.config),
        }

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        y0, *levels = self.decoder(self.encoder.features(x))
        main = self.head(y0)  # (B, K, D, H, W)
        if not (self.deep_supervision and self.training):
            return main
        size = tuple(x.shape[2:])
        aux = [
            F.interpolate(head(y), size=size, mode="trilinear", align_corners=False)
            for head, y in zip(self.aux_heads, levels, strict=True)
        ]
        return [main, *aux]


__all__ = [
    "MODE_STRIDES",
    "PCTNET_BACKBONES",
    "PCTNet",
    "PCTNetDecoder",
    "PCTNetEncoder",
    "check_input_size",
    "level_strides",
    "size_multiple",
]
