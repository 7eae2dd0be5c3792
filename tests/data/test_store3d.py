"""prepare (3D store): resampling, intensity, crop, memory-mapped random crops, bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.cli import main
from medfoundry.data.store.build import StoreCropDataset, open_store, prepare_store
from medfoundry.data.store.cases import Case3D
from medfoundry.data.store.resample import resample_label
from medfoundry.data.store.spacing import probe_spacing
from medfoundry.errors import InputError
from medfoundry.io import read_image


def _nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), affine=None) -> Path:
    """Write an (i, j, k) array as NIfTI with a diagonal (or the given) RAS affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([*spacing, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(array), aff), path)
    return path


def _blob_case(seed: int, shape=(20, 18, 14), label_values=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like volume (bright ellipsoid on a dark background) and a two-class label in it."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = np.asarray(shape) / 2
    inside = ((ii - c[0]) / 7) ** 2 + ((jj - c[1]) / 6) ** 2 + ((kk - c[2]) / 5) ** 2 < 1
    image = np.where(inside, 200.0, 5.0) + rng.normal(0, 3, shape)
    label = np.zeros(shape, np.uint8)
    label[8:11, 7:10, 5:8] = label_values[0]
    label[11:13, 7:10, 5:8] = label_values[1]
    return image.astype(np.float32), label


def _msd(root: Path, n: int = 3, spacing=(1.0, 1.0, 1.0), test_cases: int = 0) -> Path:
    """A toy nnU-Net/MSD dataset folder."""
    for k in range(n):
        image, label = _blob_case(k)
        _nifti(root / "imagesTr" / f"toy_{k:03d}.nii.gz", image, spacing)
        _nifti(root / "labelsTr" / f"toy_{k:03d}.nii.gz", label, spacing)
    for k in range(test_cases):
        _nifti(root / "imagesTs" / f"toy_{100 + k:03d}.nii.gz", _blob_case(50 + k)[0], spacing)
    labels = {"background": 0, "left": 1, "right": 2}
    (root / "dataset.json").write_text(json.dumps({"name": "toy", "labels": labels}))
    return root


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory) -> Path:
    """A prepared store of 3 labeled + 1 unlabeled toy cases (shared by the crop tests)."""
    root = tmp_path_factory.mktemp("toy")
    data = _msd(root / "data", n=3, test_cases=1)
    prepare_store(data, root / "store", progress=False)
    return root / "store"


# --- layout and records ---------------------------------------------------------------------
def test_msd_store_records_and_files(toy_store):
    info = json.loads((toy_store / "store.json").read_text())
    assert info["complete"] and info["labels"] == {"0": "background", "1": "left", "2": "right"}
    assert info["counts"]["cases"] == 4 and info["counts"]["labeled"] == 3
    assert info["counts"]["by_split"] == {"test": 1, "train": 3}
    settings = info["settings"]
    assert settings["axis_order"] == "SPL" and settings["image_dtype"] == "float16"
    assert info["target_spacing_from"] == "median of 4 images"
    case = info["cases"][0]
    assert case["id"] == "toy_000" and case["image"] == "imagesTr/toy_000.nii.gz"
    assert case["label_classes"] == [0, 1, 2] and case["empty_label"] is False
    for key in ("original_shape", "original_spacing", "crop_box", "shape", "affine"):
        assert key in case
    store = open_store(toy_store)
    assert store.case_ids == ["toy_000", "toy_001", "toy_002", "toy_100"]
    assert store.labeled_indices == [0, 1, 2] and store.label(3) is None
    image, label = store.image(0, mmap=False), store.label(0, mmap=False)
    assert image.dtype == np.float16 and label.dtype == np.uint8
    assert image.shape == label.shape == (1, *case["shape"])
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert store.preprocessing["target_spacing"] == settings["target_spacing"]


