"""The 3D segmenter registry: every network builds and keeps the shape, names resolve, and one
entry is all a new network needs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import medfoundry.nets.segmenters3d as seg
from medfoundry.errors import MedfoundryError
from medfoundry.nets import create_backbone
from medfoundry.nets.pctnet import PCTNetDecoder
from medfoundry.nets.segmenters3d import (
    Segmenter3D,
    check_patch,
    create_segmenter3d,
    network_for_checkpoint,
    segmenter3d_names,
    size_multiple_of,
)

SMALL = {
    "resnet_unet": {"backbone": {"name": "resnet10", "width": 0.125}, "decoder_channels": [8] * 5},
    "unet": {"features": [4, 4, 8, 8, 16, 4]},
    "swinunetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
}


@pytest.mark.parametrize("name", ["resnet_unet", "unet", "swinunetr"])
def test_every_network_maps_a_patch_to_class_logits_of_its_shape(name):
    torch.manual_seed(0)
    if name == "swinunetr" and importlib.util.find_spec("einops") is None:
        with pytest.raises(MedfoundryError, match="einops"):  # a clear error, not a traceback
            create_segmenter3d(name, in_channels=1, num_classes=3, **SMALL[name])
        return
    net = create_segmenter3d(name, in_channels=1, num_classes=3, **SMALL[name])
    x = torch.randn(2, 1, 32, 64, 32)  # (B, C, D, H, W)
    assert net(x).shape == (2, 3, 32, 64, 32)


def test_pctnet_returns_deep_supervision_outputs_in_training_and_one_in_eval():
    torch.manual_seed(0)
    options = {"backbone": {"name": "pctnet", "width": 0.125, "window_size": 4}}
    net = create_segmenter3d("pctnet", 1, 3, **options)
    x = torch.randn(2, 1, 8, 32, 16)  # (B, C, D, H, W): mode 1 takes D = 8
    outputs = net(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 32, 16)] * 4
    assert net.eval()(x).shape == (2, 3, 8, 32, 16)
    plain = create_segmenter3d("pctnet", 1, 3, **options, deep_supervision=False)
    assert plain.train()(x).shape == (2, 3, 8, 32, 16) and len(plain.aux_heads) == 0
    with pytest.raises(ValueError, match="pctnet backbone"):
        create_segmenter3d("pctnet", 1, 3, backbone={"name": "resnet18"})


def test_size_multiples_are_per_axis():
    assert size_multiple_of("resnet_unet") == (32, 32, 32)
    assert size_multiple_of("unet") == (16, 16, 16)
    assert size_multiple_of("pctnet") == (8, 16, 16)  # PCTNetEncoder's default mode 1
    for mode, multiple in {0: (16, 16, 16), 1: (8, 16, 16), 2: (4, 16, 16)}.items():
        assert size_multiple_of("pctnet", {"backbone": {"resolution_mode": mode}}) == multiple
    check_patch("pctnet", [4, 16, 32], {"backbone": {"resolution_mode": 2}})
    with pytest.raises(ValueError, match=r"\(4, 16, 16\) along \(D, H, W\) \(W = 24 is not\)"):
        check_patch("pctnet", [4, 16, 24], {"backbone": {"resolution_mode": 2}})
    with pytest.raises(ValueError, match="three sides"):
        check_patch("unet", [16, 16])


def test_registry_lists_the_networks_and_rejects_unknown_names():
    assert {"resnet_unet", "pctnet", "unet", "swinunetr"} <= set(segmenter3d_names())
    with pytest.raises(ValueError, match="unknown 3D network"):
        create_segmenter3d("vnet", 1, 3)
    with pytest.raises(ValueError, match="num_classes"):
        create_segmenter3d("unet", 1, 1)


def test_patch_sides_must_suit_the_network():
    check_patch("resnet_unet", [32, 64, 32])
    check_patch("unet", [16, 48, 16])
    with pytest.raises(ValueError, match="multiple of 32"):
        check_patch("resnet_unet", [32, 48, 32])
    with pytest.raises(ValueError, match="multiple of 16"):
        check_patch("unet", [16, 20, 16])


def test_checkpoints_resolve_to_the_network_they_load_into():
    bb = {"name": "resnet18", "width": 0.5, "in_channels": 1, "spatial_dims": 3}
    vf = {
        "backbone": bb,
        "decoder": {"type": "resnet_unet", "decoder_channels": [64, 32, 16, 8, 8]},
    }
    assert network_for_checkpoint(vf["backbone"], vf["decoder"]) == "resnet_unet"
    assert network_for_checkpoint(bb) == "resnet_unet"  # VoCo: encoder only
    options = seg.SEGMENTERS_3D["resnet_unet"].from_checkpoint(vf["backbone"], vf["decoder"])
    assert options == {
        "backbone": {"name": "resnet18", "width": 0.5},
        "decoder_channels": [64, 32, 16, 8, 8],
    }
    assert "decoder_channels" not in seg.SEGMENTERS_3D["resnet_unet"].from_checkpoint(bb, None)
    with pytest.raises(ValueError, match="no 3D network loads"):
        network_for_checkpoint({"name": "swin"})


def test_pctnet_checkpoints_resolve_to_pctnet_with_the_encoder_arguments():
    encoder = create_backbone("pctnet", width=0.125, window_size=4, resolution_mode=2)
    decoder = PCTNetDecoder.from_encoder(encoder)
    meta = {"backbone": encoder.config, "decoder": decoder.config}
    assert network_for_checkpoint(meta["backbone"], meta["decoder"]) == "pctnet"
    assert network_for_checkpoint(encoder.config) == "pctnet"  # encoder only
    options = seg.SEGMENTERS_3D["pctnet"].from_checkpoint(meta["backbone"], meta["decoder"])
    net = create_segmenter3d("pctnet", 1, 4, **options)
    assert net.encoder.config == encoder.config and net.decoder.config == decoder.config
    assert size_multiple_of("pctnet", options) == (4, 16, 16)


def test_one_registry_entry_adds_a_network_that_loads_checkpoints(monkeypatch):
    """A builder, a size multiple (an int counts for every axis) and a checkpoint -> options
    rule are all a network needs."""

    def build(in_channels, num_classes, options):
        return torch.nn.Conv3d(in_channels, num_classes, int(options.get("k", 1)))

    entry = Segmenter3D(build, 8, lambda backbone, decoder: {"k": decoder["k"]}, "toy")
    monkeypatch.setitem(seg.SEGMENTERS_3D, "toynet", entry)
    meta = {"backbone": {"name": "toynet"}, "decoder": {"type": "toynet", "k": 1}}
    assert network_for_checkpoint(meta["backbone"], meta["decoder"]) == "toynet"
    assert create_segmenter3d("toynet", 1, 2, k=1)(torch.zeros(1, 1, 8, 8, 8)).shape[1] == 2
    with pytest.raises(ValueError, match="multiple of 8"):
        check_patch("toynet", [8, 12, 8])
