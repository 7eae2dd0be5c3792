"""read_image on the shared real data (skipped when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.io import read_image

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def test_jsrt_png():
    folder = _need(DATA / "jsrt" / "images")
    path = sorted(folder.glob("*.png"))[0]
    img = read_image(path)
    assert img.array.shape == (1, 512, 512)
    assert img.array.dtype == np.float32
    assert 0 <= img.array.min() < img.array.max() <= 255


def test_kermany_jpg():
    folder = _need(DATA / "kermany" / "NORMAL")
    path = sorted(folder.glob("*.jp*g"))[0]
    img = read_image(path)
    assert img.array.shape == (1, 224, 224)
    assert img.array.max() > 100


def test_ct_dicom_slice_in_hounsfield_units():
    folder = _need(DATA / "ct_abdomen" / "dicom")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    img = read_image(files[len(files) // 2])  # no .dcm suffix: found by the DICM header
    assert img.modality == "CT"
    assert img.array.shape == (1, 512, 512)
    assert img.array.min() <= -1000  # air
    assert (img.array > 20).mean() > 0.01  # soft tissue / bone
    assert img.array.max() < 4000
    assert img.meta["voi"] == "none" and img.meta["modality_lut"] == "rescale"
    assert img.spacing[0] == pytest.approx(img.spacing[1]) and 0.3 < img.spacing[0] < 2


def test_ct_dicom_series_in_hu_with_spacing_from_tags():
    import pydicom

    folder = _need(DATA / "ct_abdomen" / "dicom")
    img = read_image(folder)  # a folder of extension-less slices: one series
    assert img.modality == "CT" and img.array.shape == (1, 20, 512, 512)
    assert -1100 <= img.array.min() <= -1000  # air / outside the field of view, in HU
    assert img.array.max() > 500  # bone
    tags = pydicom.dcmread(next(p for p in folder.iterdir()), stop_before_pixels=True)
    row, col = (float(v) for v in tags.PixelSpacing)
    # 3 mm thick slices reconstructed every 2 mm: the spacing is the position step
    assert img.meta["slice_thickness"] == pytest.approx(3.0)
    assert img.spacing == pytest.approx((2.0, row, col))
    affine = np.asarray(img.meta["affine"])
    assert affine[2, 0] == pytest.approx(2.0)  # D goes towards the head (LPS z)


def test_mr_dicom_series_sorted_by_position():
    folder = _need(DATA / "dicom" / "brain_mr_t1post")
    img = read_image(folder)
    assert img.modality == "MR" and img.array.shape == (1, 22, 320, 280)
    assert img.spacing == pytest.approx((6.5, 0.6875, 0.6875), abs=1e-4)
    affine = np.asarray(img.meta["affine"])
    assert affine[2, 0] > 6  # slice axis mostly superior, oblique by ~11 degrees


def test_real_series_nifti_round_trip_keeps_affine_and_spacing(tmp_path):
    import nibabel as nib

    img = read_image(_need(DATA / "dicom" / "brain_mr_t1post"))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    dhw_to_ijk = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    affine_ras = flip @ np.asarray(img.meta["affine"]) @ dhw_to_ijk
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(img.array[0].transpose(2, 1, 0), affine_ras), path)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.meta["affine"], img.meta["affine"], atol=1e-4)
    assert back.spacing == pytest.approx(img.spacing, abs=1e-4)


def test_ct_nifti_reads_in_the_same_convention():
    img = read_image(_need(DATA / "ct_abdomen" / "example_ct.nii.gz"))
    assert img.array.shape == (1, 112, 101, 122) and img.spacing == pytest.approx((3, 3, 3))
    assert img.array.min() < -1000 and img.meta["axis_order"] == "SPL"
