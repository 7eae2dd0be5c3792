"""Masks are validated: a mask must be binary (0 and one foreground value, or all background),
else a one-line error naming the file; 0/1, 0/255 and RGB-saved binary masks still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli import main
from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.data.segmentation import check_binary_mask, load_segmentation_set
from medfoundry.errors import InputError


def _set(root: Path, mask: np.ndarray, mode: str = "L") -> Path:
    """One 32x32 image with one ``heart`` mask."""
    for folder in ("images", "masks/heart"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(mask).convert(mode).save(root / "masks" / "heart" / "a.png")
    return root / "masks" / "heart" / "a.png"


def _load(root: Path):
    return load_segmentation_set(scan_segmentation_folder(root), 32, ["heart"])


@pytest.mark.parametrize("value", [1, 255])
def test_binary_masks_load(tmp_path, value):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = value
    _set(tmp_path, mask)
    _, masks = _load(tmp_path)
    assert int(masks.sum()) == 144


def test_an_rgb_saved_binary_mask_and_empty_and_full_masks_load(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[:4] = 255
    _set(tmp_path / "rgb", mask, mode="RGB")
    assert int(_load(tmp_path / "rgb")[1].sum()) == 4 * 32
    _set(tmp_path / "empty", np.zeros((32, 32), np.uint8))
    assert int(_load(tmp_path / "empty")[1].sum()) == 0
    _set(tmp_path / "full", np.full((32, 32), 255, np.uint8))
    assert int(_load(tmp_path / "full")[1].sum()) == 32 * 32


def test_a_grayscale_image_given_as_a_mask_is_an_error_naming_it(tmp_path):
    xray = (np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint8)
    path = _set(tmp_path, xray)
    with pytest.raises(
        InputError, match=r"not a binary mask \(found 200 distinct values, e\.g\. 0, 1,"
    ):
        _load(tmp_path)
    try:
        _load(tmp_path)
    except InputError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)


def test_a_label_map_with_two_foreground_values_is_an_error():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, :2], mask[0, 4:] = 1, 2
    with pytest.raises(InputError, match="found 3 distinct values, e.g. 0, 1, 2"):
        check_binary_mask(mask, "m.png")
    check_binary_mask(np.where(mask > 0, 7, 0), "m.png")  # one foreground value: binary


def test_cli_finetune_refuses_a_non_binary_mask_in_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i : 20, 6:24] = 255
        _set(root, mask)
        Image.open(root / "images" / "a.png").save(root / "images" / f"p{i}.png")
        Image.fromarray(mask).save(root / "masks" / "heart" / f"p{i}.png")
    for name in ("images", "masks/heart"):
        (root / name / "a.png").unlink()
    bad = root / "masks" / "heart" / "p1.png"
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(bad)
    args = ["finetune", "--task", "segmentation", "--data", str(root), "--pretrained", "none"]
    args += ["--out", str(tmp_path / "run"), "--steps", "1", "--image-size", "32"]
    args += ["--set", "accelerator=cpu", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: not a binary mask" in err[0]
