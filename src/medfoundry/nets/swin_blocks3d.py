"""Swin Transformer building blocks in 3D (channels-last inside, (B, C, D, H, W) outside).

MONAI's ``SwinTransformerBlock`` (W-MSA then SW-MSA, relative position bias, qkv bias, MLP,
stochastic depth) is reused; MONAI's ``BasicLayer`` is not (it merges inside the stage).
MONAI's block shrinks a window to a map smaller than it (then indexes the relative-position
table as if the window were full) and lets zero padding take part in attention.
``SwinBlock3d`` always attends over full windows, pads every axis to a multiple of the window
and masks the padded keys (``window_mask_3d``), as ``swin_blocks.SwinBlock`` does in 2D, so any
map size works with correct biases. ``SwinLayer3d`` stacks ``depth`` of them, alternating
regular and shifted (window // 2) windows; PCT-Net (``nets.pctnet``) builds on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import SwinTransformerBlock, window_partition, window_reverse
from torch import Tensor, nn

from medfoundry.nets.swin_blocks import effective_shift, init_swin_weights

_MASKED = -100.0  # additive attention bias between tokens that must not see each other (Swin)


def window_mask_3d(
    dhw: Sequence[int], window: Sequence[int], shift: Sequence[int], device: torch.device
) -> Tensor | None:
    """Additive mask (nW, n, n) for windows of a (D, H, W) map padded to whole windows.

    Two tokens may attend to each other only if they lie in the same region of the cyclic
    shift (as in Swin) and are both real or both padding. None when nothing needs masking.
    """
    padded = [s + (-s) % w for s, w in zip(dhw, window, strict=True)]
    if not any(shift) and list(padded) == list(dhw):
        return None
    label = torch.zeros(padded, dtype=torch.long, device=device)  # (Dp, Hp, Wp)
    is_pad = torch.zeros(padded, dtype=torch.bool, device=device)
    for axis, (size, p, win, s) in enumerate(zip(dhw, padded, window, shift, strict=True)):
        i = torch.arange(p, device=device)  # position in the rolled, padded map
        region = (i >= p - win).long() + (i >= p - s).long() if s else torch.zeros_like(i)
        view = [1, 1, 1]
        view[axis] = p
        label = label * 3 + region.view(view)
        is_pad = is_pad | ((i + s) % p >= size).view(view)  # position before the roll
    label = label + 27 * is_pad.long()
    windows = window_partition(label[None, ..., None], tuple(window)).squeeze(-1)  # (nW, n)
    differ = windows[:, None, :] != windows[:, :, None]  # (nW, n, n)
    return differ.float() * _MASKED


class SwinBlock3d(SwinTransformerBlock):
    """MONAI's Swin block over full 3D windows, with padding and masked padded keys;
    (B, D, H, W, C) -> same."""

    def forward_part1(self, x: Tensor, mask_matrix: Tensor | None) -> Tensor:
        b, d, h, w, _ = x.shape
        ws = tuple(self.window_size)
        shift = effective_shift((d, h, w), ws, self.shift_size)
        x = self.norm1(x)
        pad = [(-s) % win for s, win in zip((d, h, w), ws, strict=True)]
        if any(pad):
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        dims = [b, d + pad[0], h + pad[1], w + pad[2]]
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = window_partition(x, ws)  # (B * nW, n, C)
        out = self.attn(windows, mask=mask_matrix)  # (B * nW, n, C)
        x = window_reverse(out, ws, dims)  # (B, Dp, Hp, Wp, C)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        if any(pad):
            x = x[:, :d, :h, :w].contiguous()
        return x


class SwinLayer3d(nn.Module):
    """``depth`` Swin blocks, alternating regular and shifted windows: (B, C, D, H, W) -> same."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        drop_path: Sequence[float] = (),
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        rates = list(drop_path) or [0.0] * depth
        if len(rates) != depth:
            raise ValueError(f"{len(rates)} drop-path rates for {depth} blocks")
        win, half = (window_size,) * 3, (window_size // 2,) * 3
        self.blocks = nn.ModuleList(
            SwinBlock3d(
                dim=dim,
                num_heads=num_heads,
                window_size=win,
                shift_size=(0, 0, 0) if i % 2 == 0 else half,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                drop_path=rates[i],
                use_flash_attention=True,  # MONAI: SDPA when autograd is off
            )
            for i in range(depth)
        )
        self.apply(init_swin_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 4, 1)  # (B, D, H, W, C)
        dhw = tuple(x.shape[1:4])
        masks: dict[tuple, Tensor | None] = {}
        for block in self.blocks:
            shift = effective_shift(dhw, block.window_size, block.shift_size)
            if shift not in masks:
                masks[shift] = window_mask_3d(dhw, block.window_size, shift, x.device)
            x = block(x, masks[shift])
        return x.permute(0, 4, 1, 2, 3).contiguous()  # (B, C, D, H, W)


__all__ = ["SwinBlock3d", "SwinLayer3d", "window_mask_3d"]
