"""`medfoundry finetune` checks every input before training and keeps a finished run in
`--out` unless `--overwrite`: one line, exit code 2, no training started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic3d import write_blob_msd

import medfoundry.tasks.classification as classification
import medfoundry.tasks.finetune as finetune
import medfoundry.tasks.segmentation as segmentation
import medfoundry.tasks.segmentation3d as segmentation3d
from medfoundry.cli import main
from medfoundry.errors import InputError
from medfoundry.nets import create_backbone
from medfoundry.zoo import read_metadata, save_checkpoint

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A 'pretrained' run folder holding a random toy ResNet at 64²."""
    run = tmp_path / "pre"
    bb = create_backbone(**BACKBONE)
    meta = {"in_channels": 1, "input_size": 64, "method": "adam", "backbone": bb.config}
    save_checkpoint(run / "checkpoint", bb.state_dict(), meta)
    return run


@pytest.fixture
def trained(monkeypatch) -> list[str]:
    """Records every training started (2D classification, 2D and 3D segmentation) and stops
    it: a test asserts the list stays empty when an input is bad."""
    calls: list[str] = []

    def stop(name: str):
        def fake(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} started")

        return fake

    monkeypatch.setattr(finetune, "train_classifier", stop("train_classifier"))
    monkeypatch.setattr(classification, "train_classifier", stop("train_classifier"))
    monkeypatch.setattr(segmentation, "train_segmenter", stop("train_segmenter"))
    monkeypatch.setattr(segmentation3d, "train_segmenter3d", stop("train_segmenter3d"))
    return calls


def _class_folder(root: Path, images: Path, classes: tuple[str, ...]) -> Path:
    for name in classes:
        shutil.copytree(images, root / name)
    return root


def _cls_args(data: Path, out: Path, pretrained: Path, *extra: str) -> list[str]:
    args = ["finetune", "--task", "classification", "--data", str(data), "--out", str(out)]
    args += ["--pretrained", str(pretrained), "--steps", "2", "--no-progress"]
    return args + ["--set", "accelerator=cpu", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medfoundry: error:"), err
    return err[0]


def test_missing_or_damaged_test_folder_stops_before_training(
    tmp_path, checkpoint, xray_folder, capsys, trained
):
    data = _class_folder(tmp_path / "cls", xray_folder, ("A", "B"))
    out = tmp_path / "run"
    missing = tmp_path / "no_such_test"
    assert main(_cls_args(data, out, checkpoint, "--test-data", str(missing))) == 2
    assert str(missing) in _one_error_line(capsys)
    test = _class_folder(tmp_path / "test", xray_folder, ("A", "B"))
    (test / "B" / "img03.png").write_bytes(b"not an image")  # readable only after training
    assert main(_cls_args(data, out, checkpoint, "--test-data", str(test))) == 2
    assert "img03.png" in _one_error_line(capsys)
    assert (
        trained == [] and not (out / "checkpoint").exists() and not (out / "config.json").exists()
    )


def test_other_class_names_are_one_line_naming_both_folders(
    tmp_path, checkpoint, xray_folder, capsys, trained
):
    data = _class_folder(tmp_path / "cls", xray_folder, ("NORMAL", "PNEUMONIA"))
    test = _class_folder(tmp_path / "test", xray_folder, ("NORMAL", "pneumonia"))
    out = tmp_path / "run"
    assert main(_cls_args(data, out, checkpoint, "--test-data", str(test))) == 2
    line = _one_error_line(capsys)
    assert str(test) in line and str(data) in line
    assert "only in the test folder: pneumonia" in line
    assert "only in the training folder: PNEUMONIA" in line
    assert trained == [] and not out.exists()


def test_test_folder_without_a_training_structure_stops_2d_segmentation(
    tmp_path, make_jsrt_like, capsys, trained
):
    train = make_jsrt_like(tmp_path / "train", [f"TR{i}" for i in range(3)], seed=1)
    test = make_jsrt_like(tmp_path / "test", ["TE0"], seed=2)
    shutil.rmtree(test / "masks" / "heart")
    out = tmp_path / "seg"
    args = ["finetune", "--task", "segmentation", "--data", str(train), "--pretrained", "none"]
    args += ["--test-data", str(test), "--out", str(out), "--steps", "2", "--no-progress"]
    args += ["--image-size", "32", "--set", "structures=[heart, clavicle]"]
    assert main(args + ["--set", "accelerator=cpu"]) == 2
    line = _one_error_line(capsys)
    assert "heart" in line and str(test) in line
    assert trained == [] and not out.exists()


def test_test_store_with_other_labels_stops_3d_segmentation(tmp_path, trained):
    train = write_blob_msd(tmp_path / "train", 3, seed=0)
    test = write_blob_msd(tmp_path / "test", 1, seed=1, prefix="test")
    labels = {"background": 0, "head": 1, "posterior": 2}
    (test / "dataset.json").write_text(json.dumps({"labels": labels, "numTraining": 1}))
    cfg = {"network": "unet", "patch_size": [16, 32, 16], "accelerator": "cpu", "steps": 2}
    with pytest.raises(InputError, match="differ from the training store") as err:
        segmentation3d.finetune_segmentation3d(
            train, None, tmp_path / "run", cfg, test_data=test, progress=False
        )
    assert "1=head" in str(err.value) and "1=anterior" in str(err.value)
    assert trained == [] and not (tmp_path / "run" / "config.json").exists()


def _fake_finished_run(out: Path) -> None:
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "old_weights.safetensors").write_bytes(b"old")
    (out / "metrics.json").write_text('{"old": true}\n')


