"""Swin-UNet's full-resolution conv skip: off in MAE decoders, on by default in segmentation,
VIS-MAE decoder weights still load by name, and pixel detail reaches the output."""

from __future__ import annotations

import pytest
import torch

from medfoundry.nets import create_backbone
from medfoundry.nets.swin_decoder import SwinDecoder
from medfoundry.nets.swin_unet import DEFAULT_CONV_SKIP, SwinUNet, default_decoder_config

SWIN = {
    "name": "swin",
    "in_channels": 1,
    "embed_dim": 8,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 2,
    "patch_size": 4,
    "drop_path": 0.0,
}


def test_mae_decoder_has_no_conv_parts_and_loads_by_name_into_the_segmentation_decoder():
    backbone = create_backbone(**SWIN)
    mae = SwinDecoder(**{**default_decoder_config(backbone), "out_channels": 1})
    assert "conv_skip" not in mae.config and mae.conv_skip == 0
    assert not any(k.startswith(("conv_stem", "conv_fuse")) for k in mae.state_dict())
    net = SwinUNet(backbone, num_classes=1, decoder_cfg=mae.config)
    assert net.decoder.conv_skip == DEFAULT_CONV_SKIP > 0
    seg = net.decoder.state_dict()
    # every MAE tensor keeps its name and shape (the conv parts and skip fusions are new)
    assert all(k in seg and seg[k].shape == v.shape for k, v in mae.state_dict().items())
    new = {k.split(".")[0] for k in set(seg) - set(mae.state_dict())}
    assert new == {"skip_fuse", "conv_stem", "conv_down", "conv_half", "conv_fuse"}
    missing, unexpected = net.decoder.load_state_dict(mae.state_dict(), strict=False)
    assert not unexpected and {k.split(".")[0] for k in missing} == new


def test_conv_skip_config_round_trip_and_off_switch():
    backbone = create_backbone(**SWIN)
    net = SwinUNet(backbone, num_classes=3)
    cfg = net.config["decoder"]
    assert cfg["conv_skip"] == DEFAULT_CONV_SKIP and cfg["in_channels"] == 1
    again = SwinDecoder(**cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in net.decoder.state_dict().items()
    }
    off = SwinUNet(backbone, num_classes=3, decoder_cfg={**cfg, "conv_skip": 0})
    assert not hasattr(off.decoder, "conv_stem")
    assert off(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="needs the input image"):
        net.decoder(backbone.features(torch.randn(1, 1, 64, 64)))
    with pytest.raises(ValueError, match=">= 0"):
        SwinDecoder(embed_dim=8, conv_skip=-1)


def test_the_conv_skip_is_trained_and_sees_sub_patch_detail():
    """The conv parts get gradients, and the output within one 4x4 patch varies with the image
    inside that patch beyond what the head's per-token prediction can express alone."""
    torch.manual_seed(0)
    net = SwinUNet(create_backbone(**SWIN), num_classes=2)
    net(torch.randn(2, 1, 64, 64)).square().mean().backward()
    assert net.decoder.conv_stem[0][0].weight.grad.abs().sum() > 0
    assert net.decoder.conv_fuse[1].weight.grad.abs().sum() > 0
    net.eval()
    x = torch.randn(1, 1, 64, 64)
    y = x.clone()
    y[0, 0, 21, 22] += 5.0  # one pixel of the patch at token (5, 5)
    with torch.no_grad():
        feats_x, feats_y = net.encoder.features(x), net.encoder.features(y)
        full = net.decoder(feats_y, image=y) - net.decoder(feats_y, image=x)
    assert full[0, :, 21, 22].abs().max() > 0  # the raw pixel reaches its own logit directly
    assert full[0, :, 48:, 48:].abs().max() == 0  # the conv path is local (a few pixels)
    assert not torch.equal(feats_x[0], feats_y[0])
