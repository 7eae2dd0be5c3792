"""Bad input through the CLI: one line naming the file, exit code 2, no checkpoint left behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli import main


def _bad_rgba(path: Path) -> None:
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), mode="RGBA").save(path)


def _bad_truncated(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an image at all")


def _bad_nan(path: Path) -> None:
    arr = np.full((64, 64), 100.0, np.float32)
    arr[10, 10] = np.nan
    Image.fromarray(arr, mode="F").save(path)


@pytest.mark.parametrize(
    "maker,name,message",
    [
        (_bad_rgba, "rgba.png", "4-channel"),
        (_bad_truncated, "cut.png", ""),
        (_bad_garbage, "garbage.png", ""),
        (_bad_nan, "nan.tif", "NaN"),
    ],
)
def test_pretrain_stops_on_bad_image(
    xray_folder, tmp_path, capsys, tiny_pretrain_args, maker, name, message
):
    maker(xray_folder / name)
    out = tmp_path / "run"
    code = main(tiny_pretrain_args("adam", xray_folder, out))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("medfoundry: error:")
    assert name in err[0] and message in err[0]
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("*.safetensors"))


def test_pretrain_on_empty_folder(tmp_path, capsys, tiny_pretrain_args):
    (tmp_path / "empty").mkdir()
    code = main(tiny_pretrain_args("moco", tmp_path / "empty", tmp_path / "run"))
    err = capsys.readouterr().err
    assert code == 2 and "empty" in err and "no image" in err


def test_finetune_rejects_missing_checkpoint(xray_folder, tmp_path, capsys):
    data = tmp_path / "cls"
    for cls in ("A", "B"):
        shutil.copytree(xray_folder, data / cls)
    code = main(
        [
            "finetune",
            "--task",
            "classification",
            "--data",
            str(data),
            "--pretrained",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "ft"),
            "--no-progress",
        ]
    )
    assert code == 2 and "no medfoundry checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["finetune", "benchmark"])
def test_mask_of_other_size_stops_segmentation(tmp_path, capsys, make_jsrt_like, command):
    train = make_jsrt_like(tmp_path / "train", [f"TR{i}" for i in range(4)], seed=1)
    test = make_jsrt_like(tmp_path / "test", ["TE0"], seed=2)
    bad = train / "masks" / "heart" / "TR2.png"
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(bad)
    out = tmp_path / "out"
    if command == "finetune":
        args = ["finetune", "--task", "segmentation", "--data", str(train), "--pretrained", "none"]
    else:
        args = ["benchmark", "jsrt-fewshot", "--train-data", str(train), "--pretrained", "none"]
        args += ["--shots", "2", "--repeats", "1", "--set", "val_size=1"]
    args += ["--test-data", str(test), "--out", str(out), "--steps", "2", "--no-progress"]
    code = main(args + ["--image-size", "32", "--set", "accelerator=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "TR2.png" in err[0] and "size" in err[0]
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob("*.safetensors"))
