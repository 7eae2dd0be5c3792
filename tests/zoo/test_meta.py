"""The typed checkpoint metadata: each writer's round trip, format-1 migration, errors naming
the file, and one read of ``medfoundry.json`` per entry point."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from medfoundry.cli import main
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.tasks.pretrain import checkpoint_metadata
from medfoundry.zoo import (
    BackboneSpec,
    Checkpoint,
    CheckpointMeta,
    load_backbone,
    load_model,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
)
from medfoundry.zoo import meta as meta_module
from medfoundry.zoo.meta import META_NAME, WEIGHTS_NAME
from medfoundry.zoo.models import Classifier

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
STORE_NORM = {
    "name": "store",
    "axis_order": "SPL",
    "target_spacing": [1.0, 1.0, 1.0],
    "modality": "CT",
    "normalization": {"CT": {"hu": [-1000.0, 1000.0]}},
    "resampling": "linear",
}

# what each writer records (format 1, as today's writers wrote it; no format_version)
FORMAT1 = {
    "finetune classification": {
        "task": "classification",
        "classes": ["A", "B"],
        "backbone": BACKBONE,
        "input_size": 64,
        "in_channels": 1,
        "spatial_dims": 2,
        "axis_order": "CHW",
        "normalization": XRAY_NORMALIZATION,
        "method": "finetune",
        "pretrained_from": "runs/adam",
    },
    "finetune 2D segmentation": {
        "task": "segmentation",
        "structures": {"heart": ["heart"], "lungs": ["left lung", "right lung"]},
        "backbone": BACKBONE,
        "input_size": 64,
        "in_channels": 1,
        "spatial_dims": 2,
        "axis_order": "CHW",
        "normalization": XRAY_NORMALIZATION,
        "decoder_channels": [32, 16, 16, 8, 8],
        "method": "finetune",
        "pretrained_from": "None",
    },
    "finetune 3D segmentation": {
        "task": "segmentation",
        "method": "finetune",
        "network": "resnet_unet",
        "network_options": {"backbone": {"name": "resnet10", "width": 0.125}},
        "num_classes": 3,
        "labels": {"1": "anterior", "2": "posterior"},
        "in_channels": 1,
        "spatial_dims": 3,
        "axis_order": "CDHW (D, H, W = SPL)",
        "input_size": [16, 32, 32],
        "sliding_window": {"overlap": 0.5, "sw_batch_size": 4, "mode": "gaussian"},
        "normalization": STORE_NORM,
        "pretrained_from": "runs/vf",
        "load_report": "encoder 10/10 tensors",
        "backbone": {**BACKBONE, "spatial_dims": 3},
        "decoder": {"type": "resnet_unet", "decoder_channels": [8, 8, 8, 8, 8]},
    },
    "import": {
        "method": "adam",
        "backbone": {"name": "resnet50", "in_channels": 3, "width": 1.0, "spatial_dims": 2},
        "in_channels": 3,
        "spatial_dims": 2,
        "axis_order": "CHW",
        "input_size": 224,
        "levels_trained": [0, 2, 4],
        "normalization": XRAY_NORMALIZATION,
        "imported_from": {"file": "checkpoint.pth", "sha256": "0" * 64, "format": "adam_v1"},
        "training_data": {"source": "Eden Adam-v1 ResNet-50"},
    },
}


def _pretrain_2d() -> CheckpointMeta:
    cfg = {
        "method": "mae",
        "data": {"load_size": 64, "crop_size": None},
        "mae": {"mask_ratio": 0.75},
        "normalization": XRAY_NORMALIZATION,
    }
    bb = {"name": "swin", "in_channels": 1, "patch_size": 4, "embed_dim": 8}
    return checkpoint_metadata(cfg, bb, [0], 5, ["a/"], {"depths": [1, 1, 1]})


def _pretrain_3d() -> CheckpointMeta:
    cfg = {
        "method": "volume_fusion",
        "data": {"crop_size": [16, 32, 32]},
        "volume_fusion": {"classes": 5},
        "normalization": STORE_NORM,
    }
    bb = {**BACKBONE, "spatial_dims": 3}
    decoder = {"type": "resnet_unet", "decoder_channels": [8] * 5}
    return checkpoint_metadata(cfg, bb, [0], 3, ["store/"], decoder)


def _round_trip(meta: CheckpointMeta, tmp_path) -> CheckpointMeta:
    """Save and read back; the checksums ``save_checkpoint`` adds are checked, then dropped."""
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(1)}, meta)
    read = read_meta(tmp_path / "ck")
    assert read.checksums is not None and set(read.checksums) == {WEIGHTS_NAME}
    return dataclasses.replace(read, checksums=None)


def test_pretrain_metadata_round_trips(tmp_path):
    mae = _pretrain_2d()
    assert mae.spatial_dims == 2 and mae.input_size == 64 and mae.extra["patch_size"] == 4
    assert mae.backbone == BackboneSpec("swin", {"in_channels": 1, "patch_size": 4, "embed_dim": 8})
    assert _round_trip(mae, tmp_path / "2d") == mae
    vf = _pretrain_3d()
    assert vf.spatial_dims == 3 and vf.input_size == (16, 32, 32)
    assert vf.store_preprocessing == {k: v for k, v in STORE_NORM.items() if k != "name"}
    assert vf.extra["volume_fusion"] == {"classes": 5} and vf.task is None
    assert _round_trip(vf, tmp_path / "3d") == vf


@pytest.mark.parametrize("writer", sorted(FORMAT1))
def test_each_writers_metadata_round_trips_and_keeps_its_keys(tmp_path, writer):
    document = FORMAT1[writer]
    meta = CheckpointMeta.from_json(document, "x.json")
    assert _round_trip(meta, tmp_path) == meta
    written = json.loads((tmp_path / "ck" / META_NAME).read_text())
    assert written.pop("format_version") == 2
    assert set(written.pop("checksums")) == {WEIGHTS_NAME}
    assert written == json.loads(json.dumps(document))  # same keys and values as format 1


def test_format1_file_migrates_and_loads_through_load_model_and_load_backbone(tmp_path):
    """A file as today's writers left it (no format_version, spatial_dims / in_channels only
    in the backbone) loads as before."""
    folder = tmp_path / "run" / "checkpoint"
    backbone = create_backbone(**BACKBONE)
    network = Classifier(backbone, 2)
    save_checkpoint(folder, network.state_dict(), FORMAT1["finetune classification"])
    legacy = {
        k: v
        for k, v in FORMAT1["finetune classification"].items()
        if k not in ("spatial_dims", "in_channels")
    }
    (folder / META_NAME).write_text(json.dumps(legacy))
    meta = read_meta(tmp_path / "run")
    assert meta.spatial_dims == 2 and meta.in_channels == 1 and meta.classes == ("A", "B")
    model = load_model(tmp_path / "run")
    assert model.kind == "classification" and model.names == ("A", "B")
    assert model.input_size == (64, 64) and model.meta == meta
    pretrained = tmp_path / "pre"
    save_checkpoint(pretrained, backbone.state_dict(), {"method": "adam", "backbone": BACKBONE})
    (pretrained / META_NAME).write_text(json.dumps({"method": "adam", "backbone": BACKBONE}))
    report = load_backbone(pretrained, create_backbone(**read_meta(pretrained).backbone_config))
    assert report.loaded == report.total_model


def test_missing_key_and_wrong_type_name_the_file(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, {"w": torch.zeros(1)}, FORMAT1["import"])
    file = folder / META_NAME
    file.write_text(json.dumps({k: v for k, v in FORMAT1["import"].items() if k != "method"}))
    with pytest.raises(CheckpointError, match="lacks required key 'method'") as err:
        read_meta(folder)
    assert str(file) in str(err.value)
    file.write_text(json.dumps({**FORMAT1["import"], "in_channels": "3"}))
    with pytest.raises(CheckpointError, match="'in_channels' is str") as err:
        read_meta(folder)
    assert str(file) in str(err.value)
    file.write_text(json.dumps({**FORMAT1["import"], "format_version": 7}))
    with pytest.raises(CheckpointError, match="format_version 7"):
        read_meta(folder)
    with pytest.raises(CheckpointError, match="lacks required key 'method'"):
        save_checkpoint(tmp_path / "other", {"w": torch.zeros(1)}, {"backbone": BACKBONE})


def test_resolve_checkpoint_finds_the_folder_once_and_passes_through(tmp_path):
    save_checkpoint(tmp_path / "run" / "checkpoint", {"w": torch.zeros(1)}, FORMAT1["import"])
    ckpt = resolve_checkpoint(tmp_path / "run")
    assert isinstance(ckpt, Checkpoint) and ckpt.folder == tmp_path / "run" / "checkpoint"
    assert ckpt.weights == ckpt.folder / WEIGHTS_NAME and not ckpt.has_decoder
    assert str(ckpt) == str(tmp_path / "run") and resolve_checkpoint(ckpt) is ckpt


def test_finetune_reads_the_checkpoint_metadata_once(tmp_path, xray_folder, monkeypatch):
    run = tmp_path / "pre"
    bb = create_backbone(**BACKBONE)
    save_checkpoint(
        run / "checkpoint",
        bb.state_dict(),
        {"method": "adam", "backbone": bb.config, "in_channels": 1, "input_size": 64},
    )
    data = tmp_path / "cls"
    for cls in ("A", "B"):
        shutil.copytree(xray_folder, data / cls)
    reads: list[str] = []
    original = meta_module.read_meta_file

    def counting(folder):
        reads.append(str(folder))
        return original(folder)

    monkeypatch.setattr(meta_module, "read_meta_file", counting)
    args = ["finetune", "--task", "classification", "--data", str(data), "--pretrained"]
    args += [str(run), "--out", str(tmp_path / "out"), "--steps", "2", "--no-progress"]
    assert main([*args, "--set", "accelerator=cpu"]) == 0
    assert reads == [str(run / "checkpoint")]