def test_spacing_probe_matches_reader(tmp_path):
    """Header-only spacing equals read_image's, also for a permuted, flipped affine."""
    affine = np.array([[0, 0, -2.5, 10], [0.7, 0, 0, -3], [0, -0.9, 0, 4], [0, 0, 0, 1.0]])
    path = _nifti(tmp_path / "perm.nii.gz", np.zeros((6, 7, 8), np.float32), affine=affine)
    probed = probe_spacing(Case3D("perm", "file", [path], None, "unlabeled"))
    assert probed == pytest.approx(read_image(path).spacing)


# --- resampling, intensity, crop ------------------------------------------------------------
def test_resampling_reaches_target_spacing_and_keeps_extent(tmp_path):
    image, label = _blob_case(0, shape=(24, 20, 12))
    _nifti(tmp_path / "d" / "imagesTr" / "a.nii.gz", image, (0.7, 0.8, 2.5))
    _nifti(tmp_path / "d" / "labelsTr" / "a.nii.gz", label, (0.7, 0.8, 2.5))
    summary = prepare_store(
        tmp_path / "d", tmp_path / "s", (1.0, 1.0, 1.0), crop_foreground=False, progress=False
    )
    case = summary["cases"][0]
    original = np.asarray(case["original_shape"]) * np.asarray(case["original_spacing"])
    stored = np.asarray(case["shape"]) * 1.0  # target spacing 1 mm
    assert np.all(np.abs(stored - original) <= 1.0)  # the extent within a voxel
    assert case["spacing"] == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    assert case["original_spacing"] == pytest.approx([2.5, 0.8, 0.7])  # (D, H, W)
    # the volume's centre stays at the same place in mm
    old_affine = np.asarray(read_image(tmp_path / "d" / "imagesTr" / "a.nii.gz").meta["affine"])
    old_centre = old_affine @ [*((np.asarray(case["original_shape"]) - 1) / 2), 1]
    new_centre = np.asarray(case["affine"]) @ [*((np.asarray(case["shape"]) - 1) / 2), 1]
    np.testing.assert_allclose(new_centre, old_centre, atol=1e-4)


def test_nearest_resampling_keeps_label_values(tmp_path):
    image, label = _blob_case(1, label_values=(3, 7))
    _nifti(tmp_path / "d" / "imagesTr" / "a.nii.gz", image, (1.3, 0.6, 1.7))
    _nifti(tmp_path / "d" / "labelsTr" / "a.nii.gz", label, (1.3, 0.6, 1.7))
    prepare_store(tmp_path / "d", tmp_path / "s", (1.0, 1.0, 1.0), progress=False)
    stored = open_store(tmp_path / "s").label(0, mmap=False)
    assert set(np.unique(stored).tolist()) == {0, 3, 7}


def test_nearest_resampling_stays_aligned():
    """Upsampling 2x repeats every voxel; 3 -> 2 voxels picks the ones under the new centres."""
    label = np.random.default_rng(0).integers(0, 5, (3, 4, 5)).astype(np.uint8)
    doubled = resample_label(label, (6, 8, 10))
    np.testing.assert_array_equal(doubled, label.repeat(2, 0).repeat(2, 1).repeat(2, 2))
    np.testing.assert_array_equal(resample_label(label, (2, 4, 5)), label[[0, 2]])


def test_ct_clip_range_maps_to_unit_interval(tmp_path):
    hu = np.full((8, 8, 8), -1000.0, np.float32)
    hu[2:6, 2:6, 2:6] = 40.0
    hu[3, 3, 3], hu[4, 4, 4], hu[3, 4, 4], hu[4, 3, 3] = 1000.0, 3000.0, 0.0, -2000.0
    _nifti(tmp_path / "ct" / "scan.nii.gz", hu)
    summary = prepare_store(tmp_path / "ct", tmp_path / "s", crop_foreground=False, progress=False)
    assert summary["cases"][0]["modality"] == "CT"  # minimum <= -500 HU
    unit = open_store(tmp_path / "s").image(0, mmap=False)[0].astype(np.float32)
    expected = np.clip((read_image(tmp_path / "ct" / "scan.nii.gz").array[0] + 1000) / 2000, 0, 1)
    np.testing.assert_allclose(unit, expected, atol=1e-3)
    assert unit.min() == 0.0 and unit.max() == 1.0 and np.any(np.abs(unit - 0.5) < 1e-3)


