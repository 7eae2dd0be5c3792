"""Segmentation set loading (mask unions, size checks) and batched augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.data.augment import augment_batch
from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.data.segmentation import load_segmentation_set, structure_groups
from medfoundry.errors import InputError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
NAMES = ["heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung"]
REPORTED = ["heart", "clavicle", "lungs"]  # clavicle, lungs: unions of their left_ / right_ masks


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def _folder(root: Path, n: int = 2, size: int = 64) -> Path:
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.full((size, size), 40, np.uint8)
        masks = {name: np.zeros((size, size), np.uint8) for name in NAMES}
        masks["heart"][(yy - 40) ** 2 + (xx - 32) ** 2 < 100] = 255
        masks["right_clavicle"][8:12, 6:26] = 255  # image left = patient right
        masks["left_clavicle"][8:12, 38 : 58 - i] = 255
        masks["right_lung"][14:56, 6:28] = 255
        masks["left_lung"][14:56, 36:58] = 255
        for m in masks.values():
            img[m > 0] += 40
        _png(root / "images" / f"ID{i}.png", img)
        for name, m in masks.items():
            _png(root / "masks" / name / f"ID{i}.png", m)
    return root


def test_groups_are_unions_and_sizes(tmp_path):
    items = scan_segmentation_folder(_folder(tmp_path), structures=NAMES)
    images, masks = load_segmentation_set(items, 32, REPORTED)
    assert images.shape == (2, 1, 32, 32) and images.dtype == torch.float32
    assert masks.shape == (2, 3, 32, 32) and masks.dtype == torch.uint8
    assert set(masks.unique().tolist()) <= {0, 1}
    clav = masks[:, REPORTED.index("clavicle")]
    # union of both clavicle bars: rows 4..5 at 32², on both halves of the image
    assert clav[0, 4:6, 3:13].all() and clav[0, 4:6, 19:29].all()
    assert clav[0, :4].sum() == 0 and clav[0, 6:].sum() == 0
    lungs = masks[0, 2]
    assert lungs[7:28, 3:14].all() and lungs[7:28, 18:29].all()
    assert lungs[:, 15:17].sum() == 0  # the gap between the lungs stays empty
    # the same at full size: exact union, no resampling
    _, full = load_segmentation_set(items, 64, structures=["clavicle"])
    assert full.shape == (2, 1, 64, 64)
    assert int(full[0, 0].sum()) == 4 * 20 + 4 * 20


def test_mask_size_mismatch_names_the_mask(tmp_path):
    root = _folder(tmp_path)
    bad = root / "masks" / "left_lung" / "ID1.png"
    _png(bad, np.zeros((48, 64), np.uint8))
    items = scan_segmentation_folder(root, structures=NAMES)
    with pytest.raises(InputError) as err:
        load_segmentation_set(items, 32)
    assert str(bad) in str(err.value)
    assert "(48, 64)" in str(err.value) and "(64, 64)" in str(err.value)


def test_augment_keeps_masks_binary_and_aligned():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    centres = torch.randint(24, 40, (8, 2), generator=g)
    masks = torch.stack(
        [((yy - cy) ** 2 + (xx - cx) ** 2 < 120).to(torch.uint8) for cy, cx in centres.tolist()]
    )[:, None]
    images = masks.float()
    out_i, out_m = augment_batch(images, masks, generator=g, intensity=0.0)
    assert out_m.dtype == torch.uint8 and set(out_m.unique().tolist()) <= {0, 1}
    assert out_i.shape == images.shape and out_m.shape == masks.shape
    assert not torch.equal(out_m, masks)  # something moved
    # the image followed its mask: identical up to interpolation at the boundary
    assert ((out_i > 0.5).to(torch.uint8) != out_m).float().mean() < 0.005
    # the disks keep roughly their area (scale within ±10% -> area within ±21%)
    ratio = out_m.flatten(1).sum(1).float() / masks.flatten(1).sum(1).float()
    assert ((ratio > 0.75) & (ratio < 1.3)).all()


def test_augment_never_flips_and_jitters_intensity():
    g = torch.Generator().manual_seed(1)
    images = torch.zeros(16, 1, 64, 64)
    images[..., :32] = 1.0  # bright left half
    masks = (images > 0).to(torch.uint8)
    out_i, out_m = augment_batch(images, masks, generator=g)
    # away from the zero-padded borders, the bright half stays on the left for every sample
    left = out_m[..., 16:48, 12:22].float().mean((1, 2, 3))
    right = out_m[..., 16:48, 42:52].float().mean((1, 2, 3))
    assert (left == 1).all() and (right == 0).all()
    assert (
        out_i[..., 16:48, 12:22].mean((1, 2, 3)) > out_i[..., 16:48, 42:52].mean((1, 2, 3))
    ).all()
    # brightness/contrast jitter: per-image means differ, within the configured range
    means = out_i.mean((1, 2, 3))
    assert means.std() > 0.01
    same, _ = augment_batch(images, masks, max_shift=0, max_scale=0, max_rotate_deg=0, intensity=0)
    assert torch.allclose(same, images, atol=1e-5)


def test_augment_batched_on_non_square():
    images = torch.randn(3, 2, 32, 64)
    masks = torch.zeros(3, 4, 32, 64, dtype=torch.bool)
    masks[:, :, 8:24, 16:48] = True
    out_i, out_m = augment_batch(images, masks)
    assert out_i.shape == images.shape and out_m.dtype == torch.bool


@pytest.mark.skipif(not (DATA / "jsrt").is_dir(), reason="shared JSRT data not available")
def test_real_jsrt_masks():
    items = scan_segmentation_folder(DATA / "jsrt", structures=NAMES)[:2]
    images, masks = load_segmentation_set(items, 128, REPORTED)
    assert images.shape == (2, 1, 128, 128)
    frac = masks.float().mean((0, 2, 3))
    heart, clavicle, lungs = frac.tolist()
    assert 0.03 < heart < 0.2 and 0.005 < clavicle < 0.05 and 0.15 < lungs < 0.5


def test_structure_groups_bilateral_names_named_groups_and_mappings():
    masks = ["heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung", "lungs_old"]
    assert structure_groups(REPORTED, masks) == {
        "heart": ("heart",),
        "clavicle": ("left_clavicle", "right_clavicle"),
        "lungs": ("left_lung", "right_lung"),
    }
    assert structure_groups(None, ["b", "a"]) == {"a": ("a",), "b": ("b",)}
    # a mask of the name's own wins over its left / right masks; without the data's masks
    # (or a pair) a name is its own mask; a dataset's named groups and a mapping are taken as given
    assert structure_groups(["lungs"], ["lungs", "left_lung", "right_lung"]) == {
        "lungs": ("lungs",)
    }
    assert structure_groups(["clavicle", "lungs"]) == {
        "clavicle": ("clavicle",),
        "lungs": ("lungs",),
    }
    assert structure_groups(["lungs"], ["left_lung"]) == {"lungs": ("lungs",)}
    assert structure_groups(["kidneys"], ["left_kidney", "right_kidney"])["kidneys"] == (
        "left_kidney",
        "right_kidney",
    )
    assert structure_groups(["all"], named={"all": ["a", "b"]}) == {"all": ("a", "b")}
    assert structure_groups({"x": ["a", "b"]}, masks) == {"x": ("a", "b")}
