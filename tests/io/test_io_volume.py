"""3D readers (NIfTI, NRRD/MHA, DICOM series) on tiny volumes written in tmp_path."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medfoundry.data.image2d import load_2d
from medfoundry.errors import InputError
from medfoundry.io import AXIS_ORDER, read_dicom_series, read_image, read_nifti, write_nifti
from medfoundry.io.orientation import axis_codes, from_canonical, to_canonical

FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS = np.array([[0.8, 0, 0, 10], [0, 0.9, 0, 20], [0, 0, 2.5, 30], [0, 0, 0, 1]], dtype=float)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _world_of_each_voxel(image, data_shape, affine_ras) -> tuple[np.ndarray, np.ndarray]:
    """LPS position of every canonical voxel by the reader's affine, and by the file's affine
    (voxel values are their flat index in the file's array)."""
    d, h, w = np.indices(image.spatial_shape).reshape(3, -1)
    by_reader = np.asarray(image.meta["affine"]) @ np.stack([d, h, w, np.ones_like(d)])
    ijk = np.unravel_index(image.array[0].reshape(-1).astype(int), data_shape)
    by_file = FLIP @ affine_ras @ np.stack([*ijk, np.ones_like(d)])
    return by_reader, by_file


def test_nifti_reoriented_to_spl_with_consistent_affine(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # (i, j, k) in RAS
    img = read_image(_nifti(tmp_path / "v.nii.gz", data, RAS))
    assert img.array.shape == (1, 6, 5, 4) and img.array.dtype == np.float32
    assert img.spacing == pytest.approx((2.5, 0.9, 0.8))
    assert img.meta["axis_order"] == AXIS_ORDER == "SPL"
    assert img.modality == "unknown"
    # RAS -> LPS: i (R) and j (A) are flipped, then (i, j, k) -> (k, j, i)
    np.testing.assert_array_equal(img.array[0], data[::-1, ::-1, :].transpose(2, 1, 0))
    by_reader, by_file = _world_of_each_voxel(img, data.shape, RAS)
    np.testing.assert_allclose(by_reader, by_file, atol=1e-9)


def test_same_scan_in_two_storage_orders_reads_the_same(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    # the same voxels stored as (a, b, c) = (K-1-k, i, j): axes permuted and one flipped
    stored = data.transpose(2, 0, 1)[::-1].copy()
    to_ijk = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [-1, 0, 0, 5], [0, 0, 0, 1]], dtype=float)
    a = read_image(_nifti(tmp_path / "a.nii", data, RAS))
    b = read_image(_nifti(tmp_path / "b.nii", stored, RAS @ to_ijk))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.meta["affine"], b.meta["affine"], atol=1e-9)
    assert a.spacing == pytest.approx(b.spacing)
    assert b.meta["original_orientation"] == "IRA" and a.meta["original_orientation"] == "RAS"


def test_nifti_round_trip_keeps_affine_and_spacing(tmp_path):
    data = np.random.default_rng(1).normal(size=(6, 7, 3)).astype(np.float32)
    first = read_nifti(_nifti(tmp_path / "a.nii.gz", data, RAS), modality="MR")
    assert first.modality == "MR"
    # write the canonical array back: voxel (i, j, k) = (w, h, d), RAS affine
    dhw_to_ijk = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    affine = FLIP @ np.asarray(first.meta["affine"]) @ dhw_to_ijk
    back = read_nifti(_nifti(tmp_path / "b.nii.gz", first.array[0].transpose(2, 1, 0), affine))
    np.testing.assert_array_equal(back.array, first.array)
    np.testing.assert_allclose(back.meta["affine"], first.meta["affine"], atol=1e-5)
    assert back.spacing == pytest.approx(first.spacing)