def test_finished_out_is_refused_without_overwrite_and_replaced_with_it(
    tmp_path, checkpoint, xray_folder, capsys
):
    data = _class_folder(tmp_path / "cls", xray_folder, ("A", "B"))
    out = tmp_path / "run"
    _fake_finished_run(out)
    assert main(_cls_args(data, out, checkpoint)) == 2
    line = _one_error_line(capsys)
    assert str(out) in line and "--overwrite" in line and "metrics.json" in line
    assert json.loads((out / "metrics.json").read_text()) == {"old": True}
    assert main(_cls_args(data, out, checkpoint, "--overwrite")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "old" not in metrics and metrics["n_train"] > 0
    assert not (out / "checkpoint" / "old_weights.safetensors").exists()
    assert read_metadata(out / "checkpoint")["task"] == "classification"
    # an unfinished folder (config only, as a killed run leaves it) keeps today's behaviour
    (out / "metrics.json").unlink()
    shutil.rmtree(out / "checkpoint")
    assert main(_cls_args(data, out, checkpoint)) == 0


def test_overwrite_keeps_the_old_run_on_bad_input_and_drops_its_marker_on_failure(
    tmp_path, checkpoint, xray_folder, capsys, trained
):
    data = _class_folder(tmp_path / "cls", xray_folder, ("A", "B"))
    out = tmp_path / "run"
    _fake_finished_run(out)
    bad_test = tmp_path / "nothing"
    assert main(_cls_args(data, out, checkpoint, "--overwrite", "--test-data", str(bad_test))) == 2
    capsys.readouterr()
    assert (out / "metrics.json").is_file()  # inputs are checked before the old run goes
    with pytest.raises(RuntimeError, match="train_classifier started"):
        main(_cls_args(data, out, checkpoint, "--overwrite"))
    assert trained == ["train_classifier"]
    # a failed rerun leaves an unfinished folder, never the old marker beside new files
    assert not (out / "metrics.json").exists() and not (out / "checkpoint").exists()


def test_out_holding_the_pretrained_checkpoint_is_refused(checkpoint, xray_folder, capsys):
    data = _class_folder(checkpoint.parent / "cls", xray_folder, ("A", "B"))
    assert main(_cls_args(data, checkpoint, checkpoint, "--overwrite")) == 2
    assert "--pretrained checkpoint itself" in _one_error_line(capsys)
    assert (checkpoint / "checkpoint" / "model.safetensors").is_file()
