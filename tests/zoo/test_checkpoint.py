"""Checkpoint format: round trip, loud failures, prefix handling, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch

from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.zoo import load_backbone, read_metadata, save_checkpoint


def _tiny(name: str = "resnet10", width: float = 0.125):
    return create_backbone(name, in_channels=1, width=width)


def test_round_trip_loads_every_tensor(tmp_path):
    src = _tiny()
    save_checkpoint(tmp_path / "ck", src.state_dict(), {"method": "adam", "backbone": src.config})
    dst = _tiny()
    report = load_backbone(tmp_path / "ck", dst)
    assert report.loaded == report.total_model == len(src.state_dict())
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value)
    assert read_metadata(tmp_path / "ck")["method"] == "adam"
    assert read_metadata(tmp_path / "ck")["format_version"] == 2


def test_run_folder_and_prefixed_keys(tmp_path):
    src = _tiny()
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(2, 2)
    save_checkpoint(tmp_path / "run" / "checkpoint", state, {"method": "x"})
    report = load_backbone(tmp_path / "run", _tiny())  # run folder resolves to run/checkpoint
    assert report.loaded == report.total_model
    assert report.unexpected == ["head.weight"]


def test_wrong_architecture_fails_loudly(tmp_path):
    save_checkpoint(tmp_path / "ck", _tiny("resnet10").state_dict(), {"method": "adam"})
    with pytest.raises(CheckpointError, match="did not load"):
        load_backbone(tmp_path / "ck", _tiny("resnet18", width=0.25))


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no medfoundry checkpoint"):
        read_metadata(tmp_path)
    save_checkpoint(tmp_path / "ck", _tiny().state_dict(), {"method": "adam"})
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
        load_backbone(tmp_path / "ck", _tiny())
    meta = tmp_path / "ck" / "medfoundry.json"  # without a recorded checksum: unreadable
    meta.write_text(meta.read_text().replace('"checksums"', '"old_checksums"'))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_backbone(tmp_path / "ck", _tiny())


def test_save_leaves_no_temporary_files(tmp_path):
    save_checkpoint(tmp_path / "ck", _tiny().state_dict(), {"method": "adam"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "medfoundry.json",
        "model.safetensors",
    ]
    json.loads((tmp_path / "ck" / "medfoundry.json").read_text())
