"""PCT-Net: shapes and strides per resolution mode, config round trip, deep supervision, sizes."""

from __future__ import annotations

import pytest
import torch

from medfoundry.methods.losses import deep_supervision_loss, deep_supervision_weights
from medfoundry.nets import backbone_names, create_backbone
from medfoundry.nets.pctnet import PCTNet, PCTNetDecoder, PCTNetEncoder
from medfoundry.nets.swin_blocks3d import SwinBlock3d, SwinLayer3d, window_mask_3d

WIDTH = 0.125  # channels 3, 6, 16, 32, 64
SIZE = (16, 32, 32)  # (D, H, W), fits every mode
STRIDES = {
    0: [(1, 1, 1), (2, 2, 2), (4, 4, 4), (8, 8, 8), (16, 16, 16)],
    1: [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8), (8, 16, 16)],
    2: [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8), (4, 16, 16)],
}


def tiny(mode: int = 1, **kwargs) -> PCTNetEncoder:
    torch.manual_seed(0)
    return create_backbone("pctnet", width=WIDTH, resolution_mode=mode, **kwargs)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_features_and_logits_have_the_mode_strides(mode: int) -> None:
    enc = tiny(mode)
    assert isinstance(enc, PCTNetEncoder) and enc.feature_channels == [3, 6, 16, 32, 64]
    net = PCTNet(enc, num_classes=3).eval()
    x = torch.randn(2, 1, *SIZE)
    with torch.no_grad():
        feats = enc.features(x)
        logits = net(x)
        pooled = enc(x)
    assert [f.shape[1] for f in feats] == enc.feature_channels
    expected = [
        tuple(s // st for s, st in zip(SIZE, stride, strict=True)) for stride in STRIDES[mode]
    ]
    assert [tuple(f.shape[2:]) for f in feats] == expected
    assert logits.shape == (2, 3, *SIZE) and torch.isfinite(logits).all()
    assert pooled.shape == (2, enc.out_dim) and enc.out_dim == 64


def test_width_rounds_swin_channels_up_to_the_heads() -> None:
    enc = PCTNetEncoder(width=0.1, depths=(1, 1, 1))
    assert enc.feature_channels == [2, 5, 16, 32, 64]  # 13 -> 16 (4 heads), 26 -> 32, 51 -> 64
    assert all(c % h == 0 for c, h in zip(enc.feature_channels[2:], (4, 8, 16), strict=True))


def test_registry_config_rebuilds_a_strictly_loadable_encoder() -> None:
    assert "pctnet" in backbone_names()
    enc = tiny(2, in_channels=2, window_size=4, drop_path=0.1)
    cfg = enc.config
    assert cfg["name"] == "pctnet" and cfg["spatial_dims"] == 3 and cfg["resolution_mode"] == 2
    assert cfg["in_channels"] == 2 and cfg["window_size"] == 4 and cfg["width"] == WIDTH
    torch.manual_seed(1)
    rebuilt = create_backbone(**cfg)
    assert rebuilt.config == cfg and rebuilt.feature_channels == enc.feature_channels
    state = enc.state_dict()
    assert any(not torch.equal(v, rebuilt.state_dict()[k]) for k, v in state.items())
    rebuilt.load_state_dict(state, strict=True)
    x = torch.randn(1, 2, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), enc.eval()(x))
    decoder = PCTNet(enc, 2).decoder
    assert decoder.config["type"] == "pctnet"
    PCTNetDecoder.from_config(decoder.config).load_state_dict(decoder.state_dict(), strict=True)
    with pytest.raises(ValueError, match="spatial_dims must be 3"):
        create_backbone("pctnet", spatial_dims=2)