def test_crop_keeps_label_outside_the_tissue(tmp_path):
    image = np.zeros((30, 30, 30), np.float32)
    image[10:20, 10:20, 10:20] = 100.0  # the tissue
    label = np.zeros((30, 30, 30), np.uint8)
    label[2:4, 12:14, 12:14] = 1  # a label in the dark, 6 voxels from the tissue
    _nifti(tmp_path / "d" / "imagesTr" / "a.nii.gz", image)
    _nifti(tmp_path / "d" / "labelsTr" / "a.nii.gz", label)
    summary = prepare_store(tmp_path / "d", tmp_path / "s", progress=False)
    case = summary["cases"][0]
    assert np.prod(case["shape"]) < 30**3  # cropped
    stored = open_store(tmp_path / "s").label(0, mmap=False)
    assert int(stored.sum()) == int(label.sum())  # nothing of the label cut
    start = np.asarray(case["crop_box"])[:, 0]
    old_affine = np.asarray(read_image(tmp_path / "d" / "imagesTr" / "a.nii.gz").meta["affine"])
    np.testing.assert_allclose(np.asarray(case["affine"])[:, 3], old_affine @ [*start, 1])


# --- crops ------------------------------------------------------------------------------
def test_random_crops_reproducible_and_seed_dependent(toy_store):
    store = open_store(toy_store)
    size = (8, 10, 6)
    a = store.random_crops([0, 1, 2, 0], size, np.random.default_rng(7))
    b = store.random_crops([0, 1, 2, 0], size, np.random.default_rng(7))
    c = store.random_crops([0, 1, 2, 0], size, np.random.default_rng(8))
    assert a.images.shape == (4, 1, *size) and a.images.dtype == np.float32
    assert a.labels is not None and a.labels.shape == (4, 1, *size)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.starts, b.starts)
    assert not np.array_equal(a.starts, c.starts)
    assert store.random_crops([0, 3], size, np.random.default_rng(0)).labels is None


def test_foreground_crops_contain_foreground(toy_store):
    store = open_store(toy_store)
    size, idx = (4, 4, 4), [0, 1, 2] * 20
    fg = store.random_crops(idx, size, np.random.default_rng(0), foreground_prob=1.0)
    assert np.all(fg.labels.reshape(len(idx), -1).max(axis=1) > 0)
    plain = store.random_crops(idx, size, np.random.default_rng(0), foreground_prob=0.0)
    assert np.mean(plain.labels.reshape(len(idx), -1).max(axis=1) > 0) < 0.5  # not by luck
    half = store.random_crops(idx * 5, size, np.random.default_rng(1), foreground_prob=0.5)
    share = np.mean(half.labels.reshape(len(idx) * 5, -1).max(axis=1) > 0)
    assert 0.4 < share < 0.8  # 0.5 centred + the few random crops that hit the label


def test_crops_read_through_memmap(toy_store, monkeypatch):
    store = open_store(toy_store)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("mmap_mode"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    store.random_crops([0, 1, 2], 4, np.random.default_rng(0))
    assert len(calls) == 6 and set(calls) == {"r"}  # 3 images + 3 labels, all memory-mapped
    assert isinstance(store.image(0), np.memmap)


def test_dataset_items_seeded_per_epoch_and_index(toy_store):
    store = open_store(toy_store)
    ds = StoreCropDataset(store, (8, 8, 6), crops_per_volume=2, seed=3, indices=[0, 1, 2])
    assert len(ds) == 6 and ds.with_labels
    image, label = ds[5]
    assert image.shape == (1, 8, 8, 6) and image.dtype == torch.float32
    assert label.shape == (1, 8, 8, 6) and label.dtype == torch.int64
    assert torch.equal(
        ds[5][0], StoreCropDataset(store, (8, 8, 6), 2, seed=3, indices=[0, 1, 2])[5][0]
    )
    crops = [ds[k][0] for k in range(6)]
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[k][0]) for k, a in enumerate(crops))
    clone = pickle.loads(pickle.dumps(ds))  # as a DataLoader worker gets it
    assert not clone.store._maps and torch.equal(clone[5][0], ds[5][0])
    unlabeled = StoreCropDataset(store, 4)  # the imagesTs case has no label
    assert isinstance(unlabeled[0], torch.Tensor) and unlabeled[0].shape == (1, 4, 4, 4)


