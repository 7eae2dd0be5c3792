"""Swin encoder/decoder: shapes and strides, padding invariance, factory round trip, sizes."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask

from medfoundry.nets import SwinBackbone, create_backbone
from medfoundry.nets.swin import count_parameters
from medfoundry.nets.swin_blocks import LayerNorm, SwinBlock, SwinStage
from medfoundry.nets.swin_decoder import SwinDecoder, image_to_tokens, tokens_to_image

TINY = {"embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 2, 4, 8), "window_size": 4}


def tiny(in_channels: int = 1, **kw) -> SwinBackbone:
    torch.manual_seed(0)
    return create_backbone("swin", in_channels=in_channels, **{**TINY, "drop_path": 0.0, **kw})


@pytest.mark.parametrize("size", [64, 128])
def test_features_strides_and_pooled_output(size: int) -> None:
    net = tiny(in_channels=2).eval()
    x = torch.randn(2, 2, size, size)
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 24 * 2**i, size // s, size // s) for i, s in enumerate((4, 8, 16, 32))
    ]
    assert net.feature_strides == [4, 8, 16, 32] and net.feature_channels == [24, 48, 96, 192]
    out = net(x)
    assert out.shape == (2, net.out_dim) == (2, 192)
    torch.testing.assert_close(out, feats[-1].mean(dim=(2, 3)))


def test_odd_sizes_pad_and_non_patch_multiples_raise() -> None:
    net = tiny().eval()
    feats = net.features(torch.randn(1, 1, 100, 76))  # 25x19 tokens: odd maps are padded
    assert [tuple(f.shape[2:]) for f in feats] == [(25, 19), (13, 10), (7, 5), (4, 3)]
    dec = SwinDecoder(embed_dim=24, out_channels=3, depths=(1, 1, 1), window_size=4)
    assert dec(feats).shape == (1, 3, 100, 76)  # cropped back to the token grid
    with pytest.raises(ValueError, match="multiple of patch_size"):
        net(torch.randn(1, 1, 66, 64))
    with pytest.raises(ValueError, match="expected"):
        net(torch.randn(1, 3, 64, 64))


def test_factory_round_trip_and_resnet_unchanged() -> None:
    net = tiny(in_channels=3)
    again = create_backbone(**net.config)
    assert again.config == net.config
    assert set(again.state_dict()) == set(net.state_dict())
    assert type(create_backbone("resnet10", width=0.125)).__name__ == "ResNetBackbone"
    assert create_backbone("swin_t", **{**TINY, "depths": (1, 1, 2, 1)}).depths == [1, 1, 2, 1]
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("swin_huge")


def test_vis_mae_sizes() -> None:
    """Swin-T width, depths (2, 2, 2, 2): the digest measured 20.4M (encoder, 3 channels)."""
    enc3 = SwinBackbone("swin", in_channels=3)
    enc1 = SwinBackbone("swin", in_channels=1)
    assert count_parameters(enc3) == 20_413_386  # incl. the final LayerNorm (1,536)
    assert count_parameters(enc1) == 20_410_314
    dec = SwinDecoder(embed_dim=96, out_channels=3, depths=(2, 2, 2), num_heads=(12, 6, 3))
    assert count_parameters(dec) == 6_223_914
    assert enc3.out_dim == 768


def test_full_window_with_padding_equals_exact_window() -> None:
    """A 5x5 map in a padded 8x8 window gives what a 5x5 window gives: padded keys are masked
    and the relative position biases are the right ones."""
    torch.manual_seed(0)
    big = SwinBlock(dim=8, num_heads=2, window_size=(8, 8), shift_size=(0, 0), norm_layer=LayerNorm)
    small = SwinBlock(
        dim=8, num_heads=2, window_size=(5, 5), shift_size=(0, 0), norm_layer=LayerNorm
    )
    state = {k: v for k, v in big.state_dict().items() if "relative_position" not in k}
    small.load_state_dict(state, strict=False)
    dy, dx = torch.meshgrid(torch.arange(-4, 5), torch.arange(-4, 5), indexing="ij")
    with torch.no_grad():
        table = big.attn.relative_position_bias_table[((dy + 7) * 15 + (dx + 7)).flatten()]
        small.attn.relative_position_bias_table.copy_(table)
    stage = SwinStage(8, 1, 2, 8)
    stage.blocks[0] = big
    x = torch.randn(2, 5, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), small(x, None))


def test_shifted_windows_match_monai_on_divisible_maps() -> None:
    torch.manual_seed(0)
    kw = {"dim": 8, "num_heads": 2, "window_size": (4, 4), "shift_size": (2, 2)}
    ours = SwinStage(8, 2, 2, 4).blocks[1]
    ref = SwinTransformerBlock(**kw, norm_layer=LayerNorm)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 12, 8)
    stage = SwinStage(8, 1, 2, 4)
    stage.blocks[0] = ours
    mask = compute_mask([8, 12], (4, 4), (2, 2), x.device)
    with torch.no_grad():
        torch.testing.assert_close(stage(x), ref(x, mask))


def test_skip_decoder_shapes_and_patchify_round_trip() -> None:
    net = tiny().eval()
    x = torch.randn(2, 1, 64, 64)
    dec = SwinDecoder(embed_dim=24, out_channels=5, depths=(1, 1, 1), window_size=4, skips=True)
    assert len(dec.skip_fuse) == 3
    assert dec(net.features(x)).shape == (2, 5, 64, 64)
    img = torch.randn(2, 3, 16, 24)
    tokens = image_to_tokens(img, 4)
    assert tokens.shape == (2, 4, 6, 48)
    assert torch.equal(tokens[0, 1, 2].view(4, 4, 3), img[0, :, 4:8, 8:12].permute(1, 2, 0))
    assert torch.equal(tokens_to_image(tokens, 4, 3), img)


def test_no_grad_attention_path_matches_autograd_path() -> None:
    """MONAI switches to SDPA when autograd is off; with padded windows both paths agree."""
    net = tiny().eval()
    x = torch.randn(1, 1, 72, 72)  # 18 -> 9 -> 5 -> 3 tokens: padded windows at every stage
    with_grad = net.features(x)
    with torch.no_grad():
        without = net.features(x)
    for a, b in zip(with_grad, without, strict=True):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=1e-4)
