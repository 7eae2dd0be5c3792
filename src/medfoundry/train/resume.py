"""What a resumed run needs to repeat an uninterrupted one exactly (on CPU): the data order and
the random-number state, saved in each Lightning checkpoint and restored from it.

- ``EpochShuffle``: the training order of epoch ``e`` is a permutation seeded by
  ``(seed, e)``, not drawn from the global random stream.
- ``ResumeState``: the torch (CPU and CUDA), NumPy and Python random states and the loader's
  position (epoch, batches of it trained) go into the checkpoint as tensors and ints
  (``weights_only`` loads read them) and come back when it is loaded, so a mid-epoch restart
  continues the same order after those batches, with the dataset at the right epoch
  (Lightning calls no ``on_train_epoch_start`` on a mid-epoch restart); a mid-epoch
  checkpoint also carries the epoch's running sums, so the resumed epoch's means are whole.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from medfoundry.methods.distributed import rank, world_size

RNG_KEY = "medfoundry_rng"
DATA_KEY = "medfoundry_data"
SUMS_KEY = "medfoundry_epoch_sums"


def _train_results(trainer: L.Trainer) -> dict[str, Any]:
    """Lightning's running epoch aggregates of the values logged in `training_step` (its
    private `_ResultCollection`; {} when the layout is not the one we know)."""
    results = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "_results", None)
    if not isinstance(results, dict):
        return {}
    return {
        k: m
        for k, m in results.items()
        if getattr(m, "is_tensor", False) and m.meta.on_epoch and m.meta.fx == "training_step"
    }


def epoch_sums(trainer: L.Trainer) -> dict[str, dict[str, Tensor]]:
    """The running sums behind this epoch's `*_epoch` values so far (what a mid-epoch
    checkpoint must carry, or the resumed epoch's mean covers only the batches after it)."""
    out = {}
    for key, m in _train_results(trainer).items():
        entry = {"value": m.value.detach().cpu().clone()}
        if m.meta.is_mean_reduction:
            entry["count"] = m.cumulated_batch_size.detach().cpu().clone()
        out[key] = entry
    return out


def add_epoch_sums(trainer: L.Trainer, saved: dict[str, dict[str, Tensor]]) -> None:
    """Fold the saved sums into the running ones (after the first resumed batch has created
    them): sums and counts add, max / min reduce. A single addition to a fresh sum is exact,
    so the epoch's values equal the uninterrupted run's."""
    for key, m in _train_results(trainer).items():
        if key not in saved:
            continue
        value = saved[key]["value"].to(m.value.device, m.value.dtype)
        if m.meta.is_max_reduction or m.meta.is_min_reduction:
            m.value = m.meta.reduce_fx(m.value, value)
        else:
            m.value = m.value + value
        if m.meta.is_mean_reduction and "count" in saved[key]:
            count = saved[key]["count"].to(m.cumulated_batch_size.device)
            m.cumulated_batch_size = m.cumulated_batch_size + count
        m._computed = None


class EpochShuffle(DistributedSampler):
    """A shuffling sampler whose order depends on ``(seed, epoch)`` only (Lightning calls
    ``set_epoch``); ``skip`` drops the first samples of the next pass, once (a mid-epoch
    resume continues the same order).

    Under DDP each rank takes every ``world``-th index of that order, starting at its rank
    (the order padded by its own first indices to a multiple of ``world``), so the ranks split
    each epoch without overlap and ``skip`` counts this rank's samples. Rank and world come from
    the process group at iteration time (one process: the whole order). It subclasses
    ``DistributedSampler`` only so that Lightning keeps it instead of wrapping it; it needs no
    process group to be built. Data-loader workers split its indices among themselves.
    """

    def __init__(self, n: int, seed: int = 0) -> None:  # no DistributedSampler.__init__
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch's pass."""
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """This epoch's order for this rank (the full order in one process)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        full = torch.randperm(self.n, generator=gen).tolist()
        world = world_size()
        if world == 1:
            return full
        while len(full) % world:
            full += full[: world - len(full) % world]
        return full[rank() :: world]

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return iter(self.order()[skip:])

    def __len__(self) -> int:
        return -(-self.n // world_size())


def _rng_state() -> dict[str, Any]:
    """The global random states as tensors and ints (no NumPy objects, no tuples to unpickle)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``_rng_state`` saved."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class ResumeState(Callback):
    """Save the random states and the training loader's position (epoch, batches of it done)
    in every checkpoint, and restore both on resume: the epoch's order without its first
    batches (``EpochShuffle.skip``) and the dataset's per-epoch draws (3D crops) of that epoch.

    Lightning saves a loader's own state only if the loader was never set up before the
    restore, and our schedule's ``estimated_stepping_batches`` sets it up early; so the position
    goes in the checkpoint here. Exact for single-process runs with ``num_workers: 0`` (worker
    processes start with the order before the restore); under DDP each rank reseeds its own
    stream (``PretrainModule.on_train_start``) and Lightning's distributed sampler sets the
    order."""

    def __init__(self, loader: DataLoader, seed: int = 0) -> None:
        self.loader = loader
        self.seed = int(seed)
        self.position = (0, 0)
        self._pending_sums: dict[str, dict[str, Tensor]] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Give the loader a generator of its own (a new iterator draws its worker seed from
        it, not from the global stream, which a mid-epoch resume would shift). Set here, in
        the training process: a generator does not survive DDP-spawn's pickling."""
        self.loader.generator = torch.Generator().manual_seed(self.seed)

    def _set_position(self, trainer: L.Trainer) -> None:
        per_epoch = max(1, len(self.loader))
        epoch = int(trainer.current_epoch)
        done = int(trainer.global_step) - epoch * per_epoch
        self.position = (epoch, max(0, min(done, per_epoch)))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_position(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending_sums is not None:  # the first batch after a mid-epoch resume
            add_epoch_sums(trainer, self._pending_sums)
            self._pending_sums = None
        self._set_position(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.position = (int(trainer.current_epoch) + 1, 0)  # a checkpoint now: next epoch

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RNG_KEY] = _rng_state()
        checkpoint[DATA_KEY] = {"epoch": self.position[0], "batches_done": self.position[1]}
        if self.position[1] > 0:  # mid-epoch: the epoch's running means so far
            checkpoint[SUMS_KEY] = epoch_sums(trainer)

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if RNG_KEY in checkpoint and trainer.world_size == 1:
            _set_rng_state(checkpoint[RNG_KEY])
        if DATA_KEY in checkpoint:
            self._restore_position(checkpoint[DATA_KEY])
        self._pending_sums = checkpoint.get(SUMS_KEY) or None

    def _restore_position(self, state: dict[str, Any]) -> None:
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches_done", 0))
        self.position = (epoch, done)
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, EpochShuffle):
            sampler.set_epoch(epoch)
            sampler.skip = done * int(self.loader.batch_size or 1)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(epoch)
