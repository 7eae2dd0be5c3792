"""MONAI's 3D SwinUNETR split into ``encoder`` / ``decoder`` / ``head``, so checkpoints load.

``SwinViT3D`` is MONAI's ``SwinTransformer`` (the ``swinViT`` of ``SwinUNETR``, VoCo's and the
Swin-UNETR SSL backbone) with the backbone interface (``forward -> (B, 16 * feature_size)``,
``features -> 5 maps``, ``config``); its state-dict keys are MONAI's ``swinViT.*`` keys without
the prefix. ``SwinUNETRNet`` is ``SwinUNETR``: ``.encoder`` is the ``SwinViT3D``, ``.decoder``
holds the UNETR convolutional blocks (``encoder1..4``, ``encoder10``, which VoCo also pretrains)
and the up-path (``decoder5..1``), ``.head`` the 1x1 output block; the forward pass is
SwinUNETR's (``normalize=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.nets.swin_unetr import SwinTransformer, SwinUNETR
from torch import Tensor, nn

SWINVIT3D_BACKBONES: tuple[str, ...] = ("swinvit3d",)


class SwinViT3D(SwinTransformer):
    """MONAI's 3D Swin transformer as a backbone: ``features`` -> 5 maps at strides 2..32."""

    def __init__(
        self,
        name: str = "swinvit3d",
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        patch_size: int = 2,
        use_v2: bool = False,
        drop_path: float = 0.0,
        spatial_dims: int = 3,
    ) -> None:
        if name not in SWINVIT3D_BACKBONES or spatial_dims != 3:
            raise ValueError(f"SwinViT3D is the 3D 'swinvit3d', got {name!r}, {spatial_dims}D")
        super().__init__(
            in_chans=int(in_channels),
            embed_dim=int(feature_size),
            window_size=(int(window_size),) * 3,
            patch_size=(int(patch_size),) * 3,
            depths=[int(d) for d in depths],
            num_heads=[int(h) for h in num_heads],
            drop_path_rate=float(drop_path),
            spatial_dims=3,
            use_v2=bool(use_v2),
        )
        self.config: dict[str, Any] = {
            "name": name,
            "in_channels": int(in_channels),
            "feature_size": int(feature_size),
            "depths": [int(d) for d in depths],
            "num_heads": [int(h) for h in num_heads],
            "window_size": int(window_size),
            "patch_size": int(patch_size),
            "use_v2": bool(use_v2),
            "drop_path": float(drop_path),
            "spatial_dims": 3,
        }
        self.feature_channels: list[int] = [int(feature_size) * 2**i for i in range(5)]
        self.out_dim: int = self.feature_channels[-1]

    def features(self, x: Tensor) -> list[Tensor]:
        """Normalised maps [(B, F * 2**i, D / 2**(i+1), H / ..., W / ...)] for i = 0..4."""
        return list(super().forward(x, True))

    def forward(self, x: Tensor, normalize: bool = True) -> Tensor:  # type: ignore[override]
        """Global-average-pooled last map (B, 16 * feature_size)."""
        return self.features(x)[-1].flatten(2).mean(-1)


class SwinUNETRDecoder(nn.Module):
    """SwinUNETR's convolutional blocks: the UNETR skips (``encoder1..4``, ``encoder10``) and
    the up-path (``decoder5..1``), taken from a MONAI ``SwinUNETR`` under MONAI's names."""

    NAMES = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10") + tuple(
        f"decoder{i}" for i in (5, 4, 3, 2, 1)
    )

    def __init__(self, net: SwinUNETR, config: dict[str, Any]) -> None:
        super().__init__()
        for name in self.NAMES:
            self.add_module(name, getattr(net, name))
        self.config = dict(config)

    def forward(self, image: Tensor, hidden: Sequence[Tensor]) -> Tensor:
        """``image`` (B, C, D, H, W) and the 5 encoder maps -> (B, feature_size, D, H, W)."""
        enc0 = self.encoder1(image)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        dec3 = self.decoder5(dec4, hidden[3])
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.decoder1(dec0, enc0)


def _monai_names(module: nn.Module, state: dict, prefix: str, *args: Any) -> None:
    """Accept a plain MONAI ``SwinUNETR`` state dict (``swinViT.*``, ``encoder1.*``, ``out.*``:
    fine-tuned before this split) by renaming its keys in place."""
    for key in [k for k in state if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        top = rest.split(".", 1)[0]
        if top == "swinViT":
            state[prefix + "encoder." + rest.split(".", 1)[1]] = state.pop(key)
        elif top in SwinUNETRDecoder.NAMES:
            state[prefix + "decoder." + rest] = state.pop(key)
        elif top == "out":
            state[prefix + "head." + rest.split(".", 1)[1]] = state.pop(key)


class SwinUNETRNet(nn.Module):
    """MONAI SwinUNETR with ``encoder`` (``SwinViT3D``), ``decoder`` and ``head``."""

    def __init__(self, encoder: SwinViT3D, num_classes: int) -> None:
        super().__init__()
        cfg = encoder.config
        net = SwinUNETR(
            in_channels=cfg["in_channels"],
            out_channels=int(num_classes),
            patch_size=cfg["patch_size"],
            depths=tuple(cfg["depths"]),
            num_heads=tuple(cfg["num_heads"]),
            window_size=cfg["window_size"],
            feature_size=cfg["feature_size"],
            use_v2=cfg["use_v2"],
            spatial_dims=3,
        )
        self.encoder = encoder
        self.decoder = SwinUNETRDecoder(net, {"type": "swinunetr"})
        self.head = net.out
        self.num_classes = int(num_classes)
        self.register_load_state_dict_pre_hook(_monai_names)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> logits (B, num_classes, D, H, W); sides multiples of 32."""
        return self.head(self.decoder(x, self.encoder.features(x)))


__all__ = ["SWINVIT3D_BACKBONES", "SwinUNETRDecoder", "SwinUNETRNet", "SwinViT3D"]
