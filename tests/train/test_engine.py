"""The trainer factory: loggers by name, with a clear error when TensorBoard is missing."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medfoundry.errors import MedfoundryError
from medfoundry.train.engine import (
    AtomicCheckpointIO,
    KeptCSVLogger,
    make_loggers,
    make_trainer,
)

HAS_TB = any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))


def test_csv_logger_is_the_default(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, progress=False, accelerator="cpu")
    assert len(trainer.loggers) == 1 and isinstance(trainer.loggers[0], CSVLogger)
    with pytest.raises(MedfoundryError, match="unknown"):
        make_loggers(tmp_path, ["csv", "wandb"])


@pytest.mark.skipif(HAS_TB, reason="tensorboard is installed")
def test_tensorboard_without_the_package_names_the_fix(tmp_path):
    with pytest.raises(MedfoundryError, match="pip install tensorboard"):
        make_loggers(tmp_path, ["csv", "tensorboard"])


@pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed")
def test_tensorboard_logger_writes_beside_the_csv(tmp_path):
    loggers = make_loggers(tmp_path, ["csv", "tensorboard"])
    assert [type(lg) for lg in loggers] == [KeptCSVLogger, TensorBoardLogger]
    assert loggers[1].log_dir.startswith(str(tmp_path / "tensorboard"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_checkpoint_write_on_a_full_disk_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    """torch.save wraps the full disk's OSError in a RuntimeError; the CLI needs the OSError."""
    import medfoundry.train.engine as engine

    monkeypatch.setattr(engine, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    target = tmp_path / "last.ckpt"
    with pytest.raises(OSError) as info:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
