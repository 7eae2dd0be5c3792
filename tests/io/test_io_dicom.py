"""read_image on DICOM files built with pydicom in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from medfoundry.errors import InputError
from medfoundry.io import read_image

STORED = np.array([[0, 100, 1000], [2048, 3000, 4095]], dtype=np.uint16)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = STORED,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **tags,
) -> Path:
    """A minimal single-frame DICOM file (explicit VR little endian, with preamble)."""
    meta = FileMetaDataset()
    sop_class = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome1_radiograph_is_inverted(tmp_path):
    path = write_dicom(tmp_path / "m1.dcm", modality="CR", photometric="MONOCHROME1")
    img = read_image(path)
    assert img.array.shape == (1, 2, 3) and img.array.dtype == np.float32
    assert img.modality == "XR"
    # the lowest stored value (0) comes out highest, over the 12-bit range
    np.testing.assert_array_equal(img.array[0], 4095.0 - STORED)
    assert img.array[0, 0, 0] == img.array.max()
    assert img.meta["inverted"] is True
    assert img.meta["photometric_interpretation"] == "MONOCHROME1"


def test_monochrome2_is_not_inverted(tmp_path):
    img = read_image(write_dicom(tmp_path / "m2.dcm"))
    np.testing.assert_array_equal(img.array[0], STORED)
    assert img.meta["inverted"] is False
    assert img.meta["modality_lut"] == "none" and img.meta["voi"] == "none"


def test_rescale_applied_ct_keeps_hu_without_window(tmp_path):
    path = write_dicom(
        tmp_path / "ct.dcm",
        modality="CT",
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
        PixelSpacing=[0.7, 0.8],
    )
    img = read_image(path)
    assert img.modality == "CT"
    np.testing.assert_allclose(img.array[0], STORED * 2.0 - 1024.0)
    assert img.array.min() == -1024.0
    assert img.meta["modality_lut"] == "rescale"
    assert img.meta["rescale_slope"] == 2.0 and img.meta["rescale_intercept"] == -1024.0
    assert img.meta["voi"] == "none"  # no window for CT
    assert img.meta.get("voi_available") is True
    assert img.spacing == pytest.approx((0.7, 0.8))


def test_signed_ct_pixels(tmp_path):
    signed = np.array([[-1024, -500], [0, 1500]], dtype=np.int16)
    path = write_dicom(
        tmp_path / "s.dcm", signed, modality="CT", RescaleSlope=1, RescaleIntercept=0
    )
    np.testing.assert_array_equal(read_image(path).array[0], signed)


def test_window_applied_for_radiograph(tmp_path):
    path = write_dicom(tmp_path / "w.dcm", WindowCenter=2048, WindowWidth=1024)
    img = read_image(path)
    out = img.array[0]
    # below the window -> 0, above -> 4095 (the 12-bit output range), centre -> about middle
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 2] == 0
    assert out[1, 1] == 4095 and out[1, 2] == 4095
    assert abs(out[1, 0] - 2048) < 10
    assert img.meta["voi"] == "window"
    assert img.meta["window_center"] == 2048.0 and img.meta["window_width"] == 1024.0
    assert img.meta["value_range"] == (0.0, 4095.0)


def test_window_and_monochrome1_together(tmp_path):
    path = write_dicom(
        tmp_path / "w1.dcm", photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=1024
    )
    out = read_image(path).array[0]
    assert out[0, 0] == 4095  # low stored value -> bright after inversion
    assert out[1, 2] == 0


def test_rescale_then_window_for_radiograph(tmp_path):
    path = write_dicom(
        tmp_path / "rw.dcm",
        RescaleSlope=1,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=100,
    )
    out = read_image(path).array[0]
    # stored 1000 -> rescaled 0 -> middle of the window; stored 0 -> -1000 -> window minimum
    lo, hi = -1000.0, 4095.0 - 1000.0
    assert out[0, 0] == lo and out[1, 2] == hi
    assert abs(out[0, 2] - (lo + hi) / 2) < 60


def test_no_pixel_data_is_an_error(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", pixels=None)
    with pytest.raises(InputError, match="no pixel data") as e:
        read_image(path)
    assert str(path) in str(e.value)


def test_multi_frame_is_refused(tmp_path):
    frames = np.stack([STORED] * 3)
    path = write_dicom(tmp_path / "mf.dcm", frames, NumberOfFrames=3)
    with pytest.raises(InputError, match=r"multi-frame DICOM \(3 frames\)"):
        read_image(path)


def test_float_pixel_data_with_nan_is_refused(tmp_path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality = "DX"
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    a = np.array([[0.5, np.nan], [1.0, 2.0]], dtype=np.float32)
    ds.FloatPixelData = a.tobytes()
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="NaN"):
        read_image(tmp_path / "f.dcm")


def test_spacing_sources(tmp_path):
    img = read_image(write_dicom(tmp_path / "a.dcm", PixelSpacing=[0.1, 0.2]))
    assert img.spacing == pytest.approx((0.1, 0.2)) and img.meta["spacing_source"] == "PixelSpacing"
    img = read_image(write_dicom(tmp_path / "b.dcm", ImagerPixelSpacing=[0.143, 0.143]))
    assert img.spacing == pytest.approx((0.143, 0.143))
    assert img.meta["spacing_source"] == "ImagerPixelSpacing"
    img = read_image(write_dicom(tmp_path / "c.dcm"))
    assert img.spacing == (1.0, 1.0) and img.meta["spacing_known"] is False


def test_file_without_extension_is_sniffed(tmp_path):
    path = write_dicom(tmp_path / "IMG0001")
    assert read_image(path).array.shape == (1, 2, 3)
    dotted = write_dicom(tmp_path / "CT.1.2.840.1234")
    assert read_image(dotted).meta["format"] == "DICOM"


def test_truncated_and_garbage_dicom(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", np.zeros((64, 64), np.uint16))
    data = good.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 4000])
    with pytest.raises(InputError, match=str(cut)):
        read_image(cut)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, not dicom at all" * 10)
    with pytest.raises(InputError, match="junk.dcm"):
        read_image(junk)


def test_voi_lut_sequence_with_more_than_256_entries(tmp_path):
    """8-bit VOI LUT with 4096 entries (pydicom 3.0.2's apply_voi wraps indices at 256)."""
    path = write_dicom(tmp_path / "voi.dcm", modality="MG", photometric="MONOCHROME1")
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", [min(255, i // 8) for i in range(4096)])  # LUT Data
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    img = read_image(path)
    lut = np.minimum(255, STORED // 8).astype(np.float32)
    np.testing.assert_array_equal(img.array[0], 255.0 - lut)  # looked up, then inverted
    assert img.meta["voi"] == "lut" and img.meta["value_range"] == (0.0, 255.0)


def test_rgb_dicom_is_three_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", None, modality="OT")
    ds = pydicom.dcmread(path)
    ds.set_pixel_data(rgb, "RGB", 8)
    ds.save_as(path)
    img = read_image(path)
    np.testing.assert_array_equal(img.array, np.moveaxis(rgb, -1, 0))
    assert img.modality == "OT"


def test_dcm_without_preamble_is_read(tmp_path):
    """Old files with no 128-byte preamble / file meta: read with force when named .dcm."""
    src = write_dicom(tmp_path / "src.dcm", modality="CT", RescaleSlope=1, RescaleIntercept=-1024)
    ds = pydicom.dcmread(src)
    bare = Dataset()
    for elem in ds:
        bare.add(elem)
    bare["PixelData"].VR = "OW"
    path = tmp_path / "bare.dcm"
    bare.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_image(path).array[0], STORED - 1024.0)
