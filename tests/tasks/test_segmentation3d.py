"""3D segmentation fine-tuning on tiny synthetic MSD folders: learning, sampling, sliding-window
inference, checkpoint loading, metrics and bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic3d import write_blob_msd

from medfoundry.cli import main
from medfoundry.config import apply_overrides, load_config
from medfoundry.data.store.build import prepare_store
from medfoundry.data.store.patches import PatchBatches, foreground_flags
from medfoundry.data.store.reader import open_store
from medfoundry.errors import CheckpointError, InputError, MedfoundryError
from medfoundry.methods.losses import deep_supervision_weights
from medfoundry.metrics.segmentation3d import dice_per_class, hd95_per_class
from medfoundry.nets import create_backbone
from medfoundry.nets.pctnet import PCTNetDecoder
from medfoundry.nets.segmenters3d import create_segmenter3d
from medfoundry.tasks.pretrain import pretrain
from medfoundry.tasks.segmentation3d import (
    evaluate_cases,
    finetune_segmentation3d,
    predict_volume,
    train_segmenter3d,
)
from medfoundry.train.segment3d_module import Segment3DModule
from medfoundry.zoo import read_meta, save_checkpoint
from medfoundry.zoo.adapt3d import (
    build_segmenter3d,
    check_preprocessing,
    network_setup,
    network_size_multiple,
)

TINY_RESNET = {"backbone": {"name": "resnet10", "width": 0.125}, "decoder_channels": [8] * 5}
UNET_CFG = {
    "network": "unet",
    "unet": {"features": [8, 8, 16, 16, 32, 8]},
    "patch_size": [16, 32, 16],
    "accelerator": "cpu",
    "hd95": False,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Train (8 cases) and test (3 cases) MSD folders of 16 x 20 x 16 blobs, and the store."""
    base = tmp_path_factory.mktemp("msd3d")
    train = write_blob_msd(base / "train", 8, seed=0)
    test = write_blob_msd(base / "test", 3, seed=1, prefix="test")
    prepare_store(train, base / "store", progress=False)
    return {"base": base, "train": train, "test": test, "store": base / "store"}


@pytest.fixture(scope="module")
def vf_run(data):
    """A real (one-epoch, tiny) Volume Fusion pretraining run on the training store."""
    cfg = apply_overrides(
        load_config("volume_fusion"),
        [
            "backbone={name: resnet10, width: 0.125, in_channels: 1, spatial_dims: 3}",
            "epochs=1",
            "optim.batch_size=2",
            "data.crop_size=[32, 32, 32]",
            "volume_fusion.decoder_channels=[8, 8, 8, 8, 8]",
            "trainer={accelerator: cpu, devices: 1}",
        ],
    )
    return pretrain(cfg, [data["store"]], data["base"] / "vf", progress=False)


TINY_PCTNET = {"backbone": {"name": "pctnet", "width": 0.125, "window_size": 4}}


@pytest.fixture(scope="module")
def vf_pctnet_run(data):
    """A real (one-epoch, tiny) Volume Fusion PCT-Net pretraining run, through the CLI."""
    run = data["base"] / "vf_pctnet"
    args = ["pretrain", "--method", "volume_fusion", "--config", "volume_fusion_pctnet"]
    args += ["--data", str(data["store"]), "--out", str(run), "--no-progress", "--epochs", "1"]
    args += ["--batch-size", "2", "--accelerator", "cpu", "--devices", "1"]
    for pair in (
        "backbone.width=0.125",
        "backbone.window_size=4",
        "data.crop_size=[16, 32, 32]",
        "data.crops_per_volume=1",
        "data.val_fraction=0.2",
    ):
        args += ["--set", pair]
    assert main(args) == 0
    return run


def test_dice_on_a_learnable_blob_rises_and_loss_falls(data, tmp_path):
    store = open_store(data["store"])
    cfg = {**UNET_CFG, "steps": 60, "val_every": 30, "lr": 1e-2}
    setup = network_setup(cfg, None)
    torch.manual_seed(0)
    untrained = create_segmenter3d("unet", 1, 3, **cfg["unet"])
    before = evaluate_cases(untrained, store, [6, 7], cfg)
    model, info = train_segmenter3d(
        store, list(range(6)), [6, 7], setup=setup, cfg=cfg, seed=0, out_dir=tmp_path
    )
    after = evaluate_cases(model, store, [6, 7], cfg)
    assert np.mean([r["dice_mean"] for r in after]) > 0.7
    assert np.mean([r["dice_mean"] for r in after]) > np.mean([r["dice_mean"] for r in before])
    assert info["best_step"] in (30, 60) and info["best_val_dice"] > 0.7
    rows = [r for r in csv.DictReader(open(tmp_path / "logs" / "metrics.csv")) if r["train/loss"]]
    losses = [float(r["train/loss"]) for r in rows]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])