def test_from_canonical_undoes_to_canonical_for_every_axis_order():
    data = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    rotation = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0] * 0.1  # oblique
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            affine = np.eye(4)
            affine[:3, :3] = np.eye(3)[:, perm] * np.array(signs) * (0.7, 1.1, 2.3) + rotation
            affine[:3, 3] = (4.0, -5.0, 6.0)
            array, affine_dhw, _ = to_canonical(data, affine)
            back, back_affine = from_canonical(array, affine_dhw, axis_codes(affine))
            np.testing.assert_array_equal(back, data)
            np.testing.assert_allclose(back_affine, affine, atol=1e-12)


def test_write_nifti_keeps_grid_and_dtype(tmp_path):
    labels = np.random.default_rng(4).integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    affine_lps = FLIP @ RAS
    path = write_nifti(tmp_path / "l.nii.gz", labels, affine_lps)
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8 and int(img.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
    np.testing.assert_allclose(img.affine, RAS, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name != "l.nii.gz"]  # no temporary left
    with pytest.raises(InputError, match="must end in .nii"):
        write_nifti(tmp_path / "l.nrrd", labels, affine_lps)


def test_nifti_nan_4d_and_corrupt_are_errors(tmp_path):
    data = np.zeros((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    path = _nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(InputError, match="NaN") as e:
        read_image(path)
    assert str(path) in str(e.value)
    four = _nifti(tmp_path / "t.nii.gz", np.zeros((3, 3, 3, 2), np.float32), np.eye(4))
    with pytest.raises(InputError, match="2 volumes"):
        read_image(four)
    # a trailing singleton dimension is dropped
    one = _nifti(tmp_path / "t1.nii.gz", np.ones((3, 4, 5, 1), np.float32), np.eye(4))
    assert read_image(one).array.shape == (1, 5, 4, 3)
    junk = tmp_path / "junk.nii"
    junk.write_bytes(b"\x01" * 100)
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_image(junk)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_itk_formats_match_nifti_of_the_same_image(tmp_path, suffix):
    arr = np.random.default_rng(2).normal(size=(5, 6, 7)).astype(np.float32)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 3.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))  # a coronal-ish, flipped grid
    sitk.WriteImage(img, str(tmp_path / f"v{suffix}"))
    sitk.WriteImage(img, str(tmp_path / "v.nii.gz"))
    itk = read_image(tmp_path / f"v{suffix}")
    nii = read_image(tmp_path / "v.nii.gz")
    np.testing.assert_array_equal(itk.array, nii.array)
    np.testing.assert_allclose(itk.meta["affine"], nii.meta["affine"], atol=1e-5)
    assert itk.spacing == pytest.approx((0.8, 3.0, 0.7))  # z (S) was the y axis here
    assert itk.meta["axis_order"] == "SPL"


def test_itk_nan_is_an_error(tmp_path):
    arr = np.zeros((3, 3, 3), np.float32)
    arr[0, 0, 0] = np.nan
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    with pytest.raises(InputError, match="NaN") as e:
        read_image(path)
    assert str(path) in str(e.value)


def _ct(n: int = 5, rows: int = 6, cols: int = 7) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(-1024, 2000, size=(n, rows, cols)).astype(np.int16)


def test_dicom_series_sorted_in_hu_with_spacing(tmp_path, write_dicom_series):
    hu = _ct()
    write_dicom_series(tmp_path / "ct", hu, spacing=(2.5, 0.7, 0.8))
    img = read_image(tmp_path / "ct")  # a folder: read as a series
    assert img.modality == "CT" and img.array.shape == (1, 5, 6, 7)
    np.testing.assert_array_equal(img.array[0], hu)  # sorted by position, in HU
    assert img.spacing == pytest.approx((2.5, 0.7, 0.8))
    np.testing.assert_allclose(np.asarray(img.meta["affine"])[:3, 3], (-50, -60, 100))


@pytest.mark.parametrize(
    "orientation",
    [(1, 0, 0, 0, 1, 0), (0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0.9848078, -0.1736482)],
    ids=["axial", "sagittal", "oblique"],
)
def test_dicom_series_agrees_with_simpleitk_nifti_and_nrrd(
    tmp_path, write_dicom_series, orientation
):
    write_dicom_series(tmp_path / "s", _ct(), orientation=orientation)
    ours = read_dicom_series(tmp_path / "s")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s")))
    volume = reader.Execute()
    for name in ("s.nii.gz", "s.nrrd"):
        sitk.WriteImage(volume, str(tmp_path / name))
        other = read_image(tmp_path / name)
        np.testing.assert_allclose(other.array, ours.array)
        np.testing.assert_allclose(other.meta["affine"], ours.meta["affine"], atol=1e-4)
        assert other.spacing == pytest.approx(ours.spacing, abs=1e-4)


def test_dicom_series_mixed_series_is_an_error(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "mix", _ct(3), prefix="a")
    write_dicom_series(tmp_path / "mix", _ct(3), prefix="b", origin=(0, 0, 0))
    with pytest.raises(InputError, match="mixed DICOM series: 2 different") as e:
        read_image(tmp_path / "mix")
    assert str(tmp_path / "mix") in str(e.value)


def test_dicom_series_missing_slice_is_an_error(tmp_path, write_dicom_series):
    write_dicom_series(tmp_path / "gap", _ct(5), positions=[0, 2.5, 5, 10, 12.5])
    with pytest.raises(InputError, match="irregular slice positions.*missing slices") as e:
        read_image(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(e.value)
    write_dicom_series(tmp_path / "dup", _ct(3), positions=[0, 2.5, 2.5])
    with pytest.raises(InputError, match="same position"):
        read_image(tmp_path / "dup")


def test_dicom_series_slice_without_pixel_data_is_an_error(tmp_path, write_dicom_series):
    import pydicom

    paths = write_dicom_series(tmp_path / "np", _ct(3))
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    with pytest.raises(InputError, match="no pixel data") as e:
        read_image(tmp_path / "np")
    assert str(paths[1]) in str(e.value)


def test_ct_without_rescale_tags_is_an_error(tmp_path, write_dicom_series):
    paths = write_dicom_series(tmp_path / "raw", _ct(3), rescale=False)
    with pytest.raises(InputError, match="CT DICOM without RescaleSlope and RescaleIntercept"):
        read_image(tmp_path / "raw")
    with pytest.raises(InputError, match="Hounsfield") as e:
        read_image(paths[0])  # a single CT file too
    assert str(paths[0]) in str(e.value)


def test_mr_series_needs_no_rescale(tmp_path, write_dicom_series):
    data = np.random.default_rng(4).integers(0, 1000, size=(3, 4, 5)).astype(np.int16)
    write_dicom_series(tmp_path / "mr", data, modality="MR")
    img = read_image(tmp_path / "mr")
    assert img.modality == "MR"
    np.testing.assert_array_equal(img.array[0], data)


def test_ndim_mismatch_is_an_error_both_ways(tmp_path):
    vol = _nifti(tmp_path / "v.nii.gz", np.ones((4, 5, 6), np.float32), np.eye(4))
    with pytest.raises(InputError, match="is a 3D volume, expected a 2D image") as e:
        read_image(vol, ndim=2)
    assert str(vol) in str(e.value)
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    with pytest.raises(InputError, match="is a 2D image, expected a 3D volume"):
        read_image(png, ndim=3)
    assert read_image(png, ndim=2).array.shape == (1, 4, 4)
    assert read_image(vol, ndim=3).array.shape == (1, 6, 5, 4)
    with pytest.raises(InputError, match="is a 3D volume, expected a 2D image"):
        load_2d(vol, 8)  # the 2D loaders ask for ndim=2


def test_folder_without_dicom_is_an_error(tmp_path):
    (tmp_path / "note.txt").write_text("x")
    with pytest.raises(InputError, match="is a folder without DICOM files"):
        read_image(tmp_path)
