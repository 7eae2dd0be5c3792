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
