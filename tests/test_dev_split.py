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
