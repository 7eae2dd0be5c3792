"""3D prediction on the scan's own grid: geometry round trip, DICOM vs NIfTI, a trained tiny
model end to end, strict loading and the ``medfoundry predict`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import medfoundry
from medfoundry.cli import main
from medfoundry.data.store.preprocess import VolumeSettings, to_original_grid
from medfoundry.errors import CheckpointError, InputError
from medfoundry.io import read_image
from medfoundry.tasks.predict3d import (
    load_segmenter3d,
    predict,
    predict_volume_file,
    preprocess_for_model,
    write_prediction,
)
from medfoundry.tasks.segmentation3d import finetune_segmentation3d

CT_SETTINGS = VolumeSettings(target_spacing=(1.1, 1.4, 0.8), modality_default="CT")
THRESHOLD_HU = 200.0


class Threshold(nn.Module):
    """A fixed 'model': class 1 where the [0, 1] input exceeds ``level`` (steep logits)."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level
        self.anchor = nn.Parameter(torch.zeros(()))  # gives predict_volume a device and dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 40.0 * (x - self.level)  # (B, 1, D, H, W)
        return torch.cat([torch.zeros_like(z), z], dim=1) + 0.0 * self.anchor


def _ct_unit(hu: float) -> float:
    """HU -> the [0, 1] value of the default CT clip (-1000..1000)."""
    return (hu + 1000.0) / 2000.0


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def _ct_phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """HU volume (i, j, k): air, a soft-tissue box, a smooth bright ellipsoid (mm-sized)."""
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    centre = [0.48 * n * s for n, s in zip(shape, spacing, strict=True)]
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    body = np.all(
        [np.abs(g - c) < 0.42 * e for g, c, e in zip(grids, centre, extent, strict=True)], axis=0
    )
    radius = [0.3 * e for e in extent]
    r = np.sqrt(sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, centre, radius, strict=True)))
    return (np.where(body, 0.0, -1000.0) + 400.0 / (1 + np.exp((r - 1) * 8))).astype(np.float32)