def test_deep_supervision_outputs_and_weights() -> None:
    net = PCTNet(tiny(1), num_classes=4, deep_supervision=True)
    assert len(net.aux_heads) == 3
    x = torch.randn(2, 1, *SIZE)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 4, *SIZE) for o in outs)
    with torch.no_grad():
        main = net.eval()(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 4, *SIZE)
    weights = deep_supervision_weights(4)
    assert sum(weights) == pytest.approx(1.0)
    assert weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    target = torch.randint(0, 4, (2, *SIZE))
    ce = torch.nn.functional.cross_entropy
    loss = deep_supervision_loss(outs, target, ce)
    torch.testing.assert_close(
        loss, sum(w * ce(o, target) for w, o in zip(weights, outs, strict=True))
    )
    torch.testing.assert_close(deep_supervision_loss(outs[0], target, ce), ce(outs[0], target))
    assert len(PCTNet(tiny(1), 4).train()(x).shape) == 5  # no deep supervision: one tensor


@pytest.mark.parametrize(
    ("mode", "size"),
    [(1, (12, 32, 32)), (1, (16, 24, 32)), (0, (8, 32, 32)), (2, (16, 32, 8))],
)
def test_bad_input_size_raises(mode: int, size: tuple[int, int, int]) -> None:
    enc = tiny(mode)
    with pytest.raises(ValueError, match="multiple of"):
        enc.features(torch.zeros(1, 1, *size))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        enc(torch.zeros(1, 16, 32, 32))


def test_swin_block_attends_to_real_tokens_only() -> None:
    """A map of W = 3 in windows of 2 is padded to 4: the last column's tokens must attend only
    to each other (the padded keys carry the qkv bias, so they would count if not masked)."""
    torch.manual_seed(0)
    block = SwinBlock3d(dim=8, num_heads=2, window_size=(2, 2, 2), shift_size=(0, 0, 0)).eval()
    torch.nn.init.normal_(block.attn.qkv.bias)
    x = torch.randn(1, 2, 2, 3, 8)  # (B, D, H, W, C)
    mask = window_mask_3d((2, 2, 3), (2, 2, 2), (0, 0, 0), torch.device("cpu"))
    with torch.no_grad():
        y = block(x, mask)
        t = x[0, :, :, 2].reshape(4, 8)  # (d, h) at local w = 0: window indices 0, 2, 4, 6
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(t)).reshape(4, 3, 2, 4).permute(1, 2, 0, 3)
        idx = torch.tensor([0, 2, 4, 6])
        rel = attn.relative_position_index[idx][:, idx].reshape(-1)
        bias = attn.relative_position_bias_table[rel].reshape(4, 4, 2).permute(2, 0, 1)
        weights = torch.softmax((q * attn.scale) @ k.transpose(-2, -1) + bias, dim=-1)
        ref = t + attn.proj((weights @ v).transpose(0, 1).reshape(4, 8))
        ref = ref + block.mlp(block.norm2(ref))
    torch.testing.assert_close(y[0, :, :, 2].reshape(4, 8), ref)


def test_window_masks_cover_padding_and_shift_regions() -> None:
    cpu = torch.device("cpu")
    mask = window_mask_3d((6, 6, 6), (4, 4, 4), (0, 0, 0), cpu)
    assert mask is not None and mask.shape == (8, 64, 64)
    assert (mask[0] == 0).all()  # the first window holds 4^3 real tokens
    visible = (mask[-1] == 0).sum(dim=1)  # the last one 2^3 real tokens, 56 padded
    assert sorted(visible.unique().tolist()) == [8, 56] and (visible == 8).sum() == 8
    assert window_mask_3d((8, 8, 8), (4, 4, 4), (0, 0, 0), cpu) is None
    shifted = window_mask_3d((8, 8, 8), (4, 4, 4), (2, 2, 2), cpu)
    assert shifted is not None and (shifted[0] == 0).all() and (shifted[-1] != 0).any()
    torch.manual_seed(0)
    layer = SwinLayer3d(dim=8, depth=2, num_heads=2, window_size=4).eval()
    with torch.no_grad():
        y = layer(torch.randn(1, 8, 6, 6, 6))
    assert y.shape == (1, 8, 6, 6, 6) and torch.isfinite(y).all()
