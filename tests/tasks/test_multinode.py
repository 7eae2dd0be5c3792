"""Two nodes of one CPU device each, launched by hand as a cluster launcher would.

The first test: each node is its own `python -m medfoundry.cli pretrain --num-nodes 2 --devices 1` process with
Lightning's variables for a manually launched job (``LightningEnvironment``: ``LOCAL_RANK`` makes
Lightning leave process creation to the launcher; ``NODE_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` place it), DDP on gloo, both writing to the same ``--out`` as on a shared
filesystem. SLURM (``SLURMEnvironment``) and torchrun (``TorchElasticEnvironment``) launches set
other variables and are not run here. The second: the collapse guards, which read each rank's
own (unsynced) training signals, take the same decision on every rank of a gloo group.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medfoundry.errors import MedfoundryError
from medfoundry.train.engine import read_checkpoint
from medfoundry.train.guards import PruningCollapseGuard, RepresentationCollapseGuard
from medfoundry.zoo import read_meta

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo"),
]

WORLD = 2
BATCH = 2
EPOCHS = 2
QUEUE = 64
N_TRAIN = 8  # of the 12 images of `xray_folder`: round(12 x 0.34) = 4 held out for validation
TIMEOUT = 180.0

# variables of other launchers: a test run inside a SLURM job or under torchrun must not make
# Lightning pick their environment instead of the manual one tested here
_FOREIGN = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_", "JSM_")
_FOREIGN_KEYS = {"RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(node_rank: int, port: int) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _FOREIGN_KEYS and not k.startswith(_FOREIGN)
    }
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NODE_RANK=str(node_rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK="0",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
    )
    return env


def _launch(argv: list[str], out_dir: Path) -> list[tuple[int, str, str]]:
    """Start one process per node, wait for both (killing both past ``TIMEOUT``); per node
    (exit code, stdout, stderr)."""
    port = _free_port()
    procs, logs = [], []
    for node in range(WORLD):
        stdout = open(out_dir / f"node{node}.out", "w+")  # noqa: SIM115 (closed below)
        stderr = open(out_dir / f"node{node}.err", "w+")  # noqa: SIM115
        logs.append((stdout, stderr))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "medfoundry.cli", *argv],
                env=_node_env(node, port),
                stdout=stdout,
                stderr=stderr,
            )
        )
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break  # a node that failed leaves the other waiting in a collective
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    results = []
    for p, (stdout, stderr) in zip(procs, logs, strict=True):
        stdout.seek(0)
        stderr.seek(0)
        results.append((p.returncode, stdout.read(), stderr.read()))
        stdout.close()
        stderr.close()
    return results


def test_moco_pretrains_on_two_nodes(xray_folder, tmp_path, tiny_pretrain_args):
    run = tmp_path / "shared" / "run"  # one --out for both nodes: a shared filesystem
    logs = tmp_path / "logs"
    logs.mkdir()
    argv = tiny_pretrain_args(
        "moco",
        xray_folder,
        run,
        *("--num-nodes", str(WORLD), "--devices", "1", "--accelerator", "cpu"),
        *("--batch-size", str(BATCH), "--epochs", str(EPOCHS), "--queue-size", str(QUEUE)),
        *("--set", "data.val_fraction=0.34"),
    )
    start = time.monotonic()
    results = _launch(argv, logs)
    elapsed = time.monotonic() - start
    report = "\n".join(
        f"--- node {i}: exit {rc}\n{err[-4000:]}" for i, (rc, _out, err) in enumerate(results)
    )
    # (a) both nodes finish
    assert [rc for rc, _, _ in results] == [0] * WORLD, report

    # (b) the nodes split the data: each rank takes N_TRAIN / WORLD images an epoch
    stage = run / "stage0_level0"
    ckpt = read_checkpoint(stage / "checkpoints" / "last.ckpt")
    steps_per_epoch = N_TRAIN // WORLD // BATCH  # one process alone would take N_TRAIN // BATCH
    assert ckpt["global_step"] == EPOCHS * steps_per_epoch, report
    with (stage / "logs" / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    logged = {int(r["epoch"]) for r in rows if r.get("train/loss_step")}
    assert logged == set(range(EPOCHS)), logged  # the log interval fits a rank's epoch

    # (c) keys are gathered across the nodes: the queue grows by WORLD x BATCH keys a step
    state = ckpt["state_dict"]
    ptr = int(state["method.queue_ptr"])
    assert ptr == (EPOCHS * steps_per_epoch * WORLD * BATCH) % QUEUE, (ptr, report)
    fresh = torch.nn.functional.normalize(
        torch.randn(state["method.queue"].shape, generator=torch.Generator().manual_seed(0)), dim=1
    )  # MoCo.reset_queue: the queue before training, the same on every rank
    queue = state["method.queue"]
    assert not torch.isclose(queue[:ptr], fresh[:ptr]).all(dim=1).any()  # all rows enqueued
    torch.testing.assert_close(queue[ptr:], fresh[ptr:])  # the others untouched

    # (d) one run folder, one export, written by rank 0; nothing half written
    meta = read_meta(run)
    assert meta.method == "moco"
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith(".tmp") or "/." in f or f.startswith(".")], files
    exports = [f for f in files if f.endswith("model.safetensors")]
    assert exports == ["checkpoint/model.safetensors", "stage0_level0/checkpoint/model.safetensors"]
    assert sorted(f for f in files if f.endswith("medfoundry.json")) == [
        "checkpoint/medfoundry.json",
        "stage0_level0/checkpoint/medfoundry.json",
    ]
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [
            "checkpoint",
            "config.json",
            "curves.png",
            "stage0_level0",
            "timings.json",
            "versions.json",
        ]
    ), files
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert list(tmp_path.joinpath("shared").iterdir()) == [run]  # no second run folder
    print(f"two-node run: {elapsed:.1f} s; files: {files}")


def _guard_worker(rank_: int, port: int, out_dir: str) -> None:
    """Rank 0's batches look collapsed, rank 1's healthy: both guards must agree."""
    from lightning.pytorch.strategies import DDPStrategy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank_, world_size=WORLD)
    try:
        strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=DDPStrategy().reduce)
        batch = torch.zeros(64, 1, 4, 4)  # chance: 1 / 64
        retrieval, pruned = (1 / 64, 1.0) if rank_ == 0 else (0.5, 0.5)
        guards = [
            RepresentationCollapseGuard(warmup_steps=2, patience=3),
            PruningCollapseGuard(max_fraction=0.99, patience=3),
        ]
        stopped = []
        for guard in guards:
            step = None
            for i in range(20):
                trainer = SimpleNamespace(
                    world_size=WORLD,
                    strategy=strategy,
                    global_step=i,
                    callback_metrics={
                        "train/retrieval_step": torch.tensor(retrieval),
                        "train/mean_length_step": torch.tensor(0.3),
                        "train/pruned_fraction_step": torch.tensor(pruned),
                    },
                )
                try:
                    guard.on_train_batch_end(trainer, None, None, batch, i)
                except MedfoundryError:
                    step = i
                    break
            stopped.append(step)
        torch.save(stopped, Path(out_dir) / f"guards{rank_}.pt")
    finally:
        dist.destroy_process_group()


def test_collapse_guards_decide_alike_on_every_rank(tmp_path: Path) -> None:
    """A guard stopping one rank alone would leave the other in its next collective (a hang):
    the guards average the ranks' signals, so the ranks run on or stop together."""
    mp.spawn(_guard_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"guards{r}.pt") for r in range(WORLD))
    assert r0 == r1, (r0, r1)
    # mean retrieval (1/64 + 0.5) / 2 is far above chance; mean pruned 0.75 < 0.99: run on
    assert r0 == [None, None]
