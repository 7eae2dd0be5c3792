"""`medfoundry import`: published key names and shapes -> our networks, loaded strictly."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.nets.swin_decoder import SwinDecoder
from medfoundry.zoo import import_checkpoint, load_backbone, load_decoder, read_metadata
from medfoundry.zoo.adapt3d import build_segmenter3d, network_setup
from medfoundry.zoo.importers import adapt_input_channels

G = torch.Generator().manual_seed(0)


def rand(*shape: int) -> torch.Tensor:
    """Seeded normal values."""
    return torch.randn(*shape, generator=G)


def bn(prefix: str, c: int) -> dict[str, torch.Tensor]:
    """A BatchNorm's five state-dict entries."""
    return {
        f"{prefix}.weight": rand(c),
        f"{prefix}.bias": rand(c),
        f"{prefix}.running_mean": rand(c),
        f"{prefix}.running_var": rand(c).abs(),
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


# --- Adam-v1: torchvision ResNet names inside a MoCo checkpoint --------------------------------
def torchvision_resnet(bottleneck: bool, blocks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 / -18 keys and shapes (conv1, bn1, layerI.J.convK, downsample)."""
    sd = {"conv1.weight": rand(64, 3, 7, 7), **bn("bn1", 64)}
    inplanes, exp = 64, 4 if bottleneck else 1
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            cin = inplanes if j == 0 else planes * exp
            if bottleneck:
                sd[f"{p}.conv1.weight"] = rand(planes, cin, 1, 1)
                sd[f"{p}.conv2.weight"] = rand(planes, planes, 3, 3)
                sd[f"{p}.conv3.weight"] = rand(planes * exp, planes, 1, 1)
                sd.update({**bn(f"{p}.bn1", planes), **bn(f"{p}.bn2", planes)})
                sd.update(bn(f"{p}.bn3", planes * exp))
            else:
                sd[f"{p}.conv1.weight"] = rand(planes, cin, 3, 3)
                sd[f"{p}.conv2.weight"] = rand(planes, planes, 3, 3)
                sd.update({**bn(f"{p}.bn1", planes), **bn(f"{p}.bn2", planes)})
            if j == 0 and (cin != planes * exp):
                sd[f"{p}.downsample.0.weight"] = rand(planes * exp, cin, 1, 1)
                sd.update(bn(f"{p}.downsample.1", planes * exp))
        inplanes = planes * exp
    d = inplanes
    sd.update({"fc.0.weight": rand(d, d), "fc.0.bias": rand(d)})  # MoCo-v2 MLP projector
    sd.update({"fc.2.weight": rand(128, d), "fc.2.bias": rand(128)})
    return sd


def moco_checkpoint(encoder: dict[str, torch.Tensor], path: Path) -> Path:
    """Adam-v1's `checkpoint.pth`: DDP `module.` + query/key encoders + queue + optimizer."""
    state = {f"module.encoder_q.{k}": v for k, v in encoder.items()}
    state |= {f"module.encoder_k.{k}": v for k, v in encoder.items()}  # shared storage
    state |= {"module.queue": rand(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    opt = {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": opt}, path)
    return path


@pytest.fixture(scope="module")
def adam(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("adam")
    encoder = torchvision_resnet(True, (3, 4, 6, 3))
    return encoder, moco_checkpoint(encoder, folder / "checkpoint.pth")


def test_adam_v1_loads_all_resnet50_tensors_with_the_source_values(adam, tmp_path):
    encoder, src = adam
    report = import_checkpoint("adam_v1", src, tmp_path / "run")
    meta = read_metadata(tmp_path / "run")
    assert meta["method"] == "adam" and meta["backbone"]["name"] == "resnet50"
    assert meta["imported_from"]["file"] == "checkpoint.pth" and meta["in_channels"] == 3
    assert len(meta["imported_from"]["sha256"]) == 64
    backbone = create_backbone(**meta["backbone"])
    loaded = load_backbone(tmp_path / "run", backbone)
    assert loaded.loaded == loaded.total_model == len(backbone.state_dict())
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    for key in ("conv1.weight", "layer3.5.conv2.weight", "layer4.0.downsample.1.running_var"):
        assert torch.equal(weights[key], encoder[key])
    assert report["dropped"] == {"encoder_k": len(encoder), "encoder_q.fc": 4, "queue": 1,
                                 "queue_ptr": 1}  # fmt: skip
    assert (tmp_path / "run" / "import_report.json").is_file()


def test_adam_v1_three_to_one_channel_is_the_rgb_sum(adam, tmp_path):
    encoder, src = adam
    report = import_checkpoint("adam_v1", src, tmp_path / "run", in_channels=1)
    weights = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    rgb = encoder["conv1.weight"]
    assert torch.allclose(weights["conv1.weight"], 3 * rgb.mean(dim=1, keepdim=True), atol=1e-6)
    assert "3 -> 1" in report["channel_adaptation"][0]
    assert read_metadata(tmp_path / "run")["in_channels"] == 1


def test_channel_adaptation_repeats_and_rescales_for_more_channels():
    w = rand(4, 3, 2, 2)
    five = adapt_input_channels(w, 5)
    assert five.shape == (4, 5, 2, 2)
    assert torch.allclose(five[:, 3], w[:, 0] * 3 / 5)  # channel 3 repeats channel 0, x I/N
    six = adapt_input_channels(w, 6)
    assert torch.allclose(six.sum(1), w.sum(1), atol=1e-6)  # a constant image: same response


def test_a_resnet18_file_is_refused_as_adam_v1(tmp_path):
    src = moco_checkpoint(torchvision_resnet(False, (2, 2, 2, 2)), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"r18\.pth: not a adam_v1 encoder.*layer1\.0"):
        import_checkpoint("adam_v1", src, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint").exists()


class Opaque:
    """An object only full unpickling can restore."""


def test_a_file_that_needs_full_unpickling_is_refused(tmp_path):
    src = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"conv1.weight": rand(2, 3, 1, 1)}, "extra": Opaque()}, src)
    with pytest.raises(CheckpointError, match="refused.*weights_only=True.*Opaque"):
        import_checkpoint("adam_v1", src, tmp_path / "run")


# --- VIS-MAE: SwinMAE names (tiny widths) -------------------------------------------------------
TINY_SWIN = {"embed_dim": 6, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}


def swin_block(p: str, d: int, heads: int, w: int = 7) -> dict[str, torch.Tensor]:
    """A Swin block as Swin-MAE names it (norm1, attn.*, norm2, mlp.fc1/fc2)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    return {
        f"{p}.norm1.weight": rand(d), f"{p}.norm1.bias": rand(d),
        f"{p}.attn.relative_position_bias_table": rand((2 * w - 1) ** 2, heads),
        f"{p}.attn.relative_position_index": rel[..., 0] * (2 * w - 1) + rel[..., 1],
        f"{p}.attn.qkv.weight": rand(3 * d, d), f"{p}.attn.qkv.bias": rand(3 * d),
        f"{p}.attn.proj.weight": rand(d, d), f"{p}.attn.proj.bias": rand(d),
        f"{p}.norm2.weight": rand(d), f"{p}.norm2.bias": rand(d),
        f"{p}.mlp.fc1.weight": rand(4 * d, d), f"{p}.mlp.fc1.bias": rand(4 * d),
        f"{p}.mlp.fc2.weight": rand(d, 4 * d), f"{p}.mlp.fc2.bias": rand(d),
    }  # fmt: skip


def swin_mae(c: int, depths: list[int], heads: list[int]) -> dict[str, torch.Tensor]:
    """VIS-MAE `SwinMAE` state dict (swin_mae.py + swin_unet.py names), 3 input channels."""
    n = len(depths)
    sd = {"patch_embed.proj.weight": rand(c, 3, 4, 4), "patch_embed.proj.bias": rand(c)}
    sd |= {"patch_embed.norm.weight": rand(c), "patch_embed.norm.bias": rand(c)}
    sd |= {"pos_embed": rand(1, 3136, c), "mask_token": rand(1, 1, c)}
    for i in range(n):
        d = c * 2**i
        for j in range(depths[i]):
            sd |= swin_block(f"layers.{i}.blocks.{j}", d, heads[i])
        if i < n - 1:
            sd |= {f"layers.{i}.downsample.norm.weight": rand(4 * d)}
            sd |= {f"layers.{i}.downsample.norm.bias": rand(4 * d)}
            sd |= {f"layers.{i}.downsample.reduction.weight": rand(2 * d, 4 * d)}
    top = c * 2 ** (n - 1)
    sd |= {"first_patch_expanding.expand.weight": rand(2 * top, top)}
    sd |= {"first_patch_expanding.norm.weight": rand(top // 2)}
    sd |= {"first_patch_expanding.norm.bias": rand(top // 2)}
    for k in range(n - 1):
        idx = n - 2 - k
        d = c * 2**idx
        for j in range(depths[idx]):
            sd |= swin_block(f"layers_up.{k}.blocks.{j}", d, heads[idx])
        if k < n - 2:
            sd |= {f"layers_up.{k}.upsample.expand.weight": rand(2 * d, d)}
            sd |= {f"layers_up.{k}.upsample.norm.weight": rand(d // 2)}
            sd |= {f"layers_up.{k}.upsample.norm.bias": rand(d // 2)}
    sd |= {"norm_up.weight": rand(c), "norm_up.bias": rand(c)}
    sd |= {"decoder_pred.weight": rand(16 * 3, c), "decoder_pred.bias": rand(16 * 3)}
    return sd


def save_vis_mae(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """As VIS-MAE's `misc.save_model`: model, optimizer, epoch, scaler and the argparse args."""
    args = argparse.Namespace(lr=1e-3, batch_size=640, model="swin_mae")
    torch.save({"model": sd, "optimizer": {}, "epoch": 3, "scaler": {}, "args": args}, path)
    return path


def test_vis_mae_encoder_and_decoder_load_fully_and_keep_values(tmp_path):
    sd = swin_mae(6, [1, 1, 1, 1], [1, 1, 1, 1])
    src = save_vis_mae(sd, tmp_path / "checkpoint-799.pth")
    report = import_checkpoint("vis_mae", src, tmp_path / "run", in_channels=1, arch=TINY_SWIN)
    meta = read_metadata(tmp_path / "run")
    assert meta["method"] == "mae" and meta["backbone"]["final_norm"] is False
    backbone = create_backbone(**meta["backbone"])
    enc = load_backbone(tmp_path / "run", backbone)
    assert enc.loaded == enc.total_model
    decoder = SwinDecoder(**meta["decoder"])
    dec = load_decoder(tmp_path / "run", decoder)
    assert dec.loaded == dec.total_model and not dec.missing
    ours = backbone.state_dict()
    assert torch.equal(ours["layers.2.blocks.0.mlp.linear1.weight"],
                       sd["layers.2.blocks.0.mlp.fc1.weight"])  # fmt: skip
    assert torch.equal(ours["downsamples.1.reduction.weight"],
                       sd["layers.1.downsample.reduction.weight"])  # fmt: skip
    dstate = decoder.state_dict()
    assert torch.equal(dstate["expand.2.expand.weight"], sd["layers_up.1.upsample.expand.weight"])
    assert torch.allclose(
        ours["patch_embed.proj.weight"], sd["patch_embed.proj.weight"].sum(1, True)
    )
    # one output channel: the mean of the RGB predictions of each pixel
    head = sd["decoder_pred.weight"].reshape(16, 3, 6).mean(1)
    assert torch.allclose(dstate["head.weight"], head)
    assert report["dropped"] == {"mask_token": 1, "pos_embed": 1}
    x = torch.randn(1, 1, 64, 64)
    assert decoder(backbone.features(x)).shape == (1, 1, 64, 64)


def test_vis_mae_with_another_swin_depth_is_refused(tmp_path):
    src = save_vis_mae(swin_mae(6, [1, 1, 2, 1], [1, 1, 1, 1]), tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"deep\.pth: not a vis_mae .*layers\.2\.blocks\.1"):
        import_checkpoint("vis_mae", src, tmp_path / "run", arch=TINY_SWIN)


# --- VoCo / Swin-UNETR SSL: MONAI SwinUNETR names -----------------------------------------------
def monai_swinunetr(feature_size: int, depths: tuple, use_v2: bool) -> dict[str, torch.Tensor]:
    """What VoCo's `Swin` holds: MONAI's `swinViT` and the UNETR `encoder1..4`, `encoder10`."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(1)
    net = SwinUNETR(1, 2, feature_size=feature_size, depths=depths, num_heads=(1, 1, 1, 1),
                    use_v2=use_v2)  # fmt: skip
    keep = ("swinViT.", "encoder1.", "encoder2.", "encoder3.", "encoder4.", "encoder10.")
    return {k: v.clone() for k, v in net.state_dict().items() if k.startswith(keep)}


TINY_VOCO = {"depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}


def test_voco_training_checkpoint_gives_the_teacher_and_loads_into_swinunetr(tmp_path):
    student = monai_swinunetr(12, (1, 1, 1, 1), True)
    teacher = {k: v + 1 if v.is_floating_point() else v for k, v in student.items()}
    proj = {"proj_head.layer1.0.weight": rand(32, 12 * 32)}
    state = {f"module.student.{k}": v for k, v in {**student, **proj}.items()}
    state |= {f"module.teacher.{k}": v for k, v in {**teacher, **proj}.items()}
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "model_step1000.pt")
    report = import_checkpoint("voco", tmp_path / "model_step1000.pt", tmp_path / "run",
                               arch=TINY_VOCO)  # fmt: skip
    assert report["architecture"]["feature_size"] == 12 and report["architecture"]["use_v2"]
    assert report["dropped"] == {"proj_head": 1, "student": len(student) + 1}
    setup = network_setup({"network": "auto"}, tmp_path / "run")
    assert setup["network"] == "swinunetr"
    model, info = build_segmenter3d(setup, 3)
    n_enc = sum(k.startswith("swinViT.") for k in student)
    assert info["encoder"] == f"{n_enc}/{n_enc}"
    n_dec = len(model.decoder.state_dict())  # the UNETR blocks are pretrained, the up-path new
    assert info["decoder"] == f"{len(student) - n_enc}/{n_dec}" and n_dec > len(student) - n_enc
    assert torch.equal(model.encoder.state_dict()["layers2c.0.layer.conv1.conv.weight"],
                       teacher["swinViT.layers2c.0.layer.conv1.conv.weight"])  # fmt: skip
    assert torch.equal(model.decoder.encoder10.layer.conv1.conv.weight,
                       teacher["encoder10.layer.conv1.conv.weight"])  # fmt: skip
    assert model(torch.randn(1, 1, 64, 64, 64)).shape == (1, 3, 64, 64, 64)
    from monai.networks.nets import SwinUNETR  # a plain MONAI state dict still loads

    plain = SwinUNETR(1, 3, feature_size=12, depths=(1,) * 4, num_heads=(1,) * 4, use_v2=True)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(model.head.conv.conv.weight, plain.out.conv.conv.weight)


def test_swin_unetr_ssl_file_with_timm_mlp_names_loads_the_transformer(tmp_path):
    swin = {k[len("swinViT.") :]: v for k, v in monai_swinunetr(12, (1, 1, 1, 1), False).items()
            if k.startswith("swinViT.")}  # fmt: skip
    ssl = {f"module.{k.replace('mlp.linear', 'mlp.fc')}": v for k, v in swin.items()}
    torch.save({"state_dict": ssl}, tmp_path / "model_swinvit.pt")
    report = import_checkpoint("voco", tmp_path / "model_swinvit.pt", tmp_path / "run",
                               arch=TINY_VOCO)  # fmt: skip
    assert report["decoder"] == "none in file" and not report["architecture"]["use_v2"]
    meta = read_metadata(tmp_path / "run")
    enc = load_backbone(tmp_path / "run", create_backbone(**meta["backbone"]))
    assert enc.loaded == enc.total_model == len(swin)


def test_voco_with_another_depth_is_refused(tmp_path):
    torch.save(monai_swinunetr(12, (1, 1, 1, 1), True), tmp_path / "VoCo_10k.pt")
    with pytest.raises(CheckpointError, match=r"VoCo_10k\.pt: not a voco encoder.*missing"):
        import_checkpoint("voco", tmp_path / "VoCo_10k.pt", tmp_path / "run")


# --- MIS-FM: PCT-Net names (tiny widths) --------------------------------------------------------
def k3(dim: int) -> tuple[int, int, int]:
    """MIS-FM's kernel for a 2D-type (1x3x3) or 3D (3x3x3) level."""
    return (1, 3, 3) if dim == 2 else (3, 3, 3)


def conv_block(p: str, cin: int, cout: int, kernel: tuple) -> dict[str, torch.Tensor]:
    """MIS-FM `ConvBlock.conv_conv`: BN, PReLU, Conv, BN, PReLU, Dropout, Conv."""
    return {**bn(f"{p}.conv_conv.0", cin), f"{p}.conv_conv.1.weight": rand(1),
            f"{p}.conv_conv.2.weight": rand(cout, cin, *kernel), f"{p}.conv_conv.2.bias": rand(cout),
            **bn(f"{p}.conv_conv.3", cout), f"{p}.conv_conv.4.weight": rand(1),
            f"{p}.conv_conv.6.weight": rand(cout, cout, *kernel),
            f"{p}.conv_conv.6.bias": rand(cout)}  # fmt: skip


def pre_conv(p: str, cin: int, cout: int, kernel: tuple) -> dict[str, torch.Tensor]:
    """BN -> PReLU -> Conv (`DownSample.conv`, `UpCatBlock.conv`, `ConvLayer.conv`)."""
    return {**bn(f"{p}.0", cin), f"{p}.1.weight": rand(1),
            f"{p}.2.weight": rand(cout, cin, *kernel), f"{p}.2.bias": rand(cout)}  # fmt: skip


def up_cat(p: str, cl: int, ch: int, up_dim: int, conv_dim: int) -> dict[str, torch.Tensor]:
    """MIS-FM `UpCatBlock`: up (BN, PReLU, ConvTranspose), conv on cat(skip, up)."""
    stride = (1, 2, 2) if up_dim == 2 else (2, 2, 2)
    return {**bn(f"{p}.up.0", ch), f"{p}.up.1.weight": rand(1),
            f"{p}.up.2.weight": rand(ch, cl, *stride), f"{p}.up.2.bias": rand(cl),
            **pre_conv(f"{p}.conv", 2 * cl, cl, k3(conv_dim))}  # fmt: skip


def conv_trans(p: str, c: int, heads: int, w: int = 6) -> dict[str, torch.Tensor]:
    """`ConvTransBlock`: conv, trans.blocks (MIS-FM's index formula), the unused norm_layer."""
    sd = conv_block(f"{p}.conv", c, c, (3, 3, 3))
    for j in range(2):
        b = f"{p}.trans.blocks.{j}"
        sd |= {f"{b}.norm1.weight": rand(c), f"{b}.norm1.bias": rand(c),
               f"{b}.attn.relative_position_bias_table": rand((2 * w - 1) ** 3, heads),
               f"{b}.attn.relative_position_index": torch.randint(0, 291, (w**3, w**3)),
               f"{b}.attn.qkv.weight": rand(3 * c, c), f"{b}.attn.qkv.bias": rand(3 * c),
               f"{b}.attn.proj.weight": rand(c, c), f"{b}.attn.proj.bias": rand(c),
               f"{b}.norm2.weight": rand(c), f"{b}.norm2.bias": rand(c),
               f"{b}.mlp.fc1.weight": rand(4 * c, c), f"{b}.mlp.fc1.bias": rand(4 * c),
               f"{b}.mlp.fc2.weight": rand(c, 4 * c), f"{b}.mlp.fc2.bias": rand(c)}  # fmt: skip
    return sd | {f"{p}.norm_layer.weight": rand(c), f"{p}.norm_layer.bias": rand(c)}


def pctnet(ch: list[int], heads: list[int], classes: int = 5) -> dict[str, torch.Tensor]:
    """MIS-FM `PCTNet` state dict (net/pct_net.py names): 3 embeddings, pyramid, 3 heads."""
    c0, c1, c2, c3, c4 = ch
    sd: dict[str, torch.Tensor] = {}
    for m, (cd, dd) in enumerate((([3, 3], [3, 3]), ([2, 3], [2, 3]), ([2, 2], [2, 2]))):
        e = f"embeddings.{m}"
        sd |= {f"{e}.proj.weight": rand(c0, 1, *k3(cd[0])), f"{e}.proj.bias": rand(c0)}
        sd |= conv_block(f"{e}.conv0", c0, c0, k3(cd[0]))
        sd |= conv_block(f"{e}.conv1", c1, c1, k3(cd[1]))
        sd |= pre_conv(f"{e}.down1.conv", c0, c1, k3(cd[1]))
        sd |= pre_conv(f"{e}.down2.conv", c1, c2, (3, 3, 3))
        h = f"pred_heads.{m}"
        sd |= up_cat(f"{h}.up1", c0, c1, dd[0], cd[0]) | up_cat(f"{h}.up2", c1, c2, dd[1], cd[1])
        sd |= conv_block(f"{h}.conv0", c0, c0, k3(cd[0]))
        sd |= conv_block(f"{h}.conv1", c1, c1, k3(cd[1]))
        sd |= pre_conv(f"{h}.out_conv0.conv", c0, classes, (1, 1, 1))
        sd |= pre_conv(f"{h}.out_conv1.conv", c1, classes, (1, 1, 1))
    p = "pyramid_ct"
    sd |= pre_conv(f"{p}.down3.conv", c2, c3, (3, 3, 3)) | pre_conv(
        f"{p}.down4.conv", c3, c4, (3, 3, 3)
    )
    sd |= up_cat(f"{p}.up3", c2, c3, 3, 3) | up_cat(f"{p}.up4", c3, c4, 3, 3)
    for name, c, hd in (("e2", c2, heads[0]), ("d2", c2, heads[0]), ("e3", c3, heads[1]),
                        ("d3", c3, heads[1]), ("e4", c4, heads[2])):  # fmt: skip
        sd |= conv_trans(f"{p}.convtrans_{name}", c, hd)
    sd |= pre_conv(f"{p}.out_conv2.conv", c2, classes, (1, 1, 1))
    sd |= pre_conv(f"{p}.out_conv3.conv", c3, classes, (1, 1, 1))
    return sd


TINY_PCT = {"feature_channels": [4, 8, 8, 16, 16], "num_heads": [2, 4, 4]}


def test_misfm_loads_encoder_and_decoder_into_pctnet_with_fusion_swapped(tmp_path):
    sd = pctnet([4, 8, 8, 16, 16], [2, 4, 4])
    torch.save({"iteration": 400000, "model_state_dict": sd}, tmp_path / "pctnet_ct10k_volf.pt")
    report = import_checkpoint("misfm", tmp_path / "pctnet_ct10k_volf.pt", tmp_path / "run",
                               arch=TINY_PCT)  # fmt: skip
    assert report["dropped"]["embeddings.0 (resolution_mode 0)"] > 0
    assert report["dropped"]["norm_layer (unused LayerNorm)"] == 10
    setup = network_setup({"network": "auto"}, tmp_path / "run")
    assert setup["network"] == "pctnet"
    model, info = build_segmenter3d(setup, 3)
    n_enc, n_dec = len(model.encoder.state_dict()), len(model.decoder.state_dict())
    assert info["encoder"] == f"{n_enc}/{n_enc}" and info["decoder"] == f"{n_dec}/{n_dec}"
    enc, dec = model.encoder.state_dict(), model.decoder.state_dict()
    assert torch.equal(enc["down1.3.weight"], sd["embeddings.1.down1.conv.2.weight"])
    assert torch.equal(enc["pct4.swin.blocks.1.attn.relative_position_index"],
                       sd["pyramid_ct.convtrans_e4.trans.blocks.1.attn.relative_position_index"])  # fmt: skip
    src = sd["pyramid_ct.up4.conv.2.weight"]  # (C3, [skip C3 | up C3], k)
    assert torch.equal(dec["up3.fuse.2.weight"], torch.cat([src[:, 16:], src[:, :16]], dim=1))
    assert torch.equal(dec["up0.up.2.weight"], sd["pred_heads.1.up1.up.2.weight"])
    model.eval()
    assert model(torch.randn(1, 1, 8, 32, 32)).shape == (1, 3, 8, 32, 32)


def test_misfm_with_other_widths_is_refused(tmp_path):
    torch.save(pctnet([4, 8, 8, 16, 16], [2, 4, 4]), tmp_path / "pct.pt")
    with pytest.raises(CheckpointError, match=r"pct\.pt: not a misfm encoder.*shape mismatches"):
        import_checkpoint("misfm", tmp_path / "pct.pt", tmp_path / "run")


def test_cli_import_writes_the_checkpoint_and_refuses_with_exit_2(tmp_path, capsys):
    from medfoundry.cli import main

    torch.save(pctnet([4, 8, 8, 16, 16], [2, 4, 4]), tmp_path / "pct.pt")
    arch = ["--arch", "feature_channels=[4, 8, 8, 16, 16]", "--arch", "num_heads=[2,4,4]"]
    assert main(["import", "--format", "misfm", str(tmp_path / "pct.pt"), "--out",
                 str(tmp_path / "run"), *arch]) == 0  # fmt: skip
    assert "encoder tensors" in capsys.readouterr().out
    assert read_metadata(tmp_path / "run")["method"] == "volume_fusion"
    assert main(["import", "--format", "misfm", str(tmp_path / "pct.pt"), "--out",
                 str(tmp_path / "other")]) == 2  # fmt: skip
    assert "not a misfm encoder" in capsys.readouterr().err


def test_cli_format_names_match_the_registry_and_the_parser_imports_no_torch():
    import subprocess
    import sys

    from medfoundry.cli import IMPORT_FORMATS
    from medfoundry.zoo.importers import FORMATS

    assert IMPORT_FORMATS == sorted(FORMATS)
    code = "import sys, medfoundry.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