def test_label_map_has_the_input_grid_and_matches_the_threshold(tmp_path):
    shape, spacing = (26, 14, 20), (1.3, 2.5, 0.9)  # along i, j, k
    hu = _ct_phantom(shape, spacing)
    # i -> posterior, j -> superior, k -> right (RAS): permuted and flipped, anisotropic
    affine = np.array([[0, 0, -0.9, 30.0], [-1.3, 0, 0, 20.0], [0, 2.5, 0, -40.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "scan.nii.gz")
    image = read_image(tmp_path / "scan.nii.gz")
    volume, inverse = preprocess_for_model(image, CT_SETTINGS)
    assert volume.dtype == np.float32 and volume.shape == inverse.cropped_shape
    assert inverse.original_shape == shape and image.spatial_shape == (
        14,
        26,
        20,
    )  # (S, P, L) = (j, i, k)
    assert inverse.resampled_shape != inverse.canonical_shape  # it did resample

    net = Threshold(_ct_unit(THRESHOLD_HU))
    pred = predict_volume_file(
        net, CT_SETTINGS, tmp_path / "scan.nii.gz", (16, 16, 16), probabilities=True
    )
    write_prediction(pred, tmp_path / "out", "scan")
    out = nib.load(tmp_path / "out" / "scan.nii.gz")
    assert out.shape == shape and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(affine)
    labels = np.asarray(out.dataobj)
    truth = hu > THRESHOLD_HU
    assert set(np.unique(labels)) == {0, 1}
    assert _dice(labels, truth) > 0.95
    probs = np.asarray(nib.load(tmp_path / "out" / "scan_probabilities.nii.gz").dataobj)
    assert probs.shape == (*shape, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(-1), labels)

    # nearest-neighbour labels agree closely with resampled probabilities
    probs_small = torch.softmax(net(torch.from_numpy(volume)[None, None]), 1)[0].detach()
    nearest, _ = to_original_grid(probs_small.numpy(), inverse, mode="nearest")
    assert nearest.shape == shape and _dice(nearest, truth) > 0.9


def test_outside_the_crop_box_is_background(tmp_path):
    hu = np.full((30, 30, 12), -1000.0, np.float32)  # air, a tissue box in the middle
    hu[10:20, 8:18, 4:8] = 50.0
    nib.save(nib.Nifti1Image(hu, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "s.nii")
    image = read_image(tmp_path / "s.nii")
    volume, inverse = preprocess_for_model(image, CT_SETTINGS)
    assert inverse.cropped_shape != inverse.resampled_shape  # air was cropped away
    everything = np.zeros((2, *volume.shape), np.float32)
    everything[1] = 1.0  # 'foreground everywhere' inside the box
    labels, _ = to_original_grid(everything, inverse)
    assert labels.any() and not labels.all()
    assert labels[0, 0, 0] == 0 and labels[-1, -1, -1] == 0


def test_dicom_series_and_nifti_of_one_scan_give_the_same_label_map(tmp_path, write_dicom_series):
    spacing = (2.0, 0.9, 1.2)  # slices, rows, columns
    phantom = _ct_phantom((12, 18, 16), spacing)  # (slices, rows, cols)
    hu = np.round(phantom).astype(np.int16)
    write_dicom_series(tmp_path / "series", hu, spacing=spacing, origin=(-5.0, 7.0, 30.0))
    # the same scan as NIfTI, stored (slice, row, col) = LPS (z, y, x): another voxel order
    affine_lps = np.zeros((4, 4))
    affine_lps[2, 0], affine_lps[1, 1], affine_lps[0, 2] = spacing
    affine_lps[:3, 3], affine_lps[3, 3] = (-5.0, 7.0, 30.0), 1.0
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine_ras), tmp_path / "scan.nii.gz")

    settings = {
        "axis_order": "SPL",
        "target_spacing": [1.5, 1.5, 1.5],
        "modality": "auto",
        "normalization": {
            "CT": {"name": "ct_clip", "hu": [-1000.0, 1000.0]},
            "other": {"name": "percentile_minmax", "lower": 0.5, "upper": 99.5},
        },
        "crop_foreground": True,
        "crop_margin": 4,
    }
    net = Threshold(_ct_unit(THRESHOLD_HU))
    for source in ("series", "scan.nii.gz"):
        pred = predict_volume_file(net, settings, tmp_path / source, (16, 16, 16))
        write_prediction(pred, tmp_path / "out", Path(source).name.split(".")[0])
    from_dicom = read_image(tmp_path / "out" / "series.nii.gz")
    from_nifti = read_image(tmp_path / "out" / "scan.nii.gz")
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    np.testing.assert_allclose(from_dicom.meta["affine"], from_nifti.meta["affine"], atol=1e-4)
    dicom_grid = nib.load(tmp_path / "out" / "series.nii.gz")
    assert dicom_grid.shape == (16, 18, 12)  # the series' (column, row, slice) grid
    assert _dice(from_dicom.array[0], read_image(tmp_path / "series").array[0] > 200) > 0.95


# --- a really trained tiny model -----------------------------------------------------------
BLOB_RADIUS_MM = 4.5


def _blob(shape, spacing, rng) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball (radius 4.5 mm) on noise, and its mask (the image's threshold)."""
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    c = [rng.uniform(BLOB_RADIUS_MM + 1, e - BLOB_RADIUS_MM - 1) for e in extent]
    mask = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True)) < BLOB_RADIUS_MM**2
    image = 40.0 + 150.0 * mask + rng.normal(0, 8, shape)
    return image.astype(np.float32), mask.astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny UNet fine-tuned (60 steps) on 6 blob volumes; its run folder and a test scan."""
    base = tmp_path_factory.mktemp("predict3d")
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (base / "msd" / sub).mkdir(parents=True)
    for i in range(6):
        image, mask = _blob((16, 20, 16), (1.0, 1.0, 1.0), rng)
        nib.save(nib.Nifti1Image(image, np.eye(4)), base / "msd" / "imagesTr" / f"b_{i}.nii.gz")
        nib.save(nib.Nifti1Image(mask, np.eye(4)), base / "msd" / "labelsTr" / f"b_{i}.nii.gz")
    (base / "msd" / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "blob": 1}, "numTraining": 6})
    )
    cfg = {
        "network": "unet",
        "unet": {"features": [8, 8, 16, 16, 32, 8]},
        "patch_size": [16, 32, 16],
        "batch_size": 2,
        "steps": 50,
        "val_every": 50,
        "lr": 1e-2,
        "accelerator": "cpu",
        "hd95": False,
    }
    finetune_segmentation3d(base / "msd", None, base / "run", cfg, progress=False)
    # a new scan: anisotropic voxels, permuted and flipped axes
    spacing = (2.0, 1.0, 0.8)
    image, mask = _blob((9, 20, 24), spacing, np.random.default_rng(7))
    affine = np.array([[0, 0, 0.8, -3.0], [0, -1.0, 0, 12.0], [-2.0, 0, 0, 40.0], [0, 0, 0, 1]])
    (base / "scans").mkdir()
    nib.save(nib.Nifti1Image(image, affine), base / "scans" / "new.nii.gz")
    return {"base": base, "run": base / "run", "scan": base / "scans" / "new.nii.gz", "mask": mask}


def test_trained_model_predicts_the_mask_in_the_scan_grid(trained, tmp_path):
    model = load_segmenter3d(trained["run"])
    assert model.tensors == len(model.network.state_dict())
    assert model.labels == {1: "blob"}  # the classes the checkpoint records
    summary = medfoundry.predict(model, trained["scan"], tmp_path, progress=False)
    assert [p.name for p in summary.written] == ["new.nii.gz"]
    out = nib.load(tmp_path / "new.nii.gz")
    source = nib.load(trained["scan"])
    assert out.shape == source.shape
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    labels = np.asarray(out.dataobj)
    chance = _dice(np.random.default_rng(0).random(labels.shape) < trained["mask"].mean(), labels)
    assert _dice(labels, trained["mask"]) > 0.8 > chance + 0.5  # 0.93 vs 0.06 when written


def test_loading_is_strict_and_names_the_folder(trained, tmp_path):
    ckpt = tmp_path / "broken" / "checkpoint"
    shutil.copytree(trained["run"] / "checkpoint", ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    head = next(k for k in weights if k.startswith("head") or k.endswith("bias"))
    del weights[head]
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="checksum mismatch") as e:
        load_segmenter3d(tmp_path / "broken")  # the edit is caught by the recorded checksum
    assert str(ckpt) in str(e.value)
    meta = json.loads((ckpt / "medfoundry.json").read_text())
    meta.pop("checksums", None)  # without one (an older checkpoint) the strict load catches it
    (ckpt / "medfoundry.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="1 missing") as e:
        load_segmenter3d(tmp_path / "broken")
    assert str(ckpt) in str(e.value)

    meta = json.loads((ckpt / "medfoundry.json").read_text())
    two_d = {"spatial_dims": 2, "input_size": 32}  # a consistent 2D record, not a malformed one
    for kind in (two_d, {"task": "classification", **two_d}):
        (ckpt / "medfoundry.json").write_text(json.dumps({**meta, **kind}))
        with pytest.raises(CheckpointError, match="not a 3D segmentation model"):
            load_segmenter3d(ckpt)
    (ckpt / "medfoundry.json").write_text(json.dumps({"method": "voco", "spatial_dims": 3}))
    with pytest.raises(CheckpointError, match="not a fine-tuned model"):
        load_segmenter3d(ckpt)


def test_2d_image_and_constant_volume_are_clear_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(InputError, match="x.png: is a 2D image .* segments volumes"):
        preprocess_for_model(read_image(tmp_path / "x.png"), CT_SETTINGS)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.float32), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(InputError, match="c.nii: is a constant volume"):
        preprocess_for_model(read_image(tmp_path / "c.nii"), CT_SETTINGS)


# --- the command ----------------------------------------------------------------------------
def test_cli_skips_existing_outputs_and_overwrites_on_request(trained, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(trained["scan"], scans / "a.nii.gz")
    shutil.copy(trained["scan"], scans / "b.nii.gz")
    (scans / "notes.txt").write_text("not a scan")
    out = tmp_path / "out"
    args = ["predict", "--model", str(trained["run"]), "--out", str(out), "--no-progress"]
    assert main([*args, "--input", str(scans)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert "2 written, 0 skipped" in capsys.readouterr().out

    (out / "a.nii.gz").write_bytes(b"stale")
    assert main([*args, "--input", str(scans)]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert (out / "a.nii.gz").read_bytes() == b"stale"  # skipped, not rewritten

    assert main([*args, "--input", str(scans / "a.nii.gz"), "--overwrite", "--probabilities"]) == 0
    assert "1 written, 0 skipped" in capsys.readouterr().out
    assert nib.load(out / "a.nii.gz").shape == nib.load(trained["scan"]).shape
    assert nib.load(out / "a_probabilities.nii.gz").shape[-1] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_cli_bad_input_stops_with_one_line_or_continues(trained, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(trained["scan"], scans / "good.nii.gz")
    (scans / "bad.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    args = ["predict", "--model", str(trained["run"]), "--out", str(out), "--no-progress"]
    bad, good = str(scans / "bad.nii.gz"), str(scans / "good.nii.gz")

    assert main([*args, "--input", bad, good]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medfoundry: error: {bad}: not a readable")
    assert not out.exists() or not list(out.iterdir())

    missing = str(tmp_path / "missing.nii.gz")
    assert main([*args, "--input", bad, missing, good, "--continue-on-error"]) == 2
    captured = capsys.readouterr()
    assert "1 written, 0 skipped" in captured.out and "2 failed" in captured.out
    assert f"medfoundry: failed: {bad}: not a readable" in captured.err
    assert f"medfoundry: failed: {missing}: not found" in captured.err
    assert "2 input(s) failed" in captured.err
    assert (out / "good.nii.gz").is_file() and not (out / "bad.nii.gz").exists()

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat.png")
    assert main([*args, "--input", str(tmp_path / "flat.png")]) == 2
    assert "flat.png: is a 2D image" in capsys.readouterr().err


def test_cli_refuses_a_model_that_is_not_3d_segmentation(tmp_path, capsys):
    ckpt = tmp_path / "cls" / "checkpoint"
    ckpt.mkdir(parents=True)
    save_file({"w": torch.zeros(1)}, str(ckpt / "model.safetensors"))
    meta = {"task": "classification", "spatial_dims": 2, "method": "finetune"}
    (ckpt / "medfoundry.json").write_text(json.dumps(meta))
    args = ["--model", str(tmp_path / "cls"), "--input", str(tmp_path), "--out", str(tmp_path)]
    code = main(["predict", *args])  # the command dispatches to the 2D path: metadata checked
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "classification metadata lacks" in err[0] and str(ckpt) in err[0]
    with pytest.raises(CheckpointError, match="not a 3D segmentation model"):
        predict(tmp_path / "cls", tmp_path, tmp_path / "out", progress=False)
