"""2D prediction: a tiny U-Net fine-tuned with the real code segments a non-square image of
another size at its own size; label map, overlay, classification CSV, skip / overwrite /
continue-on-error, and inputs that do not fit the model."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import medfoundry
from medfoundry.cli import main
from medfoundry.config import apply_overrides, load_config
from medfoundry.errors import InputError
from medfoundry.nets import create_backbone
from medfoundry.tasks.finetune import finetune_classification, finetune_segmentation
from medfoundry.tasks.predict2d import label_map, predict2d
from medfoundry.zoo import load_model, save_checkpoint
from medfoundry.zoo.models import Classifier

BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
STRUCTURES = ("disk", "box")  # a bright disk and a dark box: thresholds of the image


def _phantom(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A uint8 'radiograph' (H, W) with a bright disk and a dark box, and their masks."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.45) * w
    r = rng.uniform(0.15, 0.22) * min(h, w)
    disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    box = np.zeros(shape, bool)
    y0, x0 = int(rng.uniform(0.2, 0.5) * h), int(rng.uniform(0.6, 0.7) * w)
    box[y0 : y0 + int(0.3 * h), x0 : x0 + int(0.2 * w)] = True
    image = np.full(shape, 120.0)
    image[disk], image[box] = 220.0, 30.0
    image += rng.normal(0, 8, shape)
    return np.clip(image, 0, 255).astype(np.uint8), {"disk": disk, "box": box}


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> dict:
    """A tiny ResNet-UNet fine-tuned (60 steps, 32²) on 8 phantoms of 48²; a 40x60 test image."""
    base = tmp_path_factory.mktemp("predict2d")
    rng = np.random.default_rng(0)
    for i in range(8):
        image, masks = _phantom((48, 48), rng)
        _png(base / "data" / "images" / f"p{i}.png", image)
        for name in STRUCTURES:
            _png(base / "data" / "masks" / name / f"p{i}.png", masks[name].astype(np.uint8) * 255)
    cfg = apply_overrides(
        load_config("finetune_segmentation"),
        [
            "backbone={name: resnet10, in_channels: 1, width: 0.125, spatial_dims: 2}",
            "image_size=32",
            "decoder_channels=[16, 16, 8, 8, 8]",
            "steps=60",
            "batch_size=4",
            "val_every=30",
            "lr=0.01",
            "augment=null",
            "accelerator=cpu",
            "structures=[disk, box]",
        ],
    )
    finetune_segmentation(base / "data", None, base / "run", cfg, progress=False)
    image, masks = _phantom((40, 60), np.random.default_rng(7))
    return {
        "run": base / "run",
        "image": _png(base / "inputs" / "new.png", image),
        "array": image,
        "masks": masks,
    }


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> dict:
    """A tiny classifier fine-tuned (3 steps, 32²) with the real code on two class folders."""
    base = tmp_path_factory.mktemp("classify2d")
    rng = np.random.default_rng(1)
    for label, level in (("A", 60.0), ("B", 180.0)):
        for i in range(4):
            image = np.clip(level + rng.normal(0, 10, (40, 40)), 0, 255).astype(np.uint8)
            _png(base / "data" / label / f"patient{label}{i}_x.png", image)
    cfg = {
        **load_config("finetune_classification"),
        "backbone": BACKBONE,
        "image_size": 32,
        "steps": 3,
        "batch_size": 4,
        "val_every": 3,
        "accelerator": "cpu",
    }
    finetune_classification(base / "data", None, base / "run", cfg, progress=False)
    return {"run": base / "run", "data": base / "data"}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def test_masks_align_with_the_truth_at_the_original_size(seg_run, tmp_path):
    out = tmp_path / "out"
    summary = medfoundry.predict(
        seg_run["run"], seg_run["image"], out, overlay=True, progress=False
    )
    assert [p.name for p in summary.written] == ["new_labels.png"] and not summary.failed
    assert sorted(p.name for p in out.iterdir()) == [
        "new_box.png",
        "new_disk.png",
        "new_labels.png",
        "new_overlay.png",
    ]
    rng = np.random.default_rng(0)
    for name in STRUCTURES:
        mask = _read(out / f"new_{name}.png")
        assert mask.shape == (40, 60) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        truth = seg_run["masks"][name]
        chance = _dice(rng.random(truth.shape) < truth.mean(), truth)
        assert _dice(mask > 0, truth) > 0.75 > chance + 0.4  # 0.94 (disk), 0.88 (box) when written
    labels = _read(out / "new_labels.png")
    assert labels.shape == (40, 60) and set(np.unique(labels)) <= {0, 1, 2}
    np.testing.assert_array_equal(labels == 1, _read(out / "new_disk.png") > 0)
    overlay = _read(out / "new_overlay.png")
    assert overlay.shape == (40, 60, 3) and overlay.dtype == np.uint8
    box = seg_run["masks"]["box"] & (_read(out / "new_box.png") > 0)
    assert (overlay[box][:, 0] != overlay[box][:, 1]).any()  # coloured where a mask is


def test_dicom_radiographs_in_a_folder_are_one_input_per_file(
    seg_run, tmp_path, write_dicom_series
):
    image = seg_run["array"].astype(np.int16)
    folder = tmp_path / "dicom"
    write_dicom_series(folder, np.stack([image, image]), modality="MR")
    out = tmp_path / "out"
    summary = predict2d(seg_run["run"], folder, out, progress=False)
    assert sorted(p.name for p in summary.written) == ["000_labels.png", "001_labels.png"]
    png = tmp_path / "png"
    medfoundry.predict(seg_run["run"], seg_run["image"], png, progress=False)
    for stem in ("000", "001"):
        for name in STRUCTURES:
            dicom_mask = _read(out / f"{stem}_{name}.png")
            assert _dice(dicom_mask > 0, _read(png / f"new_{name}.png") > 0) > 0.98


def test_label_map_later_structures_win():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2], masks[1, 1:3], masks[2, 3, 3] = True, True, True
    labels = label_map(masks)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[:, 0], [1, 2, 2, 0])
    assert labels[3, 3] == 3 and labels[0, 0] == 1


def test_cli_skips_overwrites_and_continues_on_error(seg_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(seg_run["image"], images / "a.png")
    Image.fromarray(seg_run["array"]).save(images / "b.jpg", quality=95)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["predict", "--model", str(seg_run["run"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--input", str(images)]) == 0
    assert "2 written, 0 skipped" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 6

    (out / "a_disk.png").write_bytes(b"stale")
    assert main([*args, "--input", str(images)]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert (out / "a_disk.png").read_bytes() == b"stale"
    assert main([*args, "--input", str(images / "a.png"), "--overwrite", "--probabilities"]) == 0
    captured = capsys.readouterr()
    assert "1 written, 0 skipped" in captured.out
    assert "note: --probabilities applies to 3D" in captured.err
    assert _read(out / "a_disk.png").shape == (40, 60)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left

    bad = images / "bad.png"
    bad.write_bytes(b"not a png")
    assert main([*args, "--input", str(bad), str(images / "a.png"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medfoundry: error: {bad}: not a readable")
    missing = tmp_path / "missing.png"
    assert main([*args, "--input", str(bad), str(missing), str(images), "--continue-on-error"]) == 2
    captured = capsys.readouterr()
    assert "0 written, 2 skipped" in captured.out and "2 failed" in captured.out
    assert f"medfoundry: failed: {bad}: not a readable" in captured.err
    assert f"medfoundry: failed: {missing}: not found" in captured.err


def test_inputs_that_do_not_fit_the_model_are_clear_errors(seg_run, tmp_path):
    volume = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(6, 7, 8).astype(np.float32), np.eye(4)), volume)
    with pytest.raises(InputError, match=r"ct.nii.gz: is a 3D volume .* 2D segmentation2d model"):
        predict2d(seg_run["run"], volume, tmp_path / "out", progress=False)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), mode="RGBA").save(rgba)
    with pytest.raises(InputError, match="rgba.png: 4-channel image not supported"):
        predict2d(seg_run["run"], rgba, tmp_path / "out", progress=False)
    # a model of 2 input channels: a grayscale image cannot be converted
    backbone = create_backbone(**{**BACKBONE, "in_channels": 2})
    meta = {"task": "classification", "classes": ["x", "y"], "backbone": backbone.config}
    meta |= {"input_size": 32, "in_channels": 2, "normalization": {"name": "none"}}
    save_checkpoint(tmp_path / "two", Classifier(backbone, 2).state_dict(), meta)
    with pytest.raises(InputError, match="new.png: has 1 channels; expected 2"):
        predict2d(tmp_path / "two", seg_run["image"], tmp_path / "out", progress=False)
    a, b = tmp_path / "same" / "a.png", tmp_path / "same" / "a.jpg"
    _png(a, seg_run["array"]), _png(b, seg_run["array"])
    with pytest.raises(InputError, match="same output name 'a'"):
        predict2d(seg_run["run"], a.parent, tmp_path / "out", progress=False)


def _table(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_classification_csv_merges_skips_and_overwrites(cls_run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, p in enumerate(sorted(cls_run["data"].rglob("*.png"))[::3]):
        shutil.copy(p, images / f"im{i}.png")
    out = tmp_path / "out"
    first = [str(images / "im0.png"), str(images / "im1.png")]
    args = ["predict", "--model", str(cls_run["run"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--input", *first, "--overlay"]) == 0
    captured = capsys.readouterr()
    assert "2 written, 0 skipped" in captured.out and "predictions.csv" in captured.out
    assert "note: --overlay applies to 2D segmentation" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"]
    with (out / "predictions.csv").open(newline="") as f:
        assert next(csv.reader(f)) == ["input", "predicted", "p_A", "p_B"]
    rows = _table(out / "predictions.csv")
    assert [r["input"] for r in rows] == first
    for r in rows:
        p = np.array([float(r["p_A"]), float(r["p_B"])])
        assert abs(p.sum() - 1) < 1e-6 and (p >= 0).all()
        assert r["predicted"] == ("A", "B")[int(p.argmax())]

    summary = medfoundry.predict(cls_run["run"], images, out, progress=False)
    assert [p.name for p in summary.skipped] == ["im0.png", "im1.png"]
    assert [p.name for p in summary.written] == ["im2.png"]
    assert [r["input"] for r in _table(out / "predictions.csv")] == [
        *first,
        str(images / "im2.png"),
    ]
    summary = medfoundry.predict(cls_run["run"], images, out, overwrite=True, progress=False)
    assert len(summary.written) == 3 and not summary.skipped
    assert len(_table(out / "predictions.csv")) == 3
    model = load_model(cls_run["run"])
    x = torch.zeros(1, 1, 32, 32)
    assert model.network(x).shape == (1, 2)


@pytest.mark.parametrize("which", ["seg_run", "cls_run"])
def test_export_cli_writes_an_onnx_file_that_matches_pytorch(which, request, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import json

    import onnxruntime as ort
    import torch

    from medfoundry.cli import main
    from medfoundry.zoo import load_model

    run = request.getfixturevalue(which)["run"]
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", str(run), "--out", str(out)]) == 0
    assert "max |ONNX - PyTorch|" in capsys.readouterr().out
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    model = load_model(run)
    assert side["kind"] == model.kind and side["names"] == list(model.names)
    assert side["input"]["dynamic_batch"] and side["check"]["max_abs_diff"] <= 1e-4
    assert side["preprocessing"] == model.preprocessing
    x = torch.randn(5, 1, 64, 96)  # another batch and (multiple-of-32) size than traced
    with torch.no_grad():
        ref = model.network(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == ref.shape and float(abs(got - ref).max()) <= 1e-4
