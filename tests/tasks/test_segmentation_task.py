"""Segmentation task helpers: pretrained loading info, predict/evaluate, optimiser groups."""

from __future__ import annotations

import pytest
import torch

from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.tasks.segmentation import build_segmenter, evaluate, predict
from medfoundry.train.schedules import warmup_cosine
from medfoundry.train.segment_module import SegmentationModule
from medfoundry.zoo import save_checkpoint

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
DEC = (16, 16, 8, 8, 8)


def test_build_with_pretrained_reports_loaded_tensors(tmp_path):
    bb = create_backbone(**BACKBONE)
    save_checkpoint(tmp_path / "ck", bb.state_dict(), {"backbone": bb.config, "method": "x"})
    model, info = build_segmenter(BACKBONE, 2, tmp_path / "ck", decoder_channels=DEC)
    assert info["loaded_tensors"] == info["backbone_tensors"] > 0
    assert "loaded" in info["load_report"]
    for key, value in bb.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    _, scratch_info = build_segmenter(BACKBONE, 2, None, decoder_channels=DEC)
    assert scratch_info == {}
    with pytest.raises(CheckpointError):
        build_segmenter({**BACKBONE, "name": "resnet18"}, 2, tmp_path / "ck", decoder_channels=DEC)


def test_predict_and_evaluate_shapes():
    model, _ = build_segmenter(BACKBONE, 3, None, decoder_channels=DEC)
    x = torch.randn(5, 1, 64, 64)
    probs = predict(model, x, batch_size=2, device="cpu")
    assert probs.shape == (5, 3, 64, 64) and probs.dtype == torch.float32
    assert (probs >= 0).all() and (probs <= 1).all()
    y = (probs > 0.5).to(torch.uint8)
    dice = evaluate(model, x, y, batch_size=2, device="cpu")
    assert dice.shape == (5, 3)
    assert torch.allclose(dice, torch.ones_like(dice))  # the model agrees with itself
    assert model.training  # predict restores the mode it found


def test_optimizer_groups_and_schedule():
    model, _ = build_segmenter(BACKBONE, 2, None, decoder_channels=DEC)
    module = SegmentationModule(
        model, ["a", "b"], {"lr": 1e-2, "weight_decay": 0.1, "encoder_lr_mult": 0.1}, 100
    )
    conf = module.configure_optimizers()
    groups = conf["optimizer"].param_groups
    enc = {id(p) for p in model.encoder.parameters()}
    for g in groups:
        is_enc = id(g["params"][0]) in enc
        assert all((id(p) in enc) == is_enc for p in g["params"])
        assert g["initial_lr"] == pytest.approx(1e-3 if is_enc else 1e-2)
        assert g["weight_decay"] == (0.0 if g["params"][0].ndim <= 1 else 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)


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


def _mae_checkpoint(folder):
    from medfoundry.methods import build_method

    mae = build_method("mae", create_backbone(**SWIN), decoder_depths=(1, 1, 1))
    meta = {
        "method": "mae",
        "backbone": mae.backbone.config,
        "input_size": 64,
        "decoder": mae.decoder.config,
    }
    save_checkpoint(folder, mae.export_backbone(), meta, decoder=mae.export_decoder())
    return mae


def test_swin_encoder_gets_a_swin_unet_with_the_mae_decoder(tmp_path):
    from medfoundry.nets.swin_unet import SwinUNet

    mae = _mae_checkpoint(tmp_path / "mae")
    model, info = build_segmenter(SWIN, 3, tmp_path / "mae")
    assert isinstance(model, SwinUNet)
    assert info["loaded_tensors"] == info["backbone_tensors"]
    assert "decoder tensors" in info["decoder_load_report"]
    # the decoder's Swin stages come from pretraining; skip fusions and the 3-class head do not
    key = "layers_up.0.blocks.0.attn.qkv.weight"
    assert torch.equal(model.decoder.state_dict()[key], mae.decoder.state_dict()[key])
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    scratch, scratch_info = build_segmenter(SWIN, 3, None)
    assert isinstance(scratch, SwinUNet) and scratch_info == {}


def test_benchmark_gives_each_network_its_own_scratch_arm(tmp_path):
    from medfoundry.benchmarks.jsrt_fewshot import DEFAULT_CONFIG, resolve_arms

    bb = create_backbone(**BACKBONE)
    save_checkpoint(
        tmp_path / "adam",
        bb.state_dict(),
        {"backbone": bb.config, "method": "adam", "input_size": 64},
    )
    _mae_checkpoint(tmp_path / "mae")
    arms = resolve_arms([tmp_path / "adam", tmp_path / "mae"], dict(DEFAULT_CONFIG))
    names = [a["name"] for a in arms]
    assert names == ["adam-adam", "mae-mae", "scratch", "scratch-swin"]
    assert arms[2]["backbone"]["name"] == "resnet10" and arms[3]["backbone"] == arms[1]["backbone"]
    assert [a["name"] for a in resolve_arms([tmp_path / "adam"], dict(DEFAULT_CONFIG))] == [
        "adam-adam",
        "scratch",
    ]


def test_swin_recipe_overrides_only_swin_networks():
    from medfoundry.errors import MedfoundryError
    from medfoundry.tasks.segmentation import segmentation_recipe

    cfg = {"lr": 1e-3, "steps": 600, "augment": {"max_shift": 0.1, "intensity": 0.2}}
    cfg["swin"] = {"lr": 3e-4, "grad_clip": 1.0, "augment": {"intensity": 0.1}}
    swin = segmentation_recipe(cfg, SWIN)
    assert swin["lr"] == 3e-4 and swin["grad_clip"] == 1.0 and swin["steps"] == 600
    assert swin["augment"] == {"max_shift": 0.1, "intensity": 0.1}  # deep merge
    assert "swin" not in swin and segmentation_recipe(swin, SWIN) == swin  # final
    resnet = segmentation_recipe(cfg, BACKBONE)
    assert resnet == {k: v for k, v in cfg.items() if k != "swin"}
    with pytest.raises(MedfoundryError, match="cannot set"):
        segmentation_recipe({**cfg, "swin": {"image_size": 256}}, SWIN)


@pytest.mark.parametrize("backbone", [BACKBONE, SWIN], ids=["resnet", "swin"])
def test_grad_clip_reaches_the_trainer(monkeypatch, backbone):
    import medfoundry.tasks.segmentation as seg
    import medfoundry.train.fit as fit

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("gradient_clip_val"))
        return fit_make_trainer(*args, **kwargs)

    fit_make_trainer = fit.make_trainer
    monkeypatch.setattr(fit, "make_trainer", spy)
    x, y = torch.randn(2, 1, 64, 64), (torch.rand(2, 2, 64, 64) > 0.5).to(torch.uint8)
    cfg = {"steps": 2, "batch_size": 2, "decoder_channels": DEC, "accelerator": "cpu"}
    cfg["swin"] = {"grad_clip": 0.5}
    run = dict(backbone_cfg=backbone, pretrained=None, out_dir=None, seed=0, progress=False)
    seg.train_segmenter(x, y, None, None, cfg={**cfg, "grad_clip": 2.0}, **run)
    seg.train_segmenter(x, y, None, None, cfg={k: v for k, v in cfg.items() if k != "swin"}, **run)
    swin = backbone is SWIN
    assert seen == [0.5 if swin else 2.0, None]
