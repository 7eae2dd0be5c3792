"""On the console, the package's warnings are one `medfoundry: warning:` line each."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image


def test_constant_image_warning_is_one_console_line(tmp_path, tiny_pretrain_args) -> None:
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / f"i{i}.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(data / "flat.png")
    argv = tiny_pretrain_args("moco", data, tmp_path / "run")
    res = subprocess.run(
        [sys.executable, "-m", "medfoundry.cli", *argv], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "flat.png" in ln]
    assert len(lines) == 1 and lines[0].startswith("medfoundry: warning:"), res.stderr
    assert "UserWarning" not in res.stderr
