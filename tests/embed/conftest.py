"""A tiny pretrained-looking 2D backbone checkpoint for the Eve tests (no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medfoundry.nets import create_backbone
from medfoundry.zoo import save_checkpoint


@pytest.fixture
def eve_checkpoint(tmp_path: Path) -> Path:
    """A run folder whose `checkpoint/` holds a tiny ResNet at input 32, loaded at 64."""
    torch.manual_seed(1)
    net = create_backbone(name="resnet10", width=0.125, in_channels=1)
    run = tmp_path / "run"
    save_checkpoint(
        run / "checkpoint",
        net.state_dict(),
        {
            "method": "adam",
            "backbone": net.config,
            "input_size": 32,
            "training_data": {"load_size": 64},
        },
    )
    return run


@pytest.fixture
def gradient_images(tmp_path: Path) -> Path:
    """Six 96x96 images in two folders: a bright disc at different places."""
    root = tmp_path / "imgs"
    yy, xx = np.mgrid[:96, :96]
    for i in range(6):
        folder = root / ("a" if i < 3 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cx, cy = 20 + 10 * i, 30 + 5 * i
        img = 40 + 180 * (((xx - cx) ** 2 + (yy - cy) ** 2) < 150) + 20 * (xx / 96)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"im{i}.png")
    return root