def test_sliding_window_output_has_the_volume_shape(data):
    torch.manual_seed(0)
    net = create_segmenter3d("unet", 1, 3, features=[4, 4, 8, 8, 16, 4])
    volume = torch.rand(1, 17, 37, 19)  # (C, D, H, W), no side divisible by the roi
    probs = predict_volume(net, volume, roi=[16, 32, 16], overlap=0.5, sw_batch_size=2)
    assert probs.shape == (3, 17, 37, 19)
    assert torch.allclose(probs.sum(0), torch.ones(17, 37, 19), atol=1e-5)
    assert net.training  # mode restored


def test_foreground_fraction_of_patches_is_at_least_the_configured_one(tmp_path):
    """Large volumes, a small blob: uniform patches rarely hit it, so the fraction shows."""
    write_blob_msd(tmp_path / "big", 2, shape=(48, 48, 48), seed=3)
    for path in (tmp_path / "big" / "labelsTr").iterdir():  # shrink the label to a few voxels
        img = nib.load(path)
        lab = np.asarray(img.dataobj).copy()
        keep = np.zeros_like(lab)
        idx = np.argwhere(lab > 0)[:5]
        keep[tuple(idx.T)] = lab[tuple(idx.T)]
        nib.save(nib.Nifti1Image(keep, img.affine), path)
    prepare_store(tmp_path / "big", tmp_path / "store", crop_foreground=False, progress=False)
    store = open_store(tmp_path / "store")

    def measured(fraction: float) -> float:
        batches = PatchBatches(store, [0, 1], [8, 8, 8], 3, 40, fraction, seed=0)
        hits = [(y.flatten(1) > 0).any(1) for _, y in (batches[k] for k in range(len(batches)))]
        return float(torch.cat(hits).float().mean())

    assert measured(1 / 3) >= 1 / 3
    assert measured(0.0) < 1 / 3  # uniform patches alone do not reach it: the test can fail
    assert measured(1.0) == 1.0
    flags = foreground_flags(0, 100, 1 / 3)
    assert all(flags[:n].sum() == int(np.ceil(n / 3)) for n in range(1, 101))
    assert foreground_flags(0, 1, 1 / 3)[0]  # batch size 1 still gets foreground patches


def test_volumes_smaller_than_the_patch_are_padded_not_cropped(data):
    store = open_store(data["store"])
    shape = store.cases[0]["shape"]
    assert all(s < p for s, p in zip(shape, [32, 32, 32], strict=True))
    images, labels = PatchBatches(store, [0], [32, 32, 32], 2, 1, 0.0, seed=0)[0]
    assert images.shape == (2, 1, 32, 32, 32) and labels.shape == (2, 1, 32, 32, 32)
    whole = int((store.label(0) > 0).sum())
    assert [int((y > 0).sum()) for y in labels] == [whole, whole]  # the whole case is inside
    assert float(images.sum()) == pytest.approx(2 * float(store.image(0).astype(np.float32).sum()))


def test_volume_fusion_checkpoint_loads_encoder_and_decoder(data, vf_run):
    meta = read_meta(vf_run)
    setup = network_setup({"network": "resnet_unet"}, vf_run)
    assert setup["network"] == "resnet_unet"
    assert setup["options"]["decoder_channels"] == meta.decoder["decoder_channels"]
    torch.manual_seed(0)
    model, info = build_segmenter3d(setup, 3)
    n_enc, n_dec = len(model.encoder.state_dict()), len(model.decoder.state_dict())
    assert info["encoder"] == f"{n_enc}/{n_enc}" and info["decoder"] == f"{n_dec}/{n_dec}"
    assert info["head"] == "re-initialised"
    torch.manual_seed(0)
    scratch, scratch_info = build_segmenter3d({**setup, "checkpoint": None}, 3)
    assert scratch_info["summary"] == "random initialisation"
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(x), scratch.eval()(x))
    check_preprocessing(meta, vf_run, open_store(data["store"]))  # same store: passes
    torch.manual_seed(0)
    enc_only, enc_info = build_segmenter3d(setup, 3, decoder=False)  # load_decoder: false
    assert enc_info["decoder"].startswith("not loaded")
    assert "decoder_report" not in enc_info
    for k, v in enc_only.encoder.state_dict().items():
        assert torch.equal(v, model.encoder.state_dict()[k]), k
    assert torch.equal(
        enc_only.decoder.state_dict()[k0 := next(iter(scratch.decoder.state_dict()))],
        scratch.decoder.state_dict()[k0],
    )  # same seed, decoder left at its init


