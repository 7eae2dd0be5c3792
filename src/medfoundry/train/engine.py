"""Build Lightning trainers with the project's defaults: progress bars, CSV (and optionally
TensorBoard) logs, atomic checkpoints.

Every training command (pretrain, finetune, benchmarks) goes through `make_trainer`, so
precision, devices, multi-node and resume behave the same everywhere.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.csv_logs import _ExperimentWriter as _CSVWriter
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from medfoundry.errors import CheckpointError, Interrupted, MedfoundryError
from medfoundry.runtime import active_stop_signals, atomic_path, atomic_write_text

LOGGERS = ("csv", "tensorboard")


def make_loggers(
    out_dir: Path, names: Sequence[str], keep_before: int | None = None
) -> list[Logger]:
    """CSV logs in `out_dir/logs/metrics.csv` (always first: the curves read them) and, when
    asked, TensorBoard event files in `out_dir/tensorboard/`. A resumed run keeps the CSV rows
    logged before step `keep_before` (the checkpoint's global step)."""
    unknown = sorted(set(names) - set(LOGGERS))
    if unknown:
        raise MedfoundryError(f"trainer.loggers: unknown {unknown}; choose from {list(LOGGERS)}")
    loggers: list[Logger] = [
        KeptCSVLogger(str(out_dir), name="logs", version="", keep_before=keep_before)
    ]
    if "tensorboard" in names:
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise MedfoundryError(
                "trainer.loggers: 'tensorboard' needs the tensorboard package "
                "(pip install tensorboard, or the medfoundry[tensorboard] extra)"
            )
        loggers.append(TensorBoardLogger(str(out_dir), name="tensorboard", version=""))
    return loggers


class KeptCSVLogger(CSVLogger):
    """Lightning's CSV logger, which deletes `metrics.csv` when it starts; with `keep_before`
    (a resumed run) the rows logged before that step stay, so the history survives a resume."""

    def __init__(self, *args: Any, keep_before: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_before = keep_before

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = _csv_rows_before(path, self.keep_before) if self.keep_before is not None else None
        writer = super().experiment  # removes the old metrics.csv
        if kept is not None and isinstance(writer, _CSVWriter):  # rank 0 only
            header, rows = kept
            out = io.StringIO()
            table = csv.DictWriter(out, fieldnames=header)  # "\r\n", as Lightning writes
            table.writeheader()
            table.writerows(rows)
            atomic_write_text(path, out.getvalue())
            writer.metrics_keys = list(header)
        return writer


def _csv_rows_before(path: Path, step: int) -> tuple[list[str], list[dict[str, str]]] | None:
    """(header, rows with ``step`` < `step`) of a Lightning `metrics.csv`, or None if absent."""
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) < step]
    return (header, rows) if header else None


class LastCheckpoint(Checkpoint):
    """`checkpoints/last.ckpt`: what `--resume` continues from. Written after every training
    epoch (after its validation, whether or not it improved: the best weights are
    ModelCheckpoint's `best.ckpt`), every `every_n_steps` optimiser steps when > 0, and when
    SIGTERM / Ctrl-C stops the loop at a batch boundary (Lightning's `SIGTERMException`)."""

    def __init__(self, path: str | Path, every_n_steps: int = 0) -> None:
        self.path = Path(path)
        self.every_n_steps = int(every_n_steps)
        self._saved_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        for logger in trainer.loggers:  # the log on disk covers every step the checkpoint has
            logger.save()
        trainer.save_checkpoint(self.path)
        self._saved_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = int(trainer.global_step)
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._saved_step:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A stop at a batch boundary is resumable: save it (not after other exceptions, where
        the step may be half done)."""
        if isinstance(exception, SIGTERMException) and int(trainer.global_step) > 0:
            if int(trainer.global_step) != self._saved_step:
                self._save(trainer)


@contextmanager
def stop_at_batch_end(trainer: L.Trainer, run_dir: str | Path) -> Iterator[None]:
    """Run `trainer.fit` so that the first SIGTERM or Ctrl-C ends it at the next batch
    boundary with a resumable `last.ckpt`, then raises ``Interrupted`` naming `run_dir`.

    Lightning already turns SIGTERM into a stop at the batch end (its signal connector sets
    `received_sigterm`, its loops raise `SIGTERMException`, an exit with code 0); Ctrl-C is
    routed to the same flag, and the exit becomes ``Interrupted`` (exit 143 / 130)."""
    guard = active_stop_signals()

    def stop(signum: int) -> None:
        trainer._signal_connector.received_sigterm = True  # Lightning's own stop flag

    try:
        if guard is None:
            yield
        else:
            with guard.defer_to(stop):
                yield
    except SIGTERMException as exc:
        signum = guard.received if guard is not None and guard.received else 15
        raise Interrupted(signum, run_dir) from exc
    except Interrupted as exc:
        raise Interrupted(exc.signum, run_dir) from exc


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning `.ckpt` read with ``torch.load(weights_only=True)``: tensors and plain
    state only, never arbitrary objects (a crafted file in a run folder must not run code)."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            unsafe = []
        what = f" (it pickles {', '.join(unsafe[:3])})" if unsafe else ""
        raise CheckpointError(
            f"{path}: refused: not a plain weights-and-state checkpoint{what}; medfoundry never "
            "unpickles arbitrary objects from a run folder (delete the file to retrain that stage)"
        ) from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: unreadable checkpoint ({first}); delete it to retrain that stage"
        ) from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return obj


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write Lightning checkpoints to a temporary file and rename, so a kill never corrupts one."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            try:
                torch.save(checkpoint, fh)
            except RuntimeError as exc:  # torch's writer wraps the OSError of a full disk
                cause = exc.__context__
                if isinstance(cause, OSError):
                    raise OSError(cause.errno, cause.strerror, cause.filename) from exc
                raise


def quiet_lightning() -> None:
    """Silence Lightning's tips and per-run chatter that drown the progress bars."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*treespec.*")
    warnings.filterwarnings("ignore", ".*exists and is not empty.*")  # a resumed run's folder
    # pretraining restores the data position itself (train.resume.ResumeState)
    warnings.filterwarnings("ignore", ".*your dataloader is not resumable.*")


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
    checkpoint_every_n_steps: int = 0,
    keep_log_before: int | None = None,
) -> L.Trainer:
    """A Lightning Trainer writing logs and `checkpoints/last.ckpt` (+ best) under `out_dir`.

    `last.ckpt` (``LastCheckpoint``) follows every epoch, and every `checkpoint_every_n_steps`
    steps when > 0; `best.ckpt` the `monitor`. `keep_log_before` (a resumed run: the
    checkpoint's global step) keeps the CSV log rows before that step."""
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
                save_last=False,
                save_top_k=1,
            )
        )
        cbs.append(LastCheckpoint(out_dir / "checkpoints" / "last.ckpt", checkpoint_every_n_steps))
        plugins.append(AtomicCheckpointIO())
    logger: Any = (
        make_loggers(Path(out_dir), loggers, keep_before=keep_log_before)
        if out_dir is not None
        else False
    )
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
