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


JSRT_NAMES = ["heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def _make_jsrt_like(root: Path, ids: list[str], size: int = 64, seed: int = 0) -> Path:
    """Chest-X-ray-like toys: dark lungs, a bright disk heart, two thin clavicle bars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    s = size / 64
    for name in ids:
        masks = {n: np.zeros((size, size), bool) for n in JSRT_NAMES}
        dy, dx = rng.integers(-3, 4, 2) * s
        masks["right_lung"] = ((yy - 32 * s - dy) / (20 * s)) ** 2 + (
            (xx - 18 * s - dx) / (9 * s)
        ) ** 2 < 1
        masks["left_lung"] = ((yy - 32 * s - dy) / (20 * s)) ** 2 + (
            (xx - 46 * s - dx) / (9 * s)
        ) ** 2 < 1
        r = rng.uniform(8, 11) * s
        masks["heart"] = (yy - 42 * s - dy) ** 2 + (xx - 34 * s - dx) ** 2 < r**2
        row = int(10 * s + dy)
        masks["right_clavicle"][row : row + int(3 * s), int(8 * s) : int(28 * s)] = True
        masks["left_clavicle"][row : row + int(3 * s), int(36 * s) : int(56 * s)] = True
        img = np.full((size, size), 150.0)
        img[masks["left_lung"] | masks["right_lung"]] = 70
        img[masks["heart"]] = 200
        img[masks["left_clavicle"] | masks["right_clavicle"]] = 235
        img += rng.normal(0, 12, img.shape)
        _png(root / "images" / f"{name}.png", img)
        for n, m in masks.items():
            _png(root / "masks" / n / f"{name}.png", m.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="session")
def make_jsrt_like():
    """Factory `(root, ids, size=64, seed=0) -> root` of toy JSRT-layout folders."""
    return _make_jsrt_like