def test_encoder_only_checkpoint_reports_no_decoder(data, tmp_path):
    store = open_store(data["store"])
    bb = create_backbone(name="resnet10", width=0.125, in_channels=1, spatial_dims=3)
    meta = {
        "method": "voco",
        "backbone": bb.config,
        "in_channels": 1,
        "spatial_dims": 3,
        "normalization": {"name": "store", **store.preprocessing},
    }
    save_checkpoint(tmp_path / "ckpt", bb.state_dict(), meta)
    model, info = build_segmenter3d(
        network_setup({"resnet_unet": TINY_RESNET}, tmp_path / "ckpt"), 3
    )
    assert info["decoder"] == "none in checkpoint"
    assert info["encoder"] == f"{len(bb.state_dict())}/{len(bb.state_dict())}"
    assert model.config["decoder_channels"] == [8] * 5  # from the config: no decoder to match


def test_preprocessing_mismatch_names_both(data, vf_run, tmp_path):
    meta = read_meta(vf_run)
    meta = dataclasses.replace(
        meta, normalization={**meta.normalization, "target_spacing": [2.0, 2.0, 2.0]}
    )
    with pytest.raises(CheckpointError, match="target_spacing") as err:
        check_preprocessing(meta, vf_run, open_store(data["store"]))
    assert str(vf_run) in str(err.value) and str(data["store"]) in str(err.value)