# --- bad input ----------------------------------------------------------------------------
def test_volume_smaller_than_crop_is_padded(toy_store):
    store = open_store(toy_store)
    shape = store.cases[0]["shape"]
    big = [s + 9 for s in shape]
    batch = store.random_crops([0, 0], big, np.random.default_rng(0), foreground_prob=1.0)
    assert batch.images.shape == (2, 1, *big)
    whole = store.image(0, mmap=False).astype(np.float32)
    np.testing.assert_allclose(batch.images.sum(axis=(1, 2, 3, 4)), whole.sum(), rtol=1e-5)
    assert int(batch.labels[0].sum()) == int(store.label(0, mmap=False).sum())


def test_4d_and_2d_files_are_refused(tmp_path):
    _nifti(tmp_path / "a" / "four.nii.gz", np.zeros((5, 5, 5, 2), np.float32))
    with pytest.raises(InputError, match=r"four\.nii\.gz.*4D"):
        prepare_store(tmp_path / "a", tmp_path / "s", (1, 1, 1), progress=False)
    _nifti(tmp_path / "b" / "flat.nii.gz", np.ones((6, 7), np.float32))
    with pytest.raises(InputError, match=r"flat\.nii\.gz.*single slice"):
        prepare_store(tmp_path / "b", tmp_path / "s", (1, 1, 1), progress=False)
    (tmp_path / "c").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "c" / "slice.png")
    with pytest.raises(InputError, match=r"slice\.png.*2D image, expected a 3D volume"):
        prepare_store(tmp_path / "c", tmp_path / "s", (1, 1, 1), progress=False)


@pytest.mark.parametrize("what", ["shape", "affine"])
def test_label_not_matching_its_image_names_both_files(tmp_path, what):
    image, label = _blob_case(0)
    _nifti(tmp_path / "d" / "imagesTr" / "a.nii.gz", image)
    if what == "shape":
        _nifti(tmp_path / "d" / "labelsTr" / "a.nii.gz", label[:-2])
    else:
        _nifti(tmp_path / "d" / "labelsTr" / "a.nii.gz", label, spacing=(1.0, 1.0, 1.2))
    with pytest.raises(InputError, match=rf"labelsTr/a\.nii\.gz.*{what}.*imagesTr/a\.nii\.gz"):
        prepare_store(tmp_path / "d", tmp_path / "s", progress=False)


def test_nan_voxels_are_refused(tmp_path):
    image = _blob_case(0)[0]
    image[3, 3, 3] = np.nan
    _nifti(tmp_path / "d" / "bad.nii.gz", image)
    with pytest.raises(InputError, match=r"bad\.nii\.gz.*NaN"):
        prepare_store(tmp_path / "d", tmp_path / "s", progress=False)


def test_empty_label_is_kept_warned_and_falls_back_to_random_crops(tmp_path):
    data = _msd(tmp_path / "d", n=2)
    _nifti(data / "labelsTr" / "toy_001.nii.gz", np.zeros((20, 18, 14), np.uint8))
    with pytest.warns(UserWarning, match=r"1 case\(s\) with an empty label.*toy_001"):
        summary = prepare_store(data, tmp_path / "s", progress=False)
    assert [c["empty_label"] for c in summary["cases"]] == [False, True]
    assert summary["counts"]["empty_labels"] == 1
    batch = open_store(tmp_path / "s").random_crops(
        [1, 1], 4, np.random.default_rng(0), foreground_prob=1.0
    )
    assert batch.images.shape == (2, 1, 4, 4, 4) and batch.labels.max() == 0


