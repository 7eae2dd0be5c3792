"""VIS-MAE: loss only on masked tokens, norm-pix targets, learning, weight-decay groups."""

from __future__ import annotations

import pytest
import torch

from medfoundry.methods.mae import MaskedAutoencoder, masked_patch_mse
from medfoundry.nets import create_backbone
from medfoundry.pretext.masking import block_mask

TINY = {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4}


def tiny_mae(in_channels: int = 1, **kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    backbone = create_backbone("swin", in_channels=in_channels, drop_path=0.0, **TINY)
    return MaskedAutoencoder(backbone, decoder_depths=(1, 1, 1), **kw)


def blobs(batch: int, channels: int, size: int = 64) -> torch.Tensor:
    """Smooth images (Gaussian blobs): predictable from their visible parts."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(batch, channels, 2, generator=g) * size
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    return 2 * torch.exp(-d2 / (2 * (size / 5) ** 2)) - 1


def test_loss_ignores_unmasked_pixels() -> None:
    pred, target = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    mask = block_mask(2, (8, 8), unit=4, ratio=0.5, generator=torch.Generator().manual_seed(0))
    pixel = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]  # (B, 1, H, W)
    visible_changed = torch.where(pixel, target, torch.randn_like(target))
    masked_changed = torch.where(pixel, target + 1.0, target)
    for norm_pix in (False, True):
        a = masked_patch_mse(pred, target, mask, 4, norm_pix)
        torch.testing.assert_close(a, masked_patch_mse(pred, visible_changed, mask, 4, norm_pix))
    assert masked_patch_mse(pred, masked_changed, mask, 4) != masked_patch_mse(
        pred, target, mask, 4
    )
    exact = ((pred - target) ** 2)[pixel].mean()  # masked tokens, equal sizes: pixel mean
    torch.testing.assert_close(masked_patch_mse(pred, target, mask, 4), exact)


def test_norm_pix_targets_are_per_patch_standardised() -> None:
    target = torch.randn(1, 2, 8, 8) * 3 + 7
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    zero = torch.zeros_like(target)
    # a zero prediction against standardised patches: MSE = mean of z^2 = (n-1)/n (unbiased var)
    n = 4 * 4 * 2
    loss = masked_patch_mse(zero, target, mask, 4, norm_pix_loss=True)
    torch.testing.assert_close(loss, torch.tensor((n - 1) / n), atol=1e-4, rtol=0)
    shifted = masked_patch_mse(zero, target * 10 - 3, mask, 4, norm_pix_loss=True)
    torch.testing.assert_close(loss, shifted, atol=1e-4, rtol=0)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_outputs_and_channels(in_channels: int) -> None:
    model = tiny_mae(in_channels)
    images = blobs(2, in_channels)
    out = model(images)
    assert set(out) == {"loss", "masked_fraction", "visible_mse", "spread", "mean_length"}
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert out["masked_fraction"].item() == pytest.approx(0.75)
    recon, pixel_mask = model.reconstruct(images)
    assert recon.shape == images.shape and pixel_mask.shape == (2, 1, 64, 64)
    assert pixel_mask.mean().item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="mask_unit"):
        model(blobs(1, in_channels, size=40))  # 10 tokens: not whole 4-token units


def test_masked_tokens_get_the_mask_token() -> None:
    """The prediction depends on masked pixels only through the mask token (they are hidden)."""
    model = tiny_mae().eval()
    images = blobs(2, 1)
    g = torch.Generator().manual_seed(0)
    mask = model.draw_mask(images, g)
    pixel = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    with torch.no_grad():
        a = model.predict(images, mask)
        b = model.predict(torch.where(pixel, torch.randn_like(images), images), mask)
    torch.testing.assert_close(a, b)


def test_validation_masks_are_fixed_and_training_masks_vary() -> None:
    model = tiny_mae()
    images = blobs(2, 1)
    with torch.no_grad():
        v1, v2 = model(images, update=False)["loss"], model(images, update=False)["loss"]
        t1, t2 = model(images)["loss"], model(images)["loss"]
    assert v1.item() == v2.item()
    assert t1.item() != t2.item()


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_decreases_on_a_fixed_batch(norm_pix: bool) -> None:
    model = tiny_mae(norm_pix_loss=norm_pix)
    images = blobs(4, 1)
    opt = torch.optim.AdamW(model.param_groups(0.05), lr=2e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(30):  # the same masks every step: a fixed task the model must fit
        out = model(images, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_param_groups_exclude_norms_biases_mask_token_and_bias_tables() -> None:
    model = tiny_mae()
    skip = model.no_weight_decay_names()
    assert "mask_token" in skip
    assert "backbone.patch_embed.norm.weight" in skip
    assert "backbone.layers.0.blocks.0.attn.qkv.bias" in skip
    assert "backbone.layers.0.blocks.0.attn.relative_position_bias_table" in skip
    assert "decoder.norm_up.weight" in skip and "decoder.head.bias" in skip
    assert "backbone.layers.0.blocks.0.attn.qkv.weight" not in skip
    assert "backbone.patch_embed.proj.weight" not in skip
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]} | {id(p) for p in no_decay["params"]}
    assert len(ids) == len(list(model.parameters()))
    assert all(p.ndim >= 2 for p in decay["params"])
    assert not any(p is model.mask_token for p in decay["params"])


def test_exports_match_module_state() -> None:
    model = tiny_mae()
    backbone = model.export_backbone()
    assert set(backbone) == set(model.backbone.state_dict())
    assert "mask_token" not in backbone
    assert set(model.export_decoder()) == set(model.decoder.state_dict())
