"""2D Swin Transformer encoder with the project's backbone interface (VIS-MAE's backbone).

``create_backbone("swin", in_channels=1)`` is VIS-MAE's Swin-T-width encoder: patch 4 (Conv4x4
+ LayerNorm), embed 96, depths (2, 2, 2, 2), heads (3, 6, 12, 24), window 7, MLP ratio 4, qkv
bias, stochastic depth 0.1, LayerNorm eps 1e-6, relative position bias and no absolute position
embedding. ``"swin_t"`` is standard Swin-T depth (2, 2, 6, 2). Explicit arguments override the
preset of the name, and ``create_backbone(**backbone.config)`` rebuilds the same network.

Differences from the VIS-MAE encoder: a final LayerNorm on the stride-32 map (the map that is
pooled and handed to decoders; the reference has none, SimMIM and Swin-Unet do), and windows are
padded with padded keys masked (see ``swin_blocks``), so any input side that is a multiple of
``patch_size`` works; odd maps are padded by ``PatchMerging``. Sizes that keep the decoders
exact (no cropping) are multiples of ``patch_size * 2**(stages - 1)`` (32 for 4 stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets.swin_unetr import PatchMerging
from torch import Tensor, nn

from medfoundry.nets.swin_blocks import (
    LayerNorm,
    PatchEmbed,
    SwinStage,
    apply_mask_token,
    drop_path_rates,
    init_swin_weights,
)

# name -> architecture preset (any key can be overridden by an argument)
SWIN_BACKBONES: dict[str, dict[str, Any]] = {
    "swin": {"embed_dim": 96, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},  # VIS-MAE
    "swin_t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
}


class SwinBackbone(nn.Module):
    """Swin encoder: ``forward`` -> pooled (B, D), ``features`` -> one map per stage.

    The maps have strides ``patch_size * 2**i`` (4, 8, 16, 32) and channels ``embed_dim * 2**i``;
    each is its stage's output before patch merging (the last one after the final LayerNorm),
    so a U-Net / Swin-UNet decoder can use them as skips.

    Args:
        name: preset (``SWIN_BACKBONES``) supplying the defaults of embed_dim/depths/num_heads.
        in_channels: image channels (1 for grayscale; VIS-MAE replicated gray to 3).
        window_size: attention window side in tokens (7).
        patch_size: pixels per token side (4).
        drop_path: stochastic depth rate of the last block (linear from 0).
        use_checkpoint: gradient checkpointing in every block (less memory, ~30% slower).
        spatial_dims: must be 2 (accepted so ``create_backbone(**config)`` round-trips).
        final_norm: the final LayerNorm on the last map; False (identity) reproduces the
            published VIS-MAE encoder (``medfoundry import --format vis_mae``).
    """

    def __init__(
        self,
        name: str = "swin",
        in_channels: int = 1,
        embed_dim: int | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        window_size: int = 7,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        qkv_bias: bool = True,
        use_checkpoint: bool = False,
        spatial_dims: int = 2,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if name not in SWIN_BACKBONES:
            raise ValueError(
                f"unknown Swin backbone {name!r}; choose from {sorted(SWIN_BACKBONES)}"
            )
        if spatial_dims != 2:
            raise ValueError(f"SwinBackbone is 2D only, got spatial_dims={spatial_dims}")
        preset = SWIN_BACKBONES[name]
        embed_dim = int(embed_dim if embed_dim is not None else preset["embed_dim"])
        depths = [int(d) for d in (depths if depths is not None else preset["depths"])]
        num_heads = [int(h) for h in (num_heads if num_heads is not None else preset["num_heads"])]
        if len(depths) != len(num_heads) or not depths:
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have equal length")
        self.config: dict[str, Any] = {
            "name": name,
            "in_channels": int(in_channels),
            "embed_dim": embed_dim,
            "depths": depths,
            "num_heads": num_heads,
            "window_size": int(window_size),
            "patch_size": int(patch_size),
            "mlp_ratio": float(mlp_ratio),
            "drop_path": float(drop_path),
            "qkv_bias": bool(qkv_bias),
            "use_checkpoint": bool(use_checkpoint),
            "spatial_dims": 2,
        }
        if not final_norm:  # only then: configs of our own runs stay as they were
            self.config["final_norm"] = False
        self.in_channels = int(in_channels)
        self.embed_dim = embed_dim
        self.depths, self.num_heads = depths, num_heads
        self.window_size, self.patch_size = int(window_size), int(patch_size)
        self.mlp_ratio = float(mlp_ratio)

        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch_size)
        rates = drop_path_rates(depths, drop_path)
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, window_size, mlp_ratio, qkv_bias, rate, use_checkpoint)
            for dim, depth, heads, rate in zip(dims, depths, num_heads, rates, strict=True)
        )
        # MONAI's 2D PatchMerging: 2x2 neighbours concatenated, LN(4C), Linear(4C -> 2C, no bias)
        self.downsamples = nn.ModuleList(
            PatchMerging(dim, norm_layer=LayerNorm, spatial_dims=2) for dim in dims[:-1]
        )
        self.norm: nn.Module = LayerNorm(dims[-1]) if final_norm else nn.Identity()
        self.feature_channels: list[int] = dims
        self.feature_strides: list[int] = [patch_size * 2**i for i in range(len(dims))]
        self.out_dim: int = dims[-1]
        self.apply(init_swin_weights)

    def embed(
        self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        """Patch tokens (B, H/p, W/p, D) after Conv+LN; masked tokens replaced by ``mask_token``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W) images, got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"image size {h}x{w} must be a multiple of patch_size {self.patch_size}"
            )
        tokens = self.patch_embed(x)  # (B, h, w, D)
        if mask is None:
            return tokens
        if mask_token is None:
            raise ValueError("a token mask needs a mask_token")
        if mask.shape != tokens.shape[:3]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tokens.shape[:3]}")
        return apply_mask_token(tokens, mask, mask_token)

    def features(
        self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> list[Tensor]:
        """Stage outputs [(B, C_i, H/s_i, W/s_i)], strides 4, 8, 16, 32 for the defaults.

        With ``mask`` (B, H/p, W/p) (True = masked) and ``mask_token`` (D,), the masked patch
        tokens are replaced right after patch embedding + LN (VIS-MAE / SimMIM pretraining).
        """
        t = self.embed(x, mask, mask_token)
        maps = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            t = layer(t)  # (B, h_i, w_i, C_i)
            if i < last:
                maps.append(t)
                t = self.downsamples[i](t)
            else:
                maps.append(self.norm(t))
        return [m.permute(0, 3, 1, 2) for m in maps]  # channels-first views

    def forward(self, x: Tensor) -> Tensor:
        """Global-average-pooled embedding (B, D) of the normalised last map."""
        return self.features(x)[-1].mean(dim=(2, 3))

    @property
    def num_layers(self) -> int:
        """Depth L for layer-wise lr decay: ids 0 (patch embedding) .. L (final norm)."""
        return sum(self.depths) + 1

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay id of parameter ``name`` (as in ``self.named_parameters()``).

        MAE/BEiT numbering over the blocks of all stages: patch embedding 0, block j of stage i
        ``sum(depths[:i]) + j + 1``, the patch merging after stage i the id of that stage's last
        block, the final norm ``num_layers``. Unknown names raise (a renamed module must not
        silently get some lr)."""
        parts = name.split(".")
        if parts[0] == "patch_embed":
            return 0
        if parts[0] == "layers" and len(parts) > 3 and parts[2] == "blocks":
            return sum(self.depths[: int(parts[1])]) + int(parts[3]) + 1
        if parts[0] == "downsamples":
            return sum(self.depths[: int(parts[1]) + 1])
        if parts[0] == "norm":
            return self.num_layers
        raise ValueError(f"SwinBackbone.layer_id: no layer for parameter {name!r}")


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (tensors that require grad or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["SWIN_BACKBONES", "SwinBackbone", "count_parameters"]
