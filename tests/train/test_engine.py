"""The trainer factory: loggers by name, with a clear error when TensorBoard is missing."""

from __future__ import annotations

import importlib.util

import pytest
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from medfoundry.errors import MedfoundryError
from medfoundry.train.engine import KeptCSVLogger, make_loggers, make_trainer

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