def test_finetune_cli_3d_from_a_volume_fusion_run(data, vf_run, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--task", "segmentation", "--data", str(data["train"])]
    args += ["--test-data", str(data["test"]), "--pretrained", str(vf_run), "--out", str(out)]
    args += ["--steps", "4", "--patch-size", "32", "32", "32", "--set", "val_every=2"]
    args += ["--set", "accelerator=cpu", "--no-progress"]
    assert main(args) == 0
    assert "initialisation: encoder" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["load"]["decoder"].split("/")[0] == metrics["load"]["decoder"].split("/")[1]
    assert metrics["n_test"] == 3 and metrics["n_train"] + metrics["n_val"] == 8
    rows = list(csv.DictReader(open(out / "cases.csv")))
    assert sorted(r["split"] for r in rows) == ["test"] * 3 + ["val"] * metrics["n_val"]
    assert {"dice_anterior", "dice_posterior", "hd95_anterior", "hd95_posterior"} <= set(rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["network_resolved"]["network"] == "resnet_unet"
    assert (out / "versions.json").is_file()
    meta = read_meta(out)
    assert meta.spatial_dims == 3 and meta.normalization["name"] == "store"
    # the fine-tuned run is itself a 3D checkpoint: encoder and decoder load back
    _, info = build_segmenter3d(network_setup({}, out), 3)
    assert info["decoder"] != "none in checkpoint"
    assert main([*args, "--image-size", "64"]) == 2  # a 2D flag on the 3D path


def test_pctnet_volume_fusion_run_fine_tunes_with_every_encoder_and_decoder_tensor(
    data, vf_pctnet_run, tmp_path, capsys
):
    meta = read_meta(vf_pctnet_run)
    n_enc = len(create_backbone(**meta.backbone.config).state_dict())
    n_dec = len(PCTNetDecoder.from_config(meta.decoder).state_dict())
    out = tmp_path / "run"
    args = ["finetune", "--task", "segmentation", "--data", str(data["train"])]
    args += ["--test-data", str(data["test"]), "--pretrained", str(vf_pctnet_run)]
    args += ["--out", str(out), "--steps", "2", "--patch-size", "16", "32", "32"]
    args += ["--set", "val_every=2", "--set", "accelerator=cpu", "--no-progress"]
    assert main(args) == 0
    summary = f"encoder {n_enc}/{n_enc} tensors, decoder {n_dec}/{n_dec} tensors"
    assert summary in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["network"] == "pctnet" and metrics["n_test"] == 3
    load = metrics["load"]
    assert load["summary"] == f"{summary}, head and aux_heads re-initialised"
    for part in ("encoder_report", "decoder_report"):
        assert "(0 missing, 0 unused, 0 shape mismatches)" in load[part]
    # the tensors are the checkpoint's, not merely counted
    model, _ = build_segmenter3d(network_setup({}, vf_pctnet_run), 3)
    for part, file in (("encoder", "model.safetensors"), ("decoder", "decoder.safetensors")):
        saved = load_file(str(vf_pctnet_run / "checkpoint" / file))
        state = getattr(model, part).state_dict()
        assert all(torch.equal(state[k], v) for k, v in saved.items()), part
    # the fine-tuned run is a PCT-Net checkpoint again
    assert read_meta(out).decoder["type"] == "pctnet"
    assert network_setup({}, out)["network"] == "pctnet"


def test_pctnet_fine_tuning_is_deeply_supervised_and_validates_the_main_output():
    torch.manual_seed(0)
    model = create_segmenter3d("pctnet", 1, 3, **TINY_PCTNET)
    module = Segment3DModule(model, [1, 2], ["a", "p"], [8, 16, 16], cfg={"augment": None})
    images = torch.randn(2, 1, 8, 16, 16)
    labels = torch.randint(0, 3, (2, 1, 8, 16, 16))
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        loss = module.training_step((images, labels), 0)
    torch.manual_seed(1)  # the same dropout / drop-path draws
    outputs = model(images)
    assert len(outputs) == 4
    terms = [module.loss_fn.criterion(o.float(), labels) for o in outputs]
    weights = deep_supervision_weights(4)
    assert torch.allclose(loss, sum(w * t for w, t in zip(weights, terms, strict=True)))
    assert not torch.allclose(loss, terms[0])  # the auxiliary outputs count
    probs = predict_volume(model, torch.rand(1, 11, 20, 17), [8, 16, 16])
    assert probs.shape == (3, 11, 20, 17) and model.training


def test_scratch_pctnet_from_the_config_and_the_per_axis_patch_rule(data, tmp_path):
    cfg = {"network": "pctnet", "pctnet": TINY_PCTNET, "accelerator": "cpu", "hd95": False}
    cfg |= {"patch_size": [8, 16, 16], "steps": 2, "val_every": 2}
    metrics = finetune_segmentation3d(data["store"], None, tmp_path / "run", cfg, progress=False)
    assert metrics["network"] == "pctnet"
    assert metrics["load"]["summary"] == "random initialisation"
    store = open_store(data["store"])
    bad = {**cfg, "patch_size": [12, 16, 16]}  # D must be a multiple of 8 in resolution_mode 1
    with pytest.raises(MedfoundryError, match=r"multiple of \(8, 16, 16\) along \(D, H, W\)") as e:
        train_segmenter3d(store, [0], [], setup=network_setup(bad, None), cfg=bad, seed=0)
    assert "D = 12 is not" in str(e.value) and "PCT-Net with resolution_mode 1" in str(e.value)
    mode0 = {**bad, "pctnet": {"backbone": {**TINY_PCTNET["backbone"], "resolution_mode": 0}}}
    mode0["patch_size"] = [8, 16, 16]  # fine in mode 1, not in mode 0 (16, 16, 16)
    with pytest.raises(MedfoundryError, match="D = 8 is not"):
        train_segmenter3d(store, [0], [], setup=network_setup(mode0, None), cfg=mode0, seed=0)
    with pytest.raises(ValueError, match=r"roi \[12, 16, 16\]"):
        evaluate_cases(
            create_segmenter3d("pctnet", 1, 3, **TINY_PCTNET),
            store,
            [0],
            bad,
            size_multiple=network_size_multiple(network_setup(bad, None)),
        )


def test_2d_checkpoint_is_refused_by_the_3d_path(data, tmp_path):
    bb = create_backbone(name="resnet10", width=0.125, in_channels=1)
    save_checkpoint(tmp_path / "c2d", bb.state_dict(), {"backbone": bb.config, "method": "adam"})
    with pytest.raises(CheckpointError, match="2D checkpoint"):
        finetune_segmentation3d(data["store"], tmp_path / "c2d", tmp_path / "o", {})


def test_scratch_only_network_refuses_a_checkpoint(vf_run):
    with pytest.raises(CheckpointError, match="scratch only"):
        network_setup({"network": "unet"}, vf_run)


def test_named_network_the_checkpoint_does_not_fit_is_an_error(vf_run):
    with pytest.raises(CheckpointError, match="'pctnet' is configured.*network: auto"):
        network_setup({"network": "pctnet"}, vf_run)
    assert network_setup({"network": "auto"}, vf_run)["network"] == "resnet_unet"
    assert network_setup({"network": "resnet_unet"}, vf_run)["network"] == "resnet_unet"
    assert network_setup({}, None)["network"] == "resnet_unet"  # auto without a checkpoint


def test_empty_label_case_stays_in_training_with_a_warning(tmp_path):
    msd = write_blob_msd(tmp_path / "msd", 4, seed=2, empty=[0])
    cfg = {**UNET_CFG, "steps": 2, "val_every": 2, "val_fraction": 0.25}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = finetune_segmentation3d(msd, None, tmp_path / "run", cfg, progress=False)
    assert metrics["empty_label_training_cases"] == ["case_000"]
    assert any("empty label" in str(w.message) for w in caught)
    assert metrics["n_train"] + metrics["n_val"] == 4


def test_bad_volumes_fail_with_the_file_named(tmp_path):
    msd = write_blob_msd(tmp_path / "shape", 2, seed=0)
    bad = msd / "labelsTr" / "case_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 20, 15), np.uint8), np.eye(4)), bad)
    with pytest.raises(InputError, match="label shape") as err:
        finetune_segmentation3d(msd, None, tmp_path / "o1", UNET_CFG, progress=False)
    assert "case_001" in str(err.value)
    four = write_blob_msd(tmp_path / "four", 2, seed=0)
    path = four / "imagesTr" / "case_000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 20, 16, 2), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="4D"):
        finetune_segmentation3d(four, None, tmp_path / "o2", UNET_CFG, progress=False)
    flat = write_blob_msd(tmp_path / "flat", 2, seed=0)
    for sub in ("imagesTr", "labelsTr"):
        nib.save(
            nib.Nifti1Image(np.ones((16, 20), np.float32), np.eye(4)),
            flat / sub / "case_000.nii.gz",
        )
    with pytest.raises(InputError, match="single slice"):
        finetune_segmentation3d(flat, None, tmp_path / "o3", UNET_CFG, progress=False)
    with pytest.raises(InputError, match="not a 3D store"):
        finetune_segmentation3d(tmp_path, None, tmp_path / "o4", UNET_CFG, progress=False)


def test_patch_that_does_not_fit_the_network_is_a_config_error(data):
    store = open_store(data["store"])
    cfg = {**UNET_CFG, "patch_size": [16, 20, 16], "steps": 1}
    with pytest.raises(MedfoundryError, match="multiple of 16"):
        train_segmenter3d(store, [0], [], setup=network_setup(cfg, None), cfg=cfg, seed=0)


def test_dice_and_hd95_conventions():
    a = np.zeros((24, 24, 24), np.uint8)
    a[6:14, 6:14, 6:14] = 1
    b = np.roll(a, 3, axis=0)  # the cube shifted by 3 voxels along D
    spacing = (2.0, 1.0, 0.5)
    assert np.allclose(hd95_per_class(a, a, [1], spacing), [0.0])
    assert np.allclose(hd95_per_class(a, b, [1], spacing), [3 * 2.0])
    assert np.allclose(hd95_per_class(a, np.roll(a, 3, axis=2), [1], spacing), [3 * 0.5])
    diagonal = np.linalg.norm(np.array([24, 24, 24]) * spacing)
    assert np.allclose(hd95_per_class(a, np.zeros_like(a), [1, 2], spacing), [diagonal, 0.0])
    assert np.allclose(dice_per_class(a, a, [1, 2]), [1.0, 1.0])
    assert np.allclose(dice_per_class(a, b, [1]), [5 / 8])
    assert np.allclose(dice_per_class(a, np.zeros_like(a), [1]), [0.0])


def test_hd95_matches_monai_when_scipy_is_there():
    pytest.importorskip("scipy")
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(0)
    a = (rng.random((12, 14, 10)) > 0.7).astype(np.uint8)
    b = (rng.random((12, 14, 10)) > 0.7).astype(np.uint8)
    ref = compute_hausdorff_distance(
        torch.as_tensor(a)[None, None].float(),
        torch.as_tensor(b)[None, None].float(),
        include_background=True,
        percentile=95,
        spacing=[1.5, 1.0, 0.8],
    )
    assert np.allclose(hd95_per_class(a, b, [1], (1.5, 1.0, 0.8)), ref[0].numpy(), atol=1e-4)
