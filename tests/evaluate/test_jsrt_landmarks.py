"""JSRT landmarks from the SCR masks: each rule on shapes with a known answer, the left/right
convention, the errors, the points CSV, and anatomical sanity on the real data."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.data.manifest import read_csv_manifest
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.evaluate.jsrt_landmarks import (
    CSV_COLUMNS,
    LANDMARKS,
    STRUCTURES,
    clavicle_ends,
    extreme_point,
    landmarks_from_masks,
    read_jsrt_landmarks,
    top_border_point,
    write_points_csv,
)

H = W = 200


def _rect(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Boolean (H, W) mask of columns x0..x1 and rows y0..y1 (inclusive)."""
    m = np.zeros((H, W), bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def _toy_masks() -> dict[str, np.ndarray]:
    """Rectangles: lungs 60x140 on each side, a heart 60x60, clavicles as 60x6 bars."""
    return {
        "right_lung": _rect(20, 79, 30, 169),  # on the image's LEFT (the patient's right)
        "left_lung": _rect(120, 179, 30, 169),
        "heart": _rect(80, 139, 100, 159),
        "right_clavicle": _rect(30, 89, 20, 25),
        "left_clavicle": _rect(110, 169, 20, 25),
    }


def _coords(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    return xs.astype(float), ys.astype(float)


def test_landmark_list_is_long_enough_and_unique() -> None:
    assert len(LANDMARKS) >= 10
    assert len(set(LANDMARKS)) == len(LANDMARKS)


def test_every_rule_on_rectangles_gives_the_known_point() -> None:
    p = landmarks_from_masks(_toy_masks())
    assert list(p) == list(LANDMARKS)
    expected = {
        # apex: rows within 2 % of the 139-row height of the top (rows 30..32), mean column.
        "right_lung_apex": (49.5, 31.0),
        "left_lung_apex": (149.5, 31.0),
        # 45-degree corners: the slab of the 4 diagonals nearest the corner averages to
        # one pixel inside it (10 pixels, mean offset 1 along x and along y).
        "right_costophrenic_angle": (21.0, 168.0),
        "right_cardiophrenic_angle": (78.0, 168.0),
        "left_costophrenic_angle": (178.0, 168.0),
        # heart corner: 3 diagonals (6 pixels, mean offset 2/3).
        "heart_apex": (139 - 2 / 3, 159 - 2 / 3),
        "heart_top": (109.5, 100.0),
        # clavicle ends: the last 10 % of the 59-pixel length (6 columns), mean.
        "right_clavicle_medial": (86.5, 22.5),
        "right_clavicle_lateral": (32.5, 22.5),
        "left_clavicle_medial": (112.5, 22.5),
        "left_clavicle_lateral": (166.5, 22.5),
        "right_lung_centroid": (49.5, 99.5),
        "left_lung_centroid": (149.5, 99.5),
        "heart_centroid": (109.5, 129.5),
    }
    assert set(expected) == set(LANDMARKS)
    for name, (x, y) in expected.items():
        assert p[name] == pytest.approx((x, y), abs=1e-9), name


def test_extreme_point_of_a_wedge_is_its_tip() -> None:
    """A wedge with its acute tip at (20, 180), opening up-right: the (-1, 1) extreme."""
    yy, xx = np.mgrid[:H, :W]
    wedge = (xx >= 20) & (xx <= 80) & (yy <= 180) & (yy >= 180 - 3 * (xx - 20))
    assert extreme_point(*_coords(wedge), (-1, 1), fraction=0.0) == (20.0, 180.0)
    x, y = extreme_point(*_coords(wedge), (-1, 1))
    assert math.hypot(x - 20, y - 180) < 3.0  # the slab stays at the tip
    assert extreme_point(*_coords(wedge), (0, -1), fraction=0.0) == (80.0, 0.0)


def test_top_border_point_interpolates_between_columns() -> None:
    m = np.zeros((50, 20), bool)
    m[10:, 5] = True
    m[20:, 6] = True
    assert top_border_point(m, 5.0) == 10.0
    assert top_border_point(m, 5.25) == pytest.approx(12.5)
    m[:, 6] = False  # an empty neighbour column takes the other's row
    assert top_border_point(m, 5.5) == 10.0


def test_oblique_clavicle_medial_end_is_towards_the_midline() -> None:
    """A bar rising laterally (as clavicles do): medial end = lower end, nearer the middle."""
    yy, xx = np.mgrid[:H, :W]
    bar = (np.abs((yy - 60) - 0.4 * (xx - 20)) <= 3) & (xx >= 20) & (xx <= 80)  # right
    medial, lateral = clavicle_ends(*_coords(bar), +1.0)
    assert medial[0] > 70 and lateral[0] < 30
    assert medial[1] > lateral[1]
    mirrored = bar[:, ::-1]  # the same bar as a left clavicle
    medial_l, lateral_l = clavicle_ends(*_coords(mirrored), -1.0)
    assert medial_l == pytest.approx((W - 1 - medial[0], medial[1]))
    assert lateral_l == pytest.approx((W - 1 - lateral[0], lateral[1]))


def test_left_right_convention_and_mirror_symmetry() -> None:
    """The patient's right is on the image's left; mirroring the image and swapping the
    names maps every right landmark onto its left twin."""
    yy, xx = np.mgrid[:H, :W]
    masks = {
        "right_lung": ((yy - 100) / 70) ** 2 + ((xx - 55) / 30) ** 2 < 1,
        "left_lung": ((yy - 105) / 65) ** 2 + ((xx - 150) / 28) ** 2 < 1,
        "heart": ((yy - 130) / 30) ** 2 + ((xx - 110) / 35) ** 2 < 1,
        "right_clavicle": (np.abs((yy - 40) - 0.3 * (xx - 35)) <= 3) & (xx >= 35) & (xx <= 90),
        "left_clavicle": (np.abs((yy - 42) - 0.3 * (170 - xx)) <= 3) & (xx >= 115) & (xx <= 170),
    }
    p = landmarks_from_masks(masks)
    for name in ("right_lung_apex", "right_costophrenic_angle", "right_lung_centroid"):
        assert p[name][0] < W / 2, name
        assert p[name.replace("right", "left")][0] > W / 2, name
    assert p["right_costophrenic_angle"][0] < p["right_lung_apex"][0]  # lateral = image left
    assert p["left_costophrenic_angle"][0] > p["left_lung_apex"][0]
    assert p["right_cardiophrenic_angle"][0] > p["right_costophrenic_angle"][0]
    assert p["right_clavicle_medial"][0] > p["right_clavicle_lateral"][0]
    assert p["left_clavicle_medial"][0] < p["left_clavicle_lateral"][0]
    assert p["heart_apex"][0] > p["heart_centroid"][0]  # the apex points to the patient's left

    flipped = {
        "right_lung": masks["left_lung"][:, ::-1],
        "left_lung": masks["right_lung"][:, ::-1],
        "heart": masks["heart"][:, ::-1],
        "right_clavicle": masks["left_clavicle"][:, ::-1],
        "left_clavicle": masks["right_clavicle"][:, ::-1],
    }
    q = landmarks_from_masks(flipped)
    twins = [n for n in LANDMARKS if n.startswith("right_") and n.replace("right", "left") in q]
    assert len(twins) >= 5
    for name in twins:
        mirrored = (W - 1 - p[name][0], p[name][1])
        assert q[name.replace("right", "left")] == pytest.approx(mirrored, abs=1e-9), name


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture
def toy_folder(tmp_path: Path, make_jsrt_like) -> Path:
    return make_jsrt_like(tmp_path / "jsrt", ["A01", "A02", "A03"], size=64)


def test_empty_mask_error_names_file_and_structure(toy_folder: Path) -> None:
    bad = toy_folder / "masks" / "heart" / "A02.png"
    _png(bad, np.zeros((64, 64)))
    with pytest.raises(InputError) as e:
        read_jsrt_landmarks(toy_folder)
    assert str(bad) in str(e.value) and "heart" in str(e.value) and "empty" in str(e.value)
    assert "\n" not in str(e.value)


def test_non_binary_mask_error_names_file(toy_folder: Path) -> None:
    bad = toy_folder / "masks" / "left_lung" / "A03.png"
    m = np.asarray(Image.open(bad)).copy()
    m[m > 0] = 128
    _png(bad, m)
    with pytest.raises(InputError, match="not a binary mask") as e:
        read_jsrt_landmarks(toy_folder)
    assert str(bad) in str(e.value)


def test_missing_mask_and_wrong_size_errors_name_file(toy_folder: Path) -> None:
    missing = toy_folder / "masks" / "right_clavicle" / "A01.png"
    missing.unlink()
    with pytest.raises(InputError, match="missing mask") as e:
        read_jsrt_landmarks(toy_folder)
    assert str(missing) in str(e.value)
    _png(missing, np.zeros((32, 64)))
    with pytest.raises(InputError, match="differs from its image") as e:
        read_jsrt_landmarks(toy_folder)
    assert str(missing) in str(e.value)


def test_clavicle_without_main_axis_is_an_error(toy_folder: Path) -> None:
    bad = toy_folder / "masks" / "left_clavicle" / "A01.png"
    square = np.zeros((64, 64))
    square[8:16, 40:48] = 255
    _png(bad, square)
    with pytest.raises(InputError, match="no main axis") as e:
        read_jsrt_landmarks(toy_folder)
    assert str(bad) in str(e.value)


def test_points_csv_round_trips(toy_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "points.csv"
    n = write_points_csv(toy_folder, out, size=24)
    records = read_jsrt_landmarks(toy_folder)
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert n == len(rows) == len(records) * len(LANDMARKS)
    expected = [
        (os.path.abspath(r.image), name, x, y) for r in records for name, (x, y) in r.points.items()
    ]
    for row, (image, name, x, y) in zip(rows, expected, strict=True):
        assert Path(row["image"]).is_absolute() and row["image"] == image
        assert row["name"] == name and int(row["size"]) == 24
        assert float(row["x"]) == pytest.approx(x, abs=5e-4)
        assert float(row["y"]) == pytest.approx(y, abs=5e-4)
    assert len(read_csv_manifest(out)) == len(rows)  # readable as a manifest from anywhere
    assert sorted(p.name for p in out.parent.iterdir()) == ["points.csv"]  # no temp file left
    with pytest.raises(MedfoundryError, match="size"):
        write_points_csv(toy_folder, out, size=0)


def test_real_jsrt_landmarks_are_anatomically_sane(shared_data: Path, tmp_path: Path) -> None:
    """Every 3rd image of the real JSRT folder (kept fast): lungs on their sides, apices above
    the costophrenic angles, clavicles above the heart, all points inside and apart."""
    source = shared_data / "jsrt"
    if not (source / "images").is_dir():
        pytest.skip("../shared/data/jsrt not present")
    ids = sorted(p.stem for p in (source / "images").glob("*.png"))[::3]
    folder = tmp_path / "jsrt"
    (folder / "images").mkdir(parents=True)
    for s in STRUCTURES:
        (folder / "masks" / s).mkdir(parents=True)
    for i in ids:
        (folder / "images" / f"{i}.png").symlink_to(source / "images" / f"{i}.png")
        for s in STRUCTURES:
            (folder / "masks" / s / f"{i}.png").symlink_to(source / "masks" / s / f"{i}.png")
    records = read_jsrt_landmarks(folder)
    assert len(records) == len(ids) >= 10
    for r in records:
        p, (h, w) = r.points, r.shape
        assert len(p) >= 10
        xy = np.array(list(p.values()))
        assert ((xy >= 0) & (xy <= [w - 1, h - 1])).all(), r.id
        for side in ("right", "left"):
            assert p[f"{side}_lung_apex"][1] < p[f"{side}_costophrenic_angle"][1], r.id
        for name in ("right_lung_apex", "right_costophrenic_angle", "right_lung_centroid"):
            assert p[name][0] < w / 2, (r.id, name)
            assert p[name.replace("right", "left")][0] > w / 2, (r.id, name)
        for name in LANDMARKS:
            if "clavicle" in name:
                assert p[name][1] < p["heart_top"][1], (r.id, name)
        assert p["right_clavicle_medial"][0] > p["right_clavicle_lateral"][0], r.id
        assert p["left_clavicle_medial"][0] < p["left_clavicle_lateral"][0], r.id
        distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
        assert distance.min() > 15, r.id  # distinct landmarks (dev set minimum: 24.5 px)


def test_landmarks_command_writes_points_that_embed_reads(
    toy_folder: Path, tmp_path: Path, capsys
) -> None:
    from medfoundry.cli import main
    from medfoundry.tasks.embed import read_points

    out = tmp_path / "points.csv"
    assert main(["landmarks", "--data", str(toy_folder), "--out", str(out), "--size", "24"]) == 0
    rows = read_points(out)
    assert len(rows) == 3 * len(LANDMARKS) and {int(r["size"]) for r in rows} == {24}
    assert f"{len(rows)} points" in capsys.readouterr().out
    assert main(["landmarks", "--data", str(toy_folder), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path) in err and "folder" in err
