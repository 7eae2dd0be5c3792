"""`load_model`: one typed value per fine-tuned run folder (classification, 2D segmentation with
a ResNet-UNet or a Swin-UNet, 3D segmentation), strict loading and the errors that name the
folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import medfoundry.zoo
from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.nets.segmenters2d import create_segmenter2d
from medfoundry.zoo import load_model, save_checkpoint
from medfoundry.zoo.models import Classifier

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
SWIN = {"name": "swin", "in_channels": 1, "embed_dim": 8, "depths": [1, 1, 1, 1]}
SWIN |= {"num_heads": [1, 1, 2, 2], "window_size": 2, "patch_size": 4, "drop_path": 0.0}
NORM = {"name": "percentile_minmax", "lower": 0.5, "upper": 99.5, "mean": 0.5, "std": 0.25}
DEC = [16, 16, 8, 8, 8]


def _classifier_run(run: Path) -> Classifier:
    """A run folder laid out as `finetune --task classification` writes it (random weights)."""
    torch.manual_seed(0)
    network = Classifier(create_backbone(**BACKBONE), 3)
    meta = {"task": "classification", "classes": ["a", "b", "c"], "backbone": BACKBONE}
    meta |= {"input_size": 32, "in_channels": 1, "spatial_dims": 2, "normalization": NORM}
    meta |= {"method": "finetune", "axis_order": "CHW"}
    save_checkpoint(run / "checkpoint", network.state_dict(), meta)
    return network


def _segmenter_run(run: Path) -> torch.nn.Module:
    """A run folder laid out as `finetune --task segmentation` (2D, ResNet-UNet) writes it."""
    torch.manual_seed(0)
    network = create_segmenter2d(BACKBONE, 2, DEC)
    meta = {"task": "segmentation", "structures": {"heart": ["heart"], "lungs": ["l", "r"]}}
    meta |= {"backbone": BACKBONE, "input_size": 32, "in_channels": 1, "spatial_dims": 2}
    meta |= {"normalization": NORM, "decoder_channels": DEC, "method": "finetune"}
    save_checkpoint(run / "checkpoint", network.state_dict(), meta)
    return network


def test_classifier_loads_every_tensor_with_its_record(tmp_path):
    original = _classifier_run(tmp_path / "run")
    model = medfoundry.zoo.load_model(tmp_path / "run")
    assert model.kind == "classification" and model.spatial_dims == 2
    assert model.names == ("a", "b", "c") and model.in_channels == 1
    assert model.input_size == (32, 32) and model.preprocessing == NORM
    assert model.folder == tmp_path / "run" / "checkpoint" and model.meta.task == "classification"
    assert model.tensors == len(original.state_dict()) and not model.network.training
    x = torch.randn(2, 1, 32, 32)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), original(x))
    assert load_model(tmp_path / "run" / "checkpoint").names == model.names  # or its checkpoint/


def test_resnet_unet_loads_with_structures_in_order(tmp_path):
    original = _segmenter_run(tmp_path / "run").eval()
    model = load_model(tmp_path / "run")
    assert model.kind == "segmentation2d" and model.names == ("heart", "lungs")
    assert model.input_size == (32, 32) and model.segmenter3d is None
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), original(x))


def test_swin_unet_fine_tuned_from_mae_reloads_its_decoder(tmp_path, make_jsrt_like):
    """The real fine-tune code records the Swin-UNet's decoder (a non-default MAE decoder here),
    so the run folder rebuilds the same network; without that record loading fails loudly."""
    from medfoundry.config import apply_overrides, load_config
    from medfoundry.methods import build_method
    from medfoundry.tasks.finetune import finetune_segmentation

    mae = build_method("mae", create_backbone(**SWIN), decoder_depths=(1, 1, 1))
    meta = {"method": "mae", "backbone": mae.backbone.config, "input_size": 32}
    meta |= {"decoder": mae.decoder.config, "in_channels": 1}
    save_checkpoint(tmp_path / "mae", mae.export_backbone(), meta, mae.export_decoder())
    data = make_jsrt_like(tmp_path / "data", ["a", "b", "c"], size=32)
    cfg = apply_overrides(
        load_config("finetune_segmentation"),
        ["structures=[heart]", "steps=2", "val_every=2", "accelerator=cpu", "batch_size=2"],
    )
    finetune_segmentation(data, tmp_path / "mae", tmp_path / "run", cfg, progress=False)
    model = load_model(tmp_path / "run")
    assert model.kind == "segmentation2d" and model.names == ("heart",)
    assert model.meta.decoder["depths"] == [1, 1, 1]
    assert model.network(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)

    path = tmp_path / "run" / "checkpoint" / "medfoundry.json"
    record = json.loads(path.read_text())
    del record["decoder"]
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not record its decoder config"):
        load_model(tmp_path / "run")


def test_3d_segmenter_gives_its_roi_and_store_preprocessing(tmp_path):
    from medfoundry.tasks.segmentation3d import finetune_segmentation3d

    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "msd" / sub).mkdir(parents=True)
    for i in range(3):
        image = rng.normal(40, 8, (16, 16, 16)).astype(np.float32)
        mask = np.zeros((16, 16, 16), np.uint8)
        mask[4:10, 5:11, 3:9] = 1
        image[mask > 0] += 150
        for sub, array in (("imagesTr", image), ("labelsTr", mask)):
            nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "msd" / sub / f"c_{i}.nii.gz")
    (tmp_path / "msd" / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "blob": 1}, "numTraining": 3})
    )
    cfg = {"network": "unet", "unet": {"features": [4, 4, 8, 8, 8, 4]}, "patch_size": [16, 32, 16]}
    cfg |= {"batch_size": 2, "steps": 2, "val_every": 2, "accelerator": "cpu", "hd95": False}
    finetune_segmentation3d(tmp_path / "msd", None, tmp_path / "run", cfg, progress=False)
    model = load_model(tmp_path / "run")
    assert model.kind == "segmentation3d" and model.spatial_dims == 3
    assert model.names == ("blob",) and model.input_size == (16, 32, 16)
    assert model.segmenter3d is not None and model.segmenter3d.roi == model.input_size
    assert model.preprocessing and model.tensors == len(model.network.state_dict())


def test_a_pretrained_backbone_is_not_a_model(tmp_path):
    bb = create_backbone(**BACKBONE)
    save_checkpoint(tmp_path / "ck", bb.state_dict(), {"method": "adam", "backbone": bb.config})
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "ck")
    message = str(e.value)
    assert message.startswith(str(tmp_path / "ck"))
    assert "a pretrained backbone, not a fine-tuned model; fine-tune it first " in message
    assert "(medfoundry finetune)" in message


def test_weights_that_do_not_fit_name_the_folder(tmp_path):
    _classifier_run(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoint"
    meta = json.loads((ckpt / "medfoundry.json").read_text())
    del meta["checksums"]  # weights rewritten below: unverifiable, as in an older checkpoint
    (ckpt / "medfoundry.json").write_text(json.dumps(meta))
    weights = load_file(str(ckpt / "model.safetensors"))
    head = weights.pop("head.bias")
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing, 0 unused, 0 shape") as e:
        load_model(tmp_path / "run")
    assert str(ckpt) in str(e.value)

    save_file(
        {**weights, "head.bias": head, "extra": head.clone()}, str(ckpt / "model.safetensors")
    )
    with pytest.raises(CheckpointError, match=r"0 missing, 1 unused"):
        load_model(tmp_path / "run")

    save_file({**weights, "head.bias": head}, str(ckpt / "model.safetensors"))
    meta = json.loads((ckpt / "medfoundry.json").read_text())
    (ckpt / "medfoundry.json").write_text(json.dumps({**meta, "classes": ["a", "b"]}))
    with pytest.raises(CheckpointError, match="2 shape mismatches"):
        load_model(tmp_path / "run")


def test_incomplete_or_unknown_metadata_is_a_checkpoint_error(tmp_path):
    _segmenter_run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint" / "medfoundry.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "decoder_channels"}))
    with pytest.raises(CheckpointError, match="2D segmentation metadata lacks decoder_channels"):
        load_model(tmp_path / "run")
    path.write_text(json.dumps({**meta, "task": "detection"}))
    with pytest.raises(CheckpointError, match="unknown model .task 'detection'"):
        load_model(tmp_path / "run")
    path.write_text(json.dumps({**meta, "backbone": {**BACKBONE, "name": "resnet999"}}))
    with pytest.raises(CheckpointError, match="'backbone': unknown backbone name 'resnet999'"):
        load_model(tmp_path / "run")  # the reader names it, before any network is built
    path.write_text(json.dumps({**meta, "decoder_channels": [8, 8]}))
    with pytest.raises(CheckpointError, match="cannot rebuild"):
        load_model(tmp_path / "run")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(CheckpointError, match="no medfoundry checkpoint"):
        load_model(tmp_path)
