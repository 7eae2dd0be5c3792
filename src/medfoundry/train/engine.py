"""Build Lightning trainers with the project's defaults: progress bars, CSV (and optionally
TensorBoard) logs, atomic checkpoints.

Every training command (pretrain, finetune, benchmarks) goes through `make_trainer`, so
precision, devices, multi-node and resume behave the same everywhere.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from medfoundry.errors import MedfoundryError
from medfoundry.runtime import atomic_path

LOGGERS = ("csv", "tensorboard")


def make_loggers(out_dir: Path, names: Sequence[str]) -> list[Logger]:
    """CSV logs in `out_dir/logs/metrics.csv` (always first: the curves read them) and, when
    asked, TensorBoard event files in `out_dir/tensorboard/`."""
    unknown = sorted(set(names) - set(LOGGERS))
    if unknown:
        raise MedfoundryError(f"trainer.loggers: unknown {unknown}; choose from {list(LOGGERS)}")
    loggers: list[Logger] = [CSVLogger(str(out_dir), name="logs", version="")]
    if "tensorboard" in names:
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise MedfoundryError(
                "trainer.loggers: 'tensorboard' needs the tensorboard package "
                "(pip install tensorboard, or the medfoundry[tensorboard] extra)"
            )
        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    return loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write Lightning checkpoints to a temporary file and rename, so a kill never corrupts one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def quiet_lightning() -> None:
    """Silence Lightning's tips and per-run chatter that drown the progress bars."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*treespec.*")


def make_trainer(
    out_dir: str | Path | None,
    *,
    max_epochs: int | None = None,
    max_steps: int = -1,
    precision: str = "32-true",
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
    log_every_n_steps: int = 10,
    check_val_every_n_epoch: int | None = 1,
    val_check_interval: int | float | None = None,
    monitor: str | None = None,
    mode: str = "min",
    save_checkpoints: bool = True,
    callbacks: Sequence[Callback] = (),
    gradient_clip_val: float | None = None,
    loggers: Sequence[str] = ("csv",),
) -> L.Trainer:
    """A Lightning Trainer writing logs and `checkpoints/last.ckpt` (+ best) under `out_dir`."""
    quiet_lightning()
    cbs: list[Callback] = list(callbacks)
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=1 if os.environ.get("CI") is None else 50))
    plugins: list[Any] = []
    if out_dir is not None and save_checkpoints:
        out_dir = Path(out_dir)
        cbs.append(
            ModelCheckpoint(
                dirpath=out_dir / "checkpoints",
                filename="best",
                monitor=monitor,
                mode=mode,
                save_last=True,
                save_top_k=1,
            )
        )
        plugins.append(AtomicCheckpointIO())
    logger: Any = make_loggers(Path(out_dir), loggers) if out_dir is not None else False
    return L.Trainer(
        default_root_dir=str(out_dir) if out_dir is not None else None,
        max_epochs=max_epochs,
        max_steps=max_steps,
        precision=precision,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=logger,
        callbacks=cbs,
        plugins=plugins or None,
        enable_progress_bar=progress,
        enable_checkpointing=bool(out_dir is not None and save_checkpoints),
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
        check_val_every_n_epoch=check_val_every_n_epoch,
        val_check_interval=val_check_interval,
        num_sanity_val_steps=0,
        deterministic=False,
        gradient_clip_val=gradient_clip_val,
    )


def resume_path(out_dir: str | Path) -> str | None:
    """The checkpoint to resume from (`checkpoints/last.ckpt`), if a killed run left one."""
    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None


class BestWeights(Callback):
    """Keep an in-memory CPU copy of the weights at the best monitored validation value.

    Few-shot runs are short and many; restoring the best-by-validation weights at the end is the
    model selection, without writing a checkpoint per run. `history` lists (step, value).
    """

    def __init__(self, monitor: str, mode: str = "max") -> None:
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        score = float(value)
        if score != score:  # NaN never wins
            return
        self.history.append((int(trainer.global_step), score))
        better = (
            self.best_score is None
            or (self.mode == "max" and score > self.best_score)
            or (self.mode == "min" and score < self.best_score)
        )
        if better:
            self.best_score = score
            self.best_step = int(trainer.global_step)
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }

    def restore(self, module: torch.nn.Module) -> bool:
        """Load the best weights back (False, and nothing changed, if validation never ran)."""
        if self.best_state is None:
            return False
        module.load_state_dict(self.best_state)
        return True
