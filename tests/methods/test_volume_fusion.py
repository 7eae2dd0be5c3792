"""Volume Fusion method: outputs, learning on a fixed batch, stateless validation, exports."""

from __future__ import annotations

import pytest
import torch

from medfoundry.methods import METHODS, VolumeFusion, build_method
from medfoundry.nets import create_backbone
from medfoundry.nets.unet import ResNetUNet

DECODER = (16, 16, 8, 8, 8)


def tiny_backbone() -> torch.nn.Module:
    return create_backbone("resnet10", width=0.125, spatial_dims=3)


def tiny(**kwargs) -> VolumeFusion:
    torch.manual_seed(0)
    return build_method("volume_fusion", tiny_backbone(), decoder_channels=DECODER, **kwargs)


def crops(batch: int = 2, size: int | tuple[int, ...] = 32, seed: int = 0) -> torch.Tensor:
    """Smooth, distinct 3D crops (upsampled noise), so fused regions are recognisable."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 4, 4, 4, generator=g)
    return torch.nn.functional.interpolate(coarse, size=size, mode="trilinear")


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_builds_a_3d_unet_and_rejects_2d() -> None:
    assert "volume_fusion" in METHODS
    model = tiny()
    assert isinstance(model.segmenter, ResNetUNet) and model.num_classes == 5
    assert model.backbone is model.segmenter.encoder
    assert model.fusion.num_classes_fg == 4
    with pytest.raises(ValueError, match="3D backbone"):
        build_method("volume_fusion", create_backbone("resnet10", width=0.125))
    with pytest.raises(ValueError, match="K = "):
        tiny(num_classes=5, fusion={"num_classes_fg": 3})


def test_forward_outputs_and_fused_inputs() -> None:
    model = tiny()
    out = model(crops())
    assert set(out) == {"loss", "dice", "ce", "accuracy"}
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"].requires_grad
    torch.testing.assert_close(out["loss"], 0.5 * out["dice"] + 0.5 * out["ce"])
    assert 0.0 <= out["accuracy"].item() <= 1.0
    fused, labels = model.fuse(crops(), torch.Generator().manual_seed(0))
    assert fused.shape == (2, 1, 32, 32, 32) and labels.shape == (2, 32, 32, 32)
    with pytest.raises(ValueError, match=">= 2"):
        model(crops(batch=1))


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = tiny()
    batch = crops()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # the same fusion every step: a fixed task the network must fit
        out = model(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert out["accuracy"] > 0.3


@pytest.mark.parametrize("train_mode", [True, False])
def test_validation_changes_nothing_and_is_repeatable(train_mode: bool) -> None:
    model = tiny().train(train_mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        a = model(crops(), update=False)["loss"]
        b = model(crops(), update=False)["loss"]
    assert a.item() == b.item()  # fixed-seed pairs and blocks
    assert same_state(model.state_dict(), before)  # BN running statistics untouched
    model.train()
    model(crops(), update=True)
    assert not same_state(model.state_dict(), before)  # training does move the statistics


def test_exports_load_into_fresh_networks() -> None:
    model = tiny()
    model(crops())  # move BN statistics away from their initial values
    encoder = model.export_backbone()
    decoder = model.export_decoder()
    fresh = ResNetUNet(tiny_backbone(), num_classes=3, decoder_channels=DECODER)
    fresh.encoder.load_state_dict(encoder, strict=True)
    fresh.decoder.load_state_dict(decoder, strict=True)
    assert same_state(fresh.encoder.state_dict(), model.segmenter.encoder.state_dict())
    assert same_state(fresh.decoder.state_dict(), model.segmenter.decoder.state_dict())
    assert not any(k.startswith("head") for k in decoder)  # the 5-class output layer stays


# --- PCT-Net (MIS-FM's network, deep supervision) -------------------------------------------------
PCT_SIZE = (16, 32, 32)  # (D, H, W): resolution mode 1 needs D % 8 == 0 and H, W % 16 == 0


def tiny_pct_backbone() -> torch.nn.Module:
    return create_backbone("pctnet", width=0.125, window_size=4)


def tiny_pct(**kwargs) -> VolumeFusion:
    torch.manual_seed(0)
    return build_method("volume_fusion", tiny_pct_backbone(), **kwargs)


def test_pctnet_backbone_builds_a_deeply_supervised_pctnet() -> None:
    from medfoundry.nets.pctnet import PCTNet

    model = tiny_pct()
    assert isinstance(model.segmenter, PCTNet) and model.segmenter.deep_supervision
    assert model.backbone is model.segmenter.encoder
    assert not tiny_pct(deep_supervision=False).segmenter.deep_supervision
    with pytest.raises(ValueError, match="decoder_channels must be null"):
        tiny_pct(decoder_channels=[8, 8, 8, 8, 8])
    with pytest.raises(ValueError, match="PCT-Net backbone"):
        build_method("volume_fusion", tiny_backbone(), deep_supervision=True)


def test_pctnet_training_loss_is_deeply_supervised_and_validation_uses_the_main_output() -> None:
    from medfoundry.methods.losses import deep_supervision_weights

    model = tiny_pct()
    batch = crops(size=PCT_SIZE)
    fused, labels = model.fuse(batch, torch.Generator().manual_seed(0))
    torch.manual_seed(1)  # the same dropout / drop-path draws in both forward passes
    out = model(batch, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    outputs = model.segmenter(fused)  # by hand: BN normalises with batch statistics in training
    assert len(outputs) == 4
    terms = [0.5 * d + 0.5 * c for d, c in (model._dice_ce(o, labels) for o in outputs)]
    expected = sum(w * t for w, t in zip(deep_supervision_weights(4), terms, strict=True))
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["dice"] * 0.5 + out["ce"] * 0.5, terms[0].detach())
    assert not torch.allclose(out["loss"], terms[0])  # the aux heads do count
    with torch.no_grad():
        val = model(batch, update=False)
    torch.testing.assert_close(val["loss"], 0.5 * val["dice"] + 0.5 * val["ce"])


def test_pctnet_loss_decreases_on_a_fixed_batch() -> None:
    model = tiny_pct()
    batch = crops(size=PCT_SIZE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):  # the same fusion every step
        out = model(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    assert out["accuracy"] > 0.3


def test_pctnet_exports_save_and_load_completely(tmp_path) -> None:
    from medfoundry.nets.pctnet import PCTNetDecoder
    from medfoundry.tasks.pretrain import _decoder_config
    from medfoundry.zoo import load_backbone, load_decoder, save_checkpoint

    model = tiny_pct()
    model(crops(size=PCT_SIZE))  # move BN statistics away from their initial values
    decoder_cfg = _decoder_config(model)
    assert decoder_cfg == model.segmenter.decoder.config and decoder_cfg["type"] == "pctnet"
    decoder = model.export_decoder()
    assert not any(k.startswith(("head", "aux_heads")) for k in decoder)
    meta = {"method": "volume_fusion", "backbone": model.backbone.config, "decoder": decoder_cfg}
    save_checkpoint(tmp_path / "ck", model.export_backbone(), meta, decoder=decoder)
    torch.manual_seed(1)
    encoder = create_backbone(**model.backbone.config)
    fresh_decoder = PCTNetDecoder.from_config(decoder_cfg)
    enc_report = load_backbone(tmp_path / "ck", encoder)
    dec_report = load_decoder(tmp_path / "ck", fresh_decoder)
    assert enc_report.loaded == enc_report.total_model == enc_report.total_checkpoint
    assert dec_report.loaded == dec_report.total_model == dec_report.total_checkpoint
    assert same_state(encoder.state_dict(), model.segmenter.encoder.state_dict())
    assert same_state(fresh_decoder.state_dict(), model.segmenter.decoder.state_dict())
