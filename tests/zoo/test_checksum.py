"""Weights are verified: each weights file's sha256 is recorded in ``medfoundry.json`` and
checked on every load, so flipped bytes are an error naming the file; checkpoints written
before checksums existed still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfoundry.cli import main
from medfoundry.errors import CheckpointError
from medfoundry.nets import create_backbone
from medfoundry.zoo import load_backbone, load_decoder, load_model, read_meta, save_checkpoint
from medfoundry.zoo.meta import DECODER_NAME, META_NAME, WEIGHTS_NAME, file_checksum
from medfoundry.zoo.models import Classifier

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
NORM = {"name": "percentile_minmax", "lower": 0.5, "upper": 99.5, "mean": 0.5, "std": 0.25}


def _flip_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the tensor data (past the safetensors header), as a disk error
    or an edit would: the file still parses, only the numbers change."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    start = header + (len(data) - header) // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def pretrained(tmp_path) -> Path:
    """A backbone checkpoint with a (toy) decoder file."""
    backbone = create_backbone(**BACKBONE)
    decoder = {"proj.weight": torch.randn(4, 4)}
    meta = {"method": "adam", "backbone": backbone.config, "input_size": 32}
    return save_checkpoint(tmp_path / "ckpt", backbone.state_dict(), meta, decoder=decoder)


def test_save_records_a_sha256_of_each_weights_file(pretrained):
    meta = read_meta(pretrained)
    assert meta.checksums == {
        WEIGHTS_NAME: file_checksum(pretrained / WEIGHTS_NAME),
        DECODER_NAME: file_checksum(pretrained / DECODER_NAME),
    }
    assert all(v.startswith("sha256:") and len(v) == 71 for v in meta.checksums.values())


def test_untouched_weights_load(pretrained):
    backbone = create_backbone(**BACKBONE)
    assert load_backbone(pretrained, backbone).loaded == len(backbone.state_dict())


def test_flipped_bytes_in_the_weights_are_an_error_naming_the_file(pretrained):
    _flip_bytes(pretrained / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="checksum mismatch") as err:
        load_backbone(pretrained, create_backbone(**BACKBONE))
    message = str(err.value)
    assert message.startswith(f"{pretrained / WEIGHTS_NAME}: checksum mismatch (file damaged")
    assert "\n" not in message


def test_flipped_bytes_in_the_decoder_are_an_error_naming_it(pretrained):
    _flip_bytes(pretrained / DECODER_NAME, count=4)
    with pytest.raises(CheckpointError, match=rf"{DECODER_NAME}: checksum mismatch"):
        load_decoder(pretrained, torch.nn.Module())


def test_a_checkpoint_without_checksums_still_loads(pretrained):
    """Format 1 / early format 2 files have no checksums: they load unverified."""
    path = pretrained / META_NAME
    document = json.loads(path.read_text())
    del document["checksums"]
    document.pop("format_version")
    path.write_text(json.dumps(document))
    _flip_bytes(pretrained / WEIGHTS_NAME)  # unverifiable, so it loads
    backbone = create_backbone(**BACKBONE)
    assert read_meta(pretrained).checksums is None
    assert load_backbone(pretrained, backbone).loaded == len(backbone.state_dict())


def test_a_malformed_checksum_is_an_error_naming_the_key(pretrained):
    path = pretrained / META_NAME
    document = json.loads(path.read_text())
    document["checksums"][WEIGHTS_NAME] = "md5:1234"
    path.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=rf"{META_NAME}: metadata key 'checksums'"):
        read_meta(pretrained)


def test_fine_tuned_model_and_cli_refuse_damaged_weights(tmp_path, capsys):
    """``load_model`` (predict, export) verifies too; the CLI prints one line, exit 2."""
    classes = ("A", "B")
    model = Classifier(create_backbone(**BACKBONE), len(classes))
    meta = {
        "method": "finetune",
        "task": "classification",
        "classes": list(classes),
        "backbone": BACKBONE,
        "input_size": 32,
        "normalization": NORM,
    }
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoint", model.state_dict(), meta)
    assert load_model(run).tensors == len(model.state_dict())
    _flip_bytes(run / "checkpoint" / WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_model(run)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (32, 32), 10).save(image)
    code = main(["predict", "--model", str(run), "--input", str(image), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{run / 'checkpoint' / WEIGHTS_NAME}: checksum mismatch" in err[0]