def test_empty_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no volumes found"):
        prepare_store(tmp_path / "empty", tmp_path / "s", progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("no volumes here")
    with pytest.raises(InputError, match=r"notes.*no volumes found"):
        prepare_store(tmp_path / "notes", tmp_path / "s", progress=False)
    (tmp_path / "msd" / "imagesTr").mkdir(parents=True)
    with pytest.raises(InputError, match=r"imagesTr/ or imagesTs/"):
        prepare_store(tmp_path / "msd", tmp_path / "s", progress=False)


def test_output_folder_with_another_store_needs_overwrite(tmp_path):
    data = _msd(tmp_path / "d", n=1)
    out = tmp_path / "s"
    prepare_store(data, out, (1, 1, 1), progress=False)
    again = prepare_store(data, out, (1, 1, 1), progress=False)
    assert again["reused"] is True  # same settings, same inputs
    with pytest.raises(InputError, match="different store.*target_spacing.*--overwrite"):
        prepare_store(data, out, (2, 2, 2), progress=False)
    assert prepare_store(data, out, (2, 2, 2), overwrite=True, progress=False)["complete"]
    assert open_store(out).info["settings"]["target_spacing"] == [2.0, 2.0, 2.0]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="holds no store.json"):
        prepare_store(data, tmp_path / "other", overwrite=True, progress=False)
    assert (tmp_path / "other" / "keep.txt").exists()


