"""Swin Transformer building blocks (2D, channels-last) shared by the encoder and decoders.

MONAI's ``SwinTransformerBlock``/``WindowAttention`` (relative position bias, qkv bias, MLP,
stochastic depth) and ``PatchMerging`` are reused. Two things are replaced, on purpose:

* MONAI's ``BasicLayer`` merges *inside* the stage,
  so the pre-merge map a U-Net needs is not available; ``SwinStage`` is the thin replacement.
* MONAI's block shrinks the window to a feature map smaller than it and then indexes the
  relative-position table as if the window were full (wrong biases), and it lets padded tokens
  take part in attention. ``SwinBlock`` always attends over full windows and masks padded keys,
  so the output does not depend on how much padding a size needs: any token grid works, the
  relative biases stay correct, and the weights are the same at every input size.

``apply_mask_token`` puts the masked-image-modelling mask token in place of masked tokens (the
masks themselves are ``pretext.masking``'s). The 3D blocks are in ``swin_blocks3d``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, window_partition, window_reverse
from torch import Tensor, nn

# VIS-MAE / Swin-MAE use LayerNorm(eps=1e-6) everywhere.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)
_MASKED = -100.0  # additive attention bias between tokens that must not see each other (Swin)


def effective_shift(hw: tuple[int, int], window: Sequence[int], shift: Sequence[int]) -> tuple:
    """Shift per axis, 0 along an axis that fits in one window (shifting it changes nothing)."""
    return tuple(
        0 if size <= win else int(s) for size, win, s in zip(hw, window, shift, strict=True)
    )


def window_attention_mask(
    hw: tuple[int, int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> Tensor | None:
    """Additive mask (nW, n, n) for windows of a (H, W) map padded to whole windows.

    Two tokens may attend to each other only if they come from the same region of the cyclic
    shift (as in Swin) and are both real or both padding. None when nothing needs masking.
    """
    (h, w), (wh, ww) = hw, window
    hp, wp = h + (-h) % wh, w + (-w) % ww
    if not any(shift) and (hp, wp) == (h, w):
        return None

    def axis(size: int, padded: int, win: int, s: int) -> tuple[Tensor, Tensor]:
        i = torch.arange(padded, device=device)  # position in the rolled, padded map
        region = (i >= padded - win).long() + (i >= padded - s).long() if s else i * 0
        is_pad = (i + s) % padded >= size  # position before the roll
        return region, is_pad

    rh, ph = axis(h, hp, wh, shift[0])
    rw, pw = axis(w, wp, ww, shift[1])
    label = rh[:, None] * 3 + rw[None, :] + 9 * (ph[:, None] | pw[None, :]).long()  # (Hp, Wp)
    windows = window_partition(label[None, :, :, None], tuple(window)).squeeze(-1)  # (nW, n)
    differ = windows[:, None, :] != windows[:, :, None]  # (nW, n, n)
    return differ.float() * _MASKED


class SwinBlock(SwinTransformerBlock):
    """MONAI's Swin block with full windows, padding and masked padded keys; (B, H, W, C)."""

    def forward_part1(self, x: Tensor, mask_matrix: Tensor | None) -> Tensor:
        b, h, w, c = x.shape
        ws = tuple(self.window_size)
        shift = effective_shift((h, w), ws, self.shift_size)
        x = self.norm1(x)
        pad_b, pad_r = (-h) % ws[0], (-w) % ws[1]
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, ws)  # (B * nW, n, C)
        out = self.attn(windows, mask=mask_matrix)  # (B * nW, n, C)
        x = window_reverse(out, ws, [b, hp, wp])  # (B, Hp, Wp, C)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :h, :w].contiguous()
        return x


class SwinStage(nn.Module):
    """``depth`` Swin blocks at one resolution, alternating regular and shifted windows."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: Sequence[float] = (),
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        rates = list(drop_path) or [0.0] * depth
        if len(rates) != depth:
            raise ValueError(f"{len(rates)} drop-path rates for {depth} blocks")
        win, half = (window_size, window_size), (window_size // 2, window_size // 2)
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=win,
                shift_size=(0, 0) if i % 2 == 0 else half,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=rates[i],
                norm_layer=LayerNorm,
                use_checkpoint=use_checkpoint,
            )
            for i in range(depth)
        )
        for block in self.blocks:  # MONAI >= 1.6: SDPA when autograd is off; older: no effect
            block.attn.use_flash_attention = True

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        hw = (x.shape[1], x.shape[2])
        masks: dict[tuple, Tensor | None] = {}
        for block in self.blocks:
            shift = effective_shift(hw, block.window_size, block.shift_size)
            if shift not in masks:
                masks[shift] = window_attention_mask(hw, block.window_size, shift, x.device)
            x = block(x, masks[shift])
        return x


class PatchEmbed(nn.Module):
    """Conv ``patch x patch`` / stride ``patch`` then LayerNorm: (B, C, H, W) -> (B, h, w, D)."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, h, w, D)


class PatchExpanding(nn.Module):
    """Swin-Unet up-sampling: Linear(D -> 2D), 2x2 pixel rearrange, LN: (B, h, w, D) ->
    (B, 2h, 2w, D/2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpanding needs an even dim, got {dim}")
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = LayerNorm(dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, -1)  # (B, h, w, 2, 2, D/2)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)
        return self.norm(x)


def apply_mask_token(tokens: Tensor, mask: Tensor, mask_token: Tensor) -> Tensor:
    """Replace masked tokens by ``mask_token``: ``x * (1 - w) + token * w``.

    Args:
        tokens: (B, Ht, Wt, C) channels-last tokens.
        mask: (B, Ht, Wt), bool (True = masked) or float weights ``w`` in [0, 1].
        mask_token: (C,) or broadcastable to (1, 1, 1, C); receives the gradient of the masked
            positions.
    """
    token = mask_token.reshape(1, 1, 1, -1).to(tokens.dtype)
    if mask.dtype == torch.bool:  # one pass, exact; same value and gradients as the blend
        return torch.where(mask.unsqueeze(-1), token, tokens)
    w = mask.unsqueeze(-1).to(tokens.dtype)
    return tokens * (1.0 - w) + token * w


def init_swin_weights(module: nn.Module) -> None:
    """Swin initialisation: Linear ~ trunc-normal(0.02) with zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks, split per stage."""
    flat = torch.linspace(0.0, float(rate), sum(depths)).tolist()
    out, start = [], 0
    for d in depths:
        out.append(flat[start : start + d])
        start += d
    return out
