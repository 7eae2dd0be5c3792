"""`medfoundry finetune` end to end on toy data: loads the backbone, trains, saves, evaluates."""

from __future__ import annotations

import json
import shutil

import pytest

from medfoundry.cli import main
from medfoundry.nets import create_backbone
from medfoundry.zoo import read_metadata, save_checkpoint

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
SWIN = {"name": "swin", "in_channels": 1, "embed_dim": 8, "depths": [1, 1, 1, 1]}
SWIN |= {"num_heads": [1, 1, 2, 2], "window_size": 2, "patch_size": 4, "drop_path": 0.0}


@pytest.fixture(params=["adam-resnet", "mae-swin"])
def checkpoint(tmp_path, request):
    """A 'pretrained' run folder holding a random toy backbone at 64² (ResNet, or a Swin with
    an MAE decoder)."""
    run = tmp_path / "run"
    meta = {"in_channels": 1, "input_size": 64}
    if request.param == "mae-swin":
        from medfoundry.methods import build_method

        mae = build_method("mae", create_backbone(**SWIN), decoder_depths=(1, 1, 1))
        meta |= {"method": "mae", "backbone": mae.backbone.config, "decoder": mae.decoder.config}
        save_checkpoint(run / "checkpoint", mae.export_backbone(), meta, mae.export_decoder())
        return run
    bb = create_backbone(**BACKBONE)
    save_checkpoint(
        run / "checkpoint", bb.state_dict(), {**meta, "method": "adam", "backbone": bb.config}
    )
    return run


def test_finetune_segmentation_loads_backbone_and_reports_test_dice(
    tmp_path, checkpoint, make_jsrt_like, capsys
):
    train = make_jsrt_like(tmp_path / "train", [f"TR{i}" for i in range(5)], seed=1)
    test = make_jsrt_like(tmp_path / "test", [f"TE{i}" for i in range(2)], seed=2)
    out = tmp_path / "seg"
    args = ["finetune", "--task", "segmentation", "--data", str(train), "--test-data", str(test)]
    args += ["--pretrained", str(checkpoint), "--out", str(out), "--steps", "6", "--no-progress"]
    args += ["--set", "structures=[heart, clavicle]", "--set", "val_every=3"]
    args += ["--set", "decoder_channels=[32, 16, 16, 8, 8]", "--set", "accelerator=cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "loaded" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] == 4 and metrics["n_val"] == 1
    assert set(metrics["test_dice"]) == {"heart", "clavicle"}
    for value in metrics["test_dice"].values():
        assert 0.0 <= value[0] <= 1.0
    meta = read_metadata(out / "checkpoint")
    assert meta["task"] == "segmentation" and meta["input_size"] == 64


def test_finetune_classification_saves_model_and_metrics(tmp_path, checkpoint, xray_folder):
    data = tmp_path / "cls"
    for cls in ("A", "B"):
        shutil.copytree(xray_folder, data / cls)
    out = tmp_path / "cls_run"
    args = ["finetune", "--task", "classification", "--data", str(data)]
    args += ["--pretrained", str(checkpoint), "--out", str(out), "--steps", "4", "--no-progress"]
    args += ["--set", "accelerator=cpu"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "loaded" in metrics["load"]
    assert read_metadata(out / "checkpoint")["task"] == "classification"
