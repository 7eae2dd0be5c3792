"""VIS-MAE: a Swin masked autoencoder (SimMIM-style mask tokens, Swin-Unet pixel decoder).

Per image, 75% of the 4x4-token (16-pixel) mask units are masked; masked patch tokens are
replaced by one learned mask token right after patch embedding + LN, the Swin encoder processes
every token, a no-skip Swin-Unet decoder predicts ``patch x patch x C`` pixels per stride-4 token,
and the loss is the MSE on masked tokens only (``masked_patch_mse``).

Differences from the reference (``lzl199704/VIS-MAE`` = ``Zian-Xu/Swin-MAE``), on purpose:

* any number of input channels (the reference hard-coded 3 and replicated gray images);
* one vectorised mask for the batch (the reference looped over samples with ``setdiff1d``);
* ``param_groups`` leaves norms, biases, the mask token and the relative-position-bias tables
  out of weight decay (the reference decayed every parameter; MAE and Swin do not);
* the encoder's final LayerNorm is applied before the decoder (the reference has none), so the
  map a downstream decoder or pooled head sees is the one that was pretrained;
* ``update=False`` (validation) draws its masks from a fixed seed unless a generator is given,
  so validation losses of different epochs are measured on the same masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medfoundry.methods.signals import embedding_signals
from medfoundry.methods.spec import MethodSpec, Panel
from medfoundry.nets.decay import no_weight_decay
from medfoundry.nets.swin import SwinBackbone
from medfoundry.nets.swin_decoder import SwinDecoder, image_to_tokens, tokens_to_image
from medfoundry.pretext.masking import block_mask

NORM_PIX_EPS = 1e-6  # MAE's epsilon for the per-patch variance


def masked_patch_mse(
    pred: Tensor, target: Tensor, mask: Tensor, patch_size: int, norm_pix_loss: bool = False
) -> Tensor:
    """MSE per token (mean over its p*p*C values), averaged over masked tokens only.

    Args:
        pred, target: (B, C, H, W) images.
        mask: (B, H/p, W/p), True (or 1) = masked; unmasked tokens do not enter the loss.
        norm_pix_loss: normalise each target patch by its own mean and (unbiased) variance,
            as MAE does; the prediction is compared with the normalised patch.
    """
    p_tok = image_to_tokens(pred, patch_size)  # (B, h, w, p*p*C)
    t_tok = image_to_tokens(target, patch_size)
    if norm_pix_loss:
        mean = t_tok.mean(dim=-1, keepdim=True)
        var = t_tok.var(dim=-1, keepdim=True)
        t_tok = (t_tok - mean) / (var + NORM_PIX_EPS).sqrt()
    per_token = (p_tok.float() - t_tok.float()).pow(2).mean(dim=-1)  # (B, h, w)
    w = mask.to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp_min(1.0)


class MaskedAutoencoder(nn.Module):
    """VIS-MAE pretraining model: ``forward(images) -> {"loss", "masked_fraction", ...}``.

    Args:
        backbone: a ``SwinBackbone`` (its ``in_channels`` sets the predicted channels).
        mask_ratio: fraction of mask units masked per image (0.75).
        mask_unit: mask-unit side in tokens (4 tokens of 4 px = 16 px).
        norm_pix_loss: per-patch normalised targets (off in VIS-MAE).
        decoder_depths: Swin blocks per decoder stage, coarse to fine ((2, 2, 2)).
        decoder_heads: heads per decoder stage (default: the encoder's, mirrored).
        decoder_drop_path: stochastic depth in the decoder (0).
        val_seed: seed of the masks drawn when ``update=False`` and no generator is passed.
        flip_prob: chance of a horizontal flip per training image (VIS-MAE's only augmentation;
            0 for lateralised images where flips are unwanted).
    """

    def __init__(
        self,
        backbone: SwinBackbone,
        mask_ratio: float = 0.75,
        mask_unit: int = 4,
        norm_pix_loss: bool = False,
        decoder_depths: Sequence[int] = (2, 2, 2),
        decoder_heads: Sequence[int] | None = None,
        decoder_drop_path: float = 0.0,
        val_seed: int = 0,
        flip_prob: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        n_stages = len(backbone.depths)
        if len(decoder_depths) != n_stages - 1:
            raise ValueError(
                f"decoder_depths needs {n_stages - 1} stages for a {n_stages}-stage encoder, "
                f"got {list(decoder_depths)}"
            )
        self.mask_ratio = float(mask_ratio)
        self.mask_unit = int(mask_unit)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.val_seed = int(val_seed)
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.flip_prob = float(flip_prob)
        self.backbone = backbone
        heads = decoder_heads
        if heads is None:
            heads = list(reversed(backbone.num_heads[: n_stages - 1]))
        self.decoder = SwinDecoder(
            embed_dim=backbone.embed_dim,
            out_channels=backbone.in_channels,
            depths=decoder_depths,
            num_heads=heads,
            window_size=backbone.window_size,
            patch_size=backbone.patch_size,
            mlp_ratio=backbone.mlp_ratio,
            drop_path=decoder_drop_path,
            skips=False,
        )
        self.mask_token = nn.Parameter(torch.zeros(backbone.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)

    # --- masks ----------------------------------------------------------------------------------
    def token_grid(self, images: Tensor) -> tuple[int, int]:
        """(H/p, W/p); raises unless the images tile into whole mask units."""
        p, u = self.backbone.patch_size, self.mask_unit
        h, w = images.shape[-2:]
        if h % (p * u) or w % (p * u):
            raise ValueError(
                f"image size {h}x{w} must be a multiple of patch_size * mask_unit = {p * u}"
            )
        return h // p, w // p

    def draw_mask(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A fresh block mask (B, H/p, W/p) bool on the images' device (True = masked)."""
        return block_mask(
            images.shape[0],
            self.token_grid(images),
            self.mask_unit,
            self.mask_ratio,
            generator=generator,
            device=images.device,
        )

    # --- forward --------------------------------------------------------------------------------
    def predict(self, images: Tensor, mask: Tensor) -> Tensor:
        """Reconstruction (B, C, H, W) of ``images`` with the tokens under ``mask`` hidden."""
        feats = self.backbone.features(images, mask=mask, mask_token=self.mask_token)
        return self.decoder(feats)

    def forward(
        self, images: Tensor, update: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss and statistics for a batch of images (B, C, H, W).

        MAE keeps no state besides its parameters, so ``update`` only selects the masks: a
        random draw for training, a fixed-seed draw for validation (``update=False``).
        """
        if not update and generator is None:
            generator = torch.Generator(device=images.device).manual_seed(self.val_seed)
        if update and self.flip_prob > 0:
            dev = generator.device if generator is not None else images.device
            flip = torch.rand(images.shape[0], generator=generator, device=dev) < self.flip_prob
            flip = flip.to(images.device)[:, None, None, None]  # (B, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
        mask = self.draw_mask(images, generator)  # (B, h, w) bool
        feats = self.backbone.features(images, mask=mask, mask_token=self.mask_token)
        pred = self.decoder(feats)
        loss = masked_patch_mse(pred, images, mask, self.backbone.patch_size, self.norm_pix_loss)
        with torch.no_grad():
            visible = masked_patch_mse(
                pred.detach(), images, ~mask, self.backbone.patch_size, self.norm_pix_loss
            )
        return {
            "loss": loss,
            "masked_fraction": mask.float().mean(),
            "visible_mse": visible,
            **embedding_signals(feats[-1].mean(dim=(2, 3))),  # pooled encoder output (B, D)
        }

    @torch.no_grad()
    def reconstruct(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """For visualisation: (reconstruction (B, C, H, W), pixel mask (B, 1, H, W), 1 = masked).

        With ``norm_pix_loss`` the prediction is per-patch normalised; it is mapped back with
        the true patch mean and std (as the MAE demo does), so only the shapes are predicted.
        """
        mask = self.draw_mask(images, generator)
        pred = self.predict(images, mask)
        p = self.backbone.patch_size
        if self.norm_pix_loss:
            target = image_to_tokens(images, p)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            tokens = image_to_tokens(pred, p) * std + mean
            pred = tokens_to_image(tokens, p, images.shape[1])
        pixel_mask = mask.to(images.dtype).repeat_interleave(p, 1).repeat_interleave(p, 2)
        return pred, pixel_mask[:, None]

    # --- optimisation and export --------------------------------------------------------------
    def no_weight_decay_names(self) -> set[str]:
        """Parameters left out of weight decay: norms, biases (all 1-D), the mask token and
        relative-position-bias tables."""
        return {name for name, param in self.named_parameters() if no_weight_decay(name, param)}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: ``weight_decay`` on weights, 0 on ``no_weight_decay_names``."""
        skip = self.no_weight_decay_names()
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if name in skip else decay).append(param)
        return [
            {"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def export_backbone(self) -> dict[str, Tensor]:
        """The encoder's weights (what downstream tasks fine-tune), detached copies."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def export_decoder(self) -> dict[str, Tensor]:
        """The pixel decoder's weights (to initialise a Swin-UNet decoder), detached copies."""
        return {k: v.detach().clone() for k, v in self.decoder.state_dict().items()}


def build_mae(backbone: nn.Module, **kwargs: Any) -> MaskedAutoencoder:
    """VIS-MAE: a Swin encoder, 16-px mask units at 75 % (learned mask token), Swin decoder."""
    if not hasattr(backbone, "embed_dim"):
        name = getattr(backbone, "config", {}).get("name", type(backbone).__name__)
        raise ValueError(f"mae needs a Swin backbone (e.g. name: swin), got {name!r}")
    return MaskedAutoencoder(backbone, **kwargs)


def _input_size(cfg: Mapping[str, Any]) -> int:
    """The whole loaded image (``data.load_size``): MAE masks it, no views."""
    return int(cfg["data"]["load_size"])


def _checkpoint_extra(cfg: Mapping[str, Any], backbone_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The patch size (what the decoder's pixels per token follow) and the ``mae`` section."""
    return {"patch_size": int(backbone_cfg.get("patch_size", 4)), "mae": dict(cfg.get("mae", {}))}


SPEC = MethodSpec(
    name="mae",
    order=40,
    factory=build_mae,
    input_size=_input_size,
    checkpoint_extra=_checkpoint_extra,
    loss_title="MSE on masked pixels (dots: validation)",
    curve_panels=(Panel("MSE on visible pixels", (("train/visible_mse_step", "-"),)),),
)