# --- damaged stores (issue #14) ------------------------------------------------------------
def test_store_with_a_missing_or_truncated_file_is_refused_naming_it(tmp_path, capsys):
    data, out = _msd(tmp_path / "d", n=3), tmp_path / "s"
    prepare_store(data, out, (1, 1, 1), progress=False)
    info = json.loads((out / "store.json").read_text())
    record = info["cases"][1]
    assert (
        record["file_checks"][record["image_file"]]["bytes"]
        == (out / record["image_file"]).stat().st_size
    )
    truncated, missing = out / "labels" / "toy_000.npy", out / "images" / "toy_001.npy"
    whole = truncated.read_bytes()
    truncated.write_bytes(whole[:-100])
    missing.unlink()
    argv = ["prepare", "--data", str(data), "--out", str(out), "--spacing", "1", "1", "1"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(truncated) in err and "truncated" in err and "up to date" not in err
    with pytest.raises(InputError, match="truncated") as e:
        open_store(out)
    assert str(e.value).startswith(str(truncated))
    truncated.write_bytes(whole)
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "missing" in err and "up to date" not in err
    with pytest.raises(InputError, match="missing") as e:
        open_store(out)
    assert str(e.value).startswith(str(missing))
    missing.write_bytes(b"")  # present again, but empty
    with pytest.raises(InputError, match="0 bytes") as e:
        open_store(out)
    assert str(e.value).startswith(str(missing))
    assert prepare_store(data, out, (1, 1, 1), overwrite=True, progress=False)["complete"]
    assert len(open_store(out)) == 3
    assert prepare_store(data, out, (1, 1, 1), progress=False)["reused"]


def test_changed_content_of_the_same_size_is_refused_on_reuse(tmp_path):
    data, out = _msd(tmp_path / "d", n=1), tmp_path / "s"
    prepare_store(data, out, (1, 1, 1), progress=False)
    path = out / "images" / "toy_000.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # one voxel, same size
    path.write_bytes(bytes(raw))
    assert len(open_store(out)) == 1  # opening checks sizes only
    with pytest.raises(InputError, match="checksum") as e:
        prepare_store(data, out, (1, 1, 1), progress=False)
    assert str(e.value).startswith(str(path))


def test_store_from_before_file_checks_is_checked_by_shape_and_dtype(tmp_path):
    data, out = _msd(tmp_path / "d", n=2), tmp_path / "s"
    prepare_store(data, out, (1, 1, 1), progress=False)
    info = json.loads((out / "store.json").read_text())
    for record in info["cases"]:
        del record["file_checks"]
    (out / "store.json").write_text(json.dumps(info))
    assert prepare_store(data, out, (1, 1, 1), progress=False)["reused"]
    assert len(open_store(out)) == 2
    path = out / "images" / "toy_001.npy"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(InputError, match="truncated") as e:
        open_store(out)
    assert str(e.value).startswith(str(path))
    del info["cases"][1]["shape"]
    (out / "store.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="neither its size nor its shape.*prepare --overwrite"):
        open_store(out)


# --- plain folders, DICOM series, CLI -------------------------------------------------------
def test_plain_folder_with_dicom_series_and_cli(tmp_path, write_dicom_series, capsys):
    hu = np.full((6, 16, 16), -1000, np.int16)
    hu[1:5, 4:12, 4:12] = 50
    write_dicom_series(tmp_path / "d" / "patient" / "ct", hu, spacing=(2.0, 0.8, 0.8))
    _nifti(tmp_path / "d" / "mr.nii.gz", _blob_case(0)[0], (0.8, 0.8, 2.0))
    code = main(["prepare", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s")])
    assert code == 0 and "2 cases, 0 labeled" in capsys.readouterr().out
    store = open_store(tmp_path / "s")
    assert sorted(store.case_ids) == ["mr", "patient_ct"]
    modalities = {c["id"]: (c["modality"], c["modality_from"]) for c in store.cases}
    assert modalities["patient_ct"] == ("CT", "tag")
    assert store.info["settings"]["target_spacing"] == [2.0, 0.8, 0.8]
    code = main(["prepare", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"),
                 "--spacing", "1", "1", "1", "--no-progress"])  # fmt: skip
    assert code == 2 and "different store" in capsys.readouterr().err


# --- real data ----------------------------------------------------------------------------
def test_real_hippocampus_cases(tmp_path, shared_data):
    source = shared_data / "hippocampus"
    data = tmp_path / "hippo"
    names = sorted(p.name for p in (source / "imagesTr").glob("*.nii.gz"))[:5]
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for name in names:
            (data / sub / name).symlink_to(source / sub / name)
    shutil.copy(source / "dataset.json", data / "dataset.json")
    summary = prepare_store(data, tmp_path / "s", progress=False)
    assert summary["counts"]["cases"] == 5 and summary["counts"]["label_classes"] == [0, 1, 2]
    store = open_store(tmp_path / "s")
    for i, case in enumerate(store.cases):
        image = read_image(source / "imagesTr" / names[i], ndim=3)
        assert case["original_shape"] == list(image.spatial_shape)
        assert store.image(i).shape == store.label(i).shape == (1, *case["shape"])
        assert set(np.unique(store.label(i)).tolist()) == {0, 1, 2}
    batch = store.random_crops(range(5), (32, 48, 32), np.random.default_rng(0), 1.0)
    assert batch.images.shape == (5, 1, 32, 48, 32) and batch.labels.max() == 2


@pytest.mark.skipif(sys.getfilesystemencoding() != "utf-8", reason="needs a UTF-8 file system")
def test_a_non_utf8_file_name_is_prepared_and_reused(tmp_path):
    data = tmp_path / "d"
    _nifti(data / "ok.nii.gz", _blob_case(0)[0])
    _nifti(Path(os.fsdecode(os.fsencode(data) + b"/caf\xe9.nii.gz")), _blob_case(1)[0])
    summary = prepare_store(data, tmp_path / "s", crop_foreground=False, progress=False)
    assert len(summary["cases"]) == 2 and not summary.get("reused")
    again = prepare_store(data, tmp_path / "s", crop_foreground=False, progress=False)
    assert again.get("reused") is True  # the same fingerprint, from the name's own bytes
