"""Shared test fixtures: tiny configs and the optional real-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data folder beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("real data folder ../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def xray_folder(tmp_path: Path) -> Path:
    """Twelve synthetic 8-bit 'radiographs' (64²) with a bright blob at varying places."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(12):
        cy, cx = rng.integers(16, 48, size=2)
        img = (
            60
            + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 80.0)
            + rng.normal(0, 8, (64, 64))
        )
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture
def tiny_pretrain_config():
    """Factory of Adam/MoCo configs small enough for a test."""
    return _tiny_pretrain_config


def _tiny_pretrain_config(method: str = "adam") -> dict:
    """An Adam/MoCo config small enough for a test (seconds on 2 cores)."""
    from medfoundry.config import apply_overrides, load_config

    return apply_overrides(
        load_config(method),
        [
            "backbone={name: resnet10, width: 0.125, in_channels: 1}",
            "data={load_size: 64, val_fraction: 0.2, num_workers: 0}",
            "views={out_size: 32}",
            "epochs=1",
            "moco.proj_hidden=32",
            "moco.proj_dim=16",
            "moco.queue_size=64",
            "optim.batch_size=4",
            "trainer={accelerator: cpu, devices: 1}",
        ]
        + (["levels=[0, 2]"] if method == "adam" else []),
    )
