"""A constant image (every pixel equal) is accepted with one warning naming it, wherever
images are loaded for training (pretraining / classification sets, segmentation sets)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from medfoundry.data.image2d import is_constant, load_2d
from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.data.segmentation import load_segmentation_set
from medfoundry.data.unlabeled2d import load_images


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def test_is_constant():
    assert is_constant(np.full((1, 4, 4), 7.0)) and not is_constant(np.eye(4)[None])
    assert not is_constant(np.zeros((1, 0, 0)))


def test_load_images_warns_once_naming_the_constant_images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.png")
        _png(paths[-1], np.full((16, 16), 30 * i) if i % 2 else rng.integers(0, 255, (16, 16)))
    with pytest.warns(UserWarning, match="2 constant images") as record:
        x = load_images(paths, 16, progress=False)
    messages = [str(w.message) for w in record if "constant" in str(w.message)]
    assert len(messages) == 1 and str(paths[1]) in messages[0] and str(paths[3]) in messages[0]
    assert bool(np.isfinite(x.numpy()).all())  # accepted, and normalised to finite values


def test_no_warning_without_constant_images(tmp_path):
    path = tmp_path / "a.png"
    _png(path, np.arange(256).reshape(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_2d(path, 16)


def test_segmentation_set_warns_about_a_constant_image(tmp_path):
    _png(tmp_path / "images" / "a.png", np.full((16, 16), 100))
    mask = np.zeros((16, 16))
    mask[4:8, 4:8] = 255
    _png(tmp_path / "masks" / "heart" / "a.png", mask)
    with pytest.warns(UserWarning, match=r"a\.png: a constant image"):
        load_segmentation_set(scan_segmentation_folder(tmp_path), 16, ["heart"])
