"""ResNetUNet: output shapes, encoder checkpoint loading."""

from __future__ import annotations

import pytest
import torch

from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.nets.unet import ResNetUNet
from medfoundry.zoo import load_backbone, save_checkpoint

DEC = (32, 16, 16, 8, 8)


def _unet(name: str = "resnet10", classes: int = 3) -> ResNetUNet:
    return ResNetUNet(create_backbone(name, in_channels=1, width=0.125), classes, DEC)


@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_output_shape_matches_input(hw):
    net = _unet().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *hw))
    assert out.shape == (2, 3, *hw)
    assert torch.isfinite(out).all()


def test_bottleneck_backbone_and_gradients_reach_encoder():
    net = _unet("resnet50", classes=2)
    out = net(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)
    out.mean().backward()
    assert net.encoder.conv1.weight.grad is not None
    assert net.encoder.conv1.weight.grad.abs().sum() > 0


def test_size_not_divisible_by_32_is_refused():
    with pytest.raises(ValueError, match="divisible by 32"):
        _unet()(torch.randn(1, 1, 48, 64))


def test_encoder_loads_checkpoint_and_other_architecture_fails(tmp_path):
    src = create_backbone("resnet10", in_channels=1, width=0.125)
    with torch.no_grad():
        src.conv1.weight.fill_(0.123)
    meta = {"backbone": src.config, "input_size": 64, "method": "test"}
    save_checkpoint(tmp_path / "ok", src.state_dict(), meta)
    net = _unet()
    report = load_backbone(tmp_path / "ok", net.encoder)
    assert report.loaded > 0 and report.loaded == report.total_model
    assert torch.allclose(
        net.encoder.conv1.weight, torch.full_like(net.encoder.conv1.weight, 0.123)
    )

    other = create_backbone("resnet50", in_channels=1, width=0.125)
    save_checkpoint(tmp_path / "other", other.state_dict(), {**meta, "backbone": other.config})
    with pytest.raises(CheckpointError):
        load_backbone(tmp_path / "other", _unet().encoder)
