"""tools/make_dev_split.py: a seeded, disjoint dev train/test split made of links."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_dev_split.py"


def test_split_is_disjoint_complete_and_seeded(tmp_path, make_jsrt_like):
    src = make_jsrt_like(tmp_path / "src", [f"ID{i}" for i in range(6)])

    def split(out: Path) -> tuple[set[str], set[str]]:
        cmd = [sys.executable, str(TOOL), "--source", str(src), "--out", str(out), "--test", "2"]
        subprocess.run(cmd, check=True, capture_output=True)
        ids = {p: {f.stem for f in (out / p / "images").iterdir()} for p in ("train", "test")}
        for part, names in ids.items():
            for name in names:
                assert (out / part / "masks" / "heart" / f"{name}.png").is_symlink()
        return ids["train"], ids["test"]

    train, test = split(tmp_path / "a")
    assert len(test) == 2 and len(train) == 4 and not train & test
    assert split(tmp_path / "b") == (train, test)


def test_class_folder_split_keeps_patients_whole(tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "kermany"
    names = {"NORMAL": [f"IM-{i:04d}-0001" for i in range(8)], "PNEUMONIA": []}
    names["PNEUMONIA"] = [f"person{i}_bacteria_{j}" for i in range(6) for j in range(2)]
    for cls, stems in names.items():
        (src / cls).mkdir(parents=True)
        for stem in stems:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / cls / f"{stem}.png")
    out = tmp_path / "split"
    cmd = [sys.executable, str(TOOL), "--source", str(src), "--out", str(out)]
    subprocess.run([*cmd, "--test-fraction", "0.5"], check=True, capture_output=True)
    for cls in names:
        train = {f.name for f in (out / "train" / cls).iterdir()}
        test = {f.name for f in (out / "test" / cls).iterdir()}
        assert train and test and not train & test
        assert len(train) + len(test) == len(names[cls])
    test_patients = {f.name.split("_")[0] for f in (out / "test" / "PNEUMONIA").iterdir()}
    train_patients = {f.name.split("_")[0] for f in (out / "train" / "PNEUMONIA").iterdir()}
    assert len(test_patients) == 3 and not test_patients & train_patients


def test_msd_split_links_cases_and_rewrites_the_count(tmp_path):
    import json

    src = tmp_path / "msd"
    for folder in ("imagesTr", "labelsTr"):
        (src / folder).mkdir(parents=True)
        for i in range(5):
            (src / folder / f"case_{i:03d}.nii.gz").write_bytes(b"x")
    (src / "dataset.json").write_text(json.dumps({"name": "toy", "numTraining": 5}))
    out = tmp_path / "split"
    cmd = [sys.executable, str(TOOL), "--source", str(src), "--out", str(out), "--test", "2"]
    subprocess.run(cmd, check=True, capture_output=True)
    parts = {p: {f.name for f in (out / p / "imagesTr").iterdir()} for p in ("train", "test")}
    assert len(parts["test"]) == 2 and len(parts["train"]) == 3
    assert not parts["train"] & parts["test"]
    for part, names in parts.items():
        assert {f.name for f in (out / part / "labelsTr").iterdir()} == names
        assert json.loads((out / part / "dataset.json").read_text())["numTraining"] == len(names)
