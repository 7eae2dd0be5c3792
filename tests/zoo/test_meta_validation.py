"""A hand-edited ``medfoundry.json`` and a checkpoint of the wrong dimension are one line naming
the file and the key (exit 2), never a traceback from deep inside training."""

from __future__ import annotations

import json

import pytest

from medfoundry.cli import main
from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.zoo import read_meta, save_checkpoint
from medfoundry.zoo.meta import META_NAME

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
BACKBONE_3D = {**BACKBONE, "spatial_dims": 3}


@pytest.fixture
def checkpoint(tmp_path):
    meta = {"method": "adam", "backbone": BACKBONE, "input_size": 32}
    return save_checkpoint(tmp_path / "ckpt", create_backbone(**BACKBONE).state_dict(), meta)


def _edit(folder, change) -> None:
    path = folder / META_NAME
    document = json.loads(path.read_text())
    path.write_text(json.dumps(change(document)))


def _set(**values):
    return lambda doc: {**doc, **values}


def _backbone(**values):
    return lambda doc: {**doc, "backbone": {**doc["backbone"], **values}}


EDITS = {
    "unknown backbone": (_backbone(name="resnet1000"), r"'backbone': unknown backbone name"),
    "misspelled backbone argument": (_backbone(widht=1.0), r"'backbone': resnet10 takes no"),
    "empty object": (lambda doc: {}, r"lacks required key 'method'"),
    "a JSON list": (lambda doc: [doc], r"metadata is not a JSON object"),
    "input_size null": (_set(input_size=None), r"'input_size' is null"),
    "input_size zero": (_set(input_size=0), r"'input_size': \[0\] is not a side"),
    "input_size of 3 sides in 2D": (_set(input_size=[8, 8, 8]), r"'input_size': \[8, 8, 8\]"),
    "input_size text": (_set(input_size="big"), r"'input_size' is str"),
    "spatial_dims 4": (_set(spatial_dims=4), r"'spatial_dims': 4 is not 2 or 3"),
    "spatial_dims null": (_set(spatial_dims=None), r"'spatial_dims' is null"),
    "in_channels 0": (_set(in_channels=0), r"'in_channels': 0 is not a positive"),
    "backbone dims differ": (_backbone(spatial_dims=3), r"'backbone': spatial_dims 3 differs"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_hand_edited_metadata_is_one_line_naming_file_and_key(checkpoint, case):
    change, pattern = EDITS[case]
    _edit(checkpoint, change)
    with pytest.raises(CheckpointError, match=pattern) as err:
        read_meta(checkpoint)
    assert str(err.value).startswith(f"{checkpoint / META_NAME}: ")


@pytest.mark.parametrize("case", ["unknown backbone", "empty object", "input_size null"])
def test_cli_finetune_reports_a_hand_edited_checkpoint_in_one_line(
    checkpoint, tmp_path, capsys, case
):
    _edit(checkpoint, EDITS[case][0])
    args = ["finetune", "--task", "classification", "--data", str(tmp_path / "data")]
    code = main([*args, "--pretrained", str(checkpoint), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(checkpoint / META_NAME) in err[0]


def test_3d_checkpoint_for_2d_classification_is_one_line(tmp_path, capsys, xray_folder):
    meta = {"method": "volume_fusion", "backbone": BACKBONE_3D, "input_size": [16, 32, 32]}
    ckpt = save_checkpoint(
        tmp_path / "vf", create_backbone(**BACKBONE_3D).state_dict(), {**meta, "spatial_dims": 3}
    )
    data = tmp_path / "cls"
    for cls in ("A", "B"):
        (data / cls).mkdir(parents=True)
        for f in sorted(xray_folder.iterdir())[:2]:
            (data / cls / f.name).write_bytes(f.read_bytes())
    args = ["finetune", "--task", "classification", "--data", str(data)]
    code = main([*args, "--pretrained", str(ckpt), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{ckpt}: a 3D checkpoint (method volume_fusion); 2D fine-tuning needs a 2D" in err[0]
    assert not (tmp_path / "run" / "checkpoint").exists()
