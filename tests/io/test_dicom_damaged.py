"""A DICOM series with a damaged slice (zero bytes, truncated, garbage; with or without a
suffix; first, middle or last) is a one-line error naming that FILE, never a silently shorter
volume or a "gap" error naming the folder; the same for a detached header's data file and an
empty extensionless DICOM among 2D images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medfoundry.data.discover import find_inputs
from medfoundry.data.manifest import scan_images
from medfoundry.errors import InputError
from medfoundry.io import read_dicom_series, read_image


def _series(folder: Path, write_dicom_series, suffix: bool = True) -> list[Path]:
    """Six slices, sorted by position (the files are named in shuffled order)."""
    paths = write_dicom_series(folder, np.zeros((6, 8, 8), np.int16))
    paths = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    if not suffix:
        paths = [p.rename(p.with_suffix("")) for p in paths]
    return paths


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"x" * 99}[how])


@pytest.mark.parametrize("suffix", [True, False], ids=["dcm", "no-suffix"])
@pytest.mark.parametrize("where", [0, 2, -1], ids=["first", "middle", "last"])
@pytest.mark.parametrize("how", ["empty", "truncated", "garbage"])
def test_a_damaged_slice_is_an_error_naming_it(tmp_path, write_dicom_series, suffix, where, how):
    paths = _series(tmp_path / "ct", write_dicom_series, suffix)
    victim = paths[where]
    if how == "truncated" and not suffix:
        pytest.skip("a truncated file keeps its DICM header: covered with the .dcm suffix")
    _damage(victim, how)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "ct")
    message = str(err.value)
    assert message.startswith(f"{victim}: ") and "\n" not in message
    assert "gap" not in message and "mixed DICOM series" not in message


def test_a_truncated_extensionless_slice_is_named(tmp_path, write_dicom_series):
    paths = _series(tmp_path / "ct", write_dicom_series, suffix=False)
    _damage(paths[3], "truncated")
    with pytest.raises(InputError, match=rf"^{paths[3]}: "):
        read_dicom_series(tmp_path / "ct")


def test_the_file_list_form_and_discovery_see_damaged_siblings(tmp_path, write_dicom_series):
    """prepare / prepare-2d read a discovered series as a list of files: a damaged slice left
    out of that list (not recognised as DICOM) is named too."""
    paths = _series(tmp_path / "ct", write_dicom_series, suffix=False)
    _damage(paths[-1], "empty")
    inputs, _ = find_inputs(tmp_path)
    (series,) = [i for i in inputs if i.kind == "dicom_series"]
    assert paths[-1] not in series.paths
    with pytest.raises(InputError, match=rf"^{paths[-1]}: empty file \(0 bytes\) among the 5"):
        read_dicom_series(series.paths)


def test_unrelated_files_beside_a_series_are_ignored(tmp_path, write_dicom_series):
    _series(tmp_path / "ct", write_dicom_series)
    (tmp_path / "ct" / "notes.txt").write_text("acquisition notes")
    (tmp_path / "ct" / "empty.json").write_bytes(b"")
    (tmp_path / "ct" / ".000.dcm.tmp").write_bytes(b"")  # a killed copy's hidden temp file
    assert read_image(tmp_path / "ct").spatial_shape == (6, 8, 8)


def test_an_empty_extensionless_dicom_among_2d_images_is_named(tmp_path):
    header = b"\0" * 128 + b"DICM" + b"\0" * 16
    (tmp_path / "IM0001").write_bytes(header)
    (tmp_path / "IM0002").write_bytes(b"")
    (tmp_path / "README").write_text("not an image")
    assert [p.name for p in scan_images(tmp_path)] == ["IM0001", "IM0002"]
    with pytest.raises(InputError, match=r"IM0002: empty file \(0 bytes\)"):
        read_image(tmp_path / "IM0002")


@pytest.mark.parametrize("header", ["a.mhd", "a.nhdr"])
@pytest.mark.parametrize("how", ["truncated", "empty", "missing"])
def test_a_detached_headers_damaged_data_file_is_named(tmp_path, header, how):
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16)), str(tmp_path / header))
    data = tmp_path / "a.raw"
    if how == "missing":
        data.unlink()
    else:
        _damage(data, how)
    with pytest.raises(InputError, match=rf"^{data}: data file of {header}"):
        read_image(tmp_path / header)
