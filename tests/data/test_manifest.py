"""Folder scanning, class folders, CSV manifests and segmentation layouts (no pixels read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.data.manifest import (
    IMAGE_EXTENSIONS,
    ClassificationItem,
    SegmentationItem,
    patient_id_from_name,
    read_csv_manifest,
    scan_class_folders,
    scan_images,
    scan_segmentation_folder,
)
from medfoundry.errors import InputError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_image_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"} == IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_scan_images_sorted_recursive_skips_hidden(tmp_path):
    b = _touch(tmp_path / "b.png")
    a = _touch(tmp_path / "a.JPG")
    sub = _touch(tmp_path / "sub" / "c.dcm")
    _touch(tmp_path / ".hidden.png")
    _touch(tmp_path / ".cache" / "d.png")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "vol.nii.gz")
    assert scan_images(tmp_path) == [a, b, sub]
    assert scan_images(tmp_path, recursive=False) == [a, b]


def test_scan_images_empty_missing_and_file(tmp_path):
    _touch(tmp_path / "readme.txt")
    with pytest.raises(InputError, match=r"no image files found \(looked for .*\.png") as e:
        scan_images(tmp_path)
    assert str(e.value).startswith(str(tmp_path))
    with pytest.raises(InputError, match="no image files found"):
        scan_images(tmp_path / "missing")
    with pytest.raises(InputError, match="not a folder"):
        scan_images(tmp_path / "readme.txt")
    _touch(tmp_path / "sub" / "x.png")
    with pytest.raises(InputError, match="no image files found"):
        scan_images(tmp_path, recursive=False)


@pytest.mark.parametrize(
    "name,group",
    [
        ("person1000_bacteria_2931.jpg", "person1000"),
        ("person447_virus_921_1.jpg", "person447"),
        ("IM-0115-0001.jpg", "IM-0115"),
        ("IM-0429-0001-0002.jpg", "IM-0429"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("JPCLN001.png", "JPCLN001"),
        ("scan_07.dcm", "scan_07"),
    ],
)
def test_patient_id_from_name(name, group):
    assert patient_id_from_name(name) == group


def test_scan_class_folders_labels_and_groups(tmp_path):
    _touch(tmp_path / "PNEUMONIA" / "person1_virus_6.jpeg")
    _touch(tmp_path / "PNEUMONIA" / "person1_bacteria_1.jpeg")
    _touch(tmp_path / "PNEUMONIA" / "person22_bacteria_77.jpeg")
    _touch(tmp_path / "NORMAL" / "IM-0115-0001.jpeg")
    _touch(tmp_path / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg")
    _touch(tmp_path / ".DS_Store" / "x.png")
    items, classes = scan_class_folders(tmp_path)
    assert classes == ["NORMAL", "PNEUMONIA"]
    assert all(isinstance(it, ClassificationItem) for it in items)
    assert [(it.path.name, it.label, it.group) for it in items] == [
        ("IM-0115-0001.jpeg", 0, "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", 0, "NORMAL2-IM-1427"),
        ("person1_bacteria_1.jpeg", 1, "person1"),
        ("person1_virus_6.jpeg", 1, "person1"),
        ("person22_bacteria_77.jpeg", 1, "person22"),
    ]


def test_scan_class_folders_groups_with_the_given_patient_rule(tmp_path):
    _touch(tmp_path / "A" / "p1-x.png")
    _touch(tmp_path / "A" / "p1-y.png")
    _touch(tmp_path / "B" / "p2-x.png")
    items, _ = scan_class_folders(tmp_path, patient_id=lambda path: path.stem.split("-")[0])
    assert [it.group for it in items] == ["p1", "p1", "p2"]
    assert [it.group for it in scan_class_folders(tmp_path)[0]] == ["p1-x", "p1-y", "p2-x"]


def test_scan_class_folders_errors(tmp_path):
    _touch(tmp_path / "ONLY" / "a.png")
    with pytest.raises(InputError, match="at least 2 class folders"):
        scan_class_folders(tmp_path)
    (tmp_path / "EMPTY").mkdir()
    with pytest.raises(InputError, match="class 'EMPTY' is empty") as e:
        scan_class_folders(tmp_path)
    assert "EMPTY" in str(e.value).split(":")[0]


def test_read_csv_manifest_relative_and_absolute(tmp_path):
    img1 = _touch(tmp_path / "imgs" / "a.png")
    mask1 = _touch(tmp_path / "masks" / "a.png")
    other = _touch(tmp_path / "elsewhere" / "b.png")
    csv_path = tmp_path / "lists" / "train.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "\ufeffimage, label ,mask,group,site\n"
        "../imgs/a.png,1,../masks/a.png,p1,x\n"
        f"{other},0,,p2,y\n",
        encoding="utf-8",
    )
    rows = read_csv_manifest(csv_path)
    assert len(rows) == 2
    assert Path(rows[0]["image"]).resolve() == img1.resolve()
    assert Path(rows[0]["image"]).is_absolute()
    assert Path(rows[0]["mask"]).resolve() == mask1.resolve()
    assert rows[0]["label"] == "1" and rows[0]["group"] == "p1" and rows[0]["site"] == "x"
    assert rows[1]["image"] == str(other) and rows[1]["mask"] == ""


def test_read_csv_manifest_errors(tmp_path):
    _touch(tmp_path / "a.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.png,1\n")
    with pytest.raises(InputError, match="missing required column 'image'") as e:
        read_csv_manifest(bad)
    assert str(e.value).startswith(str(bad))

    missing = tmp_path / "missing.csv"
    missing.write_text("image,label\na.png,1\nb.png,0\n")
    with pytest.raises(InputError, match=r"row 2 \(line 3\): image file not found: .*b\.png"):
        read_csv_manifest(missing)

    with pytest.raises(InputError, match="not found"):
        read_csv_manifest(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("image,label\n")
    with pytest.raises(InputError, match="no rows"):
        read_csv_manifest(empty)


def _seg_set(root: Path, ids=("b", "a", "c"), structures=("heart", "lung")) -> Path:
    for i in ids:
        _png(root / "images" / f"{i}.png")
        for s in structures:
            _png(root / "masks" / s / f"{i}.png", 255)
    return root


def test_scan_segmentation_folder(tmp_path):
    root = _seg_set(tmp_path)
    items = scan_segmentation_folder(root)
    assert [it.id for it in items] == ["a", "b", "c"]
    assert all(isinstance(it, SegmentationItem) for it in items)
    assert items[0].image == root / "images" / "a.png"
    assert items[0].masks == {
        "heart": root / "masks" / "heart" / "a.png",
        "lung": root / "masks" / "lung" / "a.png",
    }
    only = scan_segmentation_folder(root, structures=["lung"])
    assert list(only[0].masks) == ["lung"]


def test_scan_segmentation_folder_ids_txt_order_and_subset(tmp_path):
    root = _seg_set(tmp_path)
    (root / "ids.txt").write_text("c\n\na\n")
    assert [it.id for it in scan_segmentation_folder(root)] == ["c", "a"]
    (root / "ids.txt").write_text("c\nzzz\n")
    with pytest.raises(InputError, match="'zzz'"):
        scan_segmentation_folder(root)


def test_scan_segmentation_folder_missing_mask_names_file(tmp_path):
    root = _seg_set(tmp_path)
    (root / "masks" / "lung" / "b.png").unlink()
    with pytest.raises(InputError, match="missing mask for ID 'b', structure 'lung'") as e:
        scan_segmentation_folder(root)
    assert str(e.value).startswith(str(root / "masks" / "lung" / "b.png"))
    # asking only for the complete structure works
    assert len(scan_segmentation_folder(root, structures=["heart"])) == 3


def test_scan_segmentation_folder_layout_errors(tmp_path):
    with pytest.raises(InputError, match="images folder not found"):
        scan_segmentation_folder(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="no image files found"):
        scan_segmentation_folder(tmp_path)
    root = _seg_set(tmp_path / "set")
    with pytest.raises(InputError, match="structure 'spleen' not found"):
        scan_segmentation_folder(root, structures=["spleen"])


def test_real_data_layouts():
    jsrt, kermany = DATA / "jsrt", DATA / "kermany"
    if not (jsrt.is_dir() and kermany.is_dir()):
        pytest.skip(f"shared data not available: {DATA}")
    items = scan_segmentation_folder(jsrt)
    ids = (jsrt / "ids.txt").read_text().split()
    assert [it.id for it in items] == ids
    assert set(items[0].masks) == {
        "heart",
        "left_clavicle",
        "left_lung",
        "right_clavicle",
        "right_lung",
    }
    assert all(p.is_file() for it in items for p in [it.image, *it.masks.values()])

    cls_items, classes = scan_class_folders(kermany)
    assert classes == ["NORMAL", "PNEUMONIA"]
    groups = {it.group for it in cls_items}
    assert len(cls_items) > len(groups) > 100  # several images per patient
    assert not any(it.group.endswith((".jpg", ".jpeg")) for it in cls_items)


def test_scan_images_finds_extensionless_dicom_only(tmp_path):
    (tmp_path / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "CT.1.3.12.2.16573").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (tmp_path / "README").write_text("not an image, no extension")
    (tmp_path / "notes.1").write_text("numeric suffix, not DICOM")
    (tmp_path / "a.png").write_bytes(b"")
    names = [p.name for p in scan_images(tmp_path)]
    assert names == ["CT.1.3.12.2.16573", "IM0001", "a.png"]
