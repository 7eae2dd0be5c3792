"""Resume and interruption of `pretrain` (issue 14): safe checkpoint loads, `last.ckpt` after
every epoch, the kept history, refused changes, and SIGTERM / Ctrl-C on a real subprocess."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medfoundry.errors import CheckpointError, Interrupted, MedfoundryError
from medfoundry.tasks import pretrain as pretrain_task
from medfoundry.tasks.pretrain import pretrain
from medfoundry.train.engine import read_checkpoint

STAGE = "stage0_level0"


class _Payload:
    """Unpickling this runs code: it writes `marker` (what a crafted run folder could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('owned')",))


def _crafted_ckpt(path: Path, marker: Path) -> Path:
    """A `.ckpt` that looks like Lightning's but runs code when fully unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 1, "x": _Payload(marker)}, path)
    return path


def _log_epochs(stage_dir: Path) -> list[int]:
    """The epoch of each row of the stage's `metrics.csv`, in file order."""
    with (stage_dir / "logs" / "metrics.csv").open(newline="") as fh:
        return [int(row["epoch"]) for row in csv.DictReader(fh)]


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "owned.txt"
    probe = _crafted_ckpt(tmp_path / "probe.ckpt", tmp_path / "proof.txt")
    torch.load(probe, weights_only=False)  # the payload is real: a full unpickle runs it
    assert (tmp_path / "proof.txt").is_file()
    bad = _crafted_ckpt(tmp_path / "run" / STAGE / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="refused") as info:
        read_checkpoint(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_resume_refuses_a_crafted_last_ckpt(xray_folder, tmp_path, capsys):
    """Through the CLI: one line naming the file, exit 2, and the payload never runs."""
    from medfoundry.cli import main

    marker = tmp_path / "owned.txt"
    run = tmp_path / "run"
    bad = _crafted_ckpt(run / STAGE / "checkpoints" / "last.ckpt", marker)
    args = ["pretrain", "--method", "moco", "--data", str(xray_folder), "--out", str(run)]
    args += ["--backbone", "resnet10", "--width", "0.125", "--load-size", "64"]
    args += ["--input-size", "32", "--epochs", "1", "--batch-size", "4", "--queue-size", "64"]
    args += ["--accelerator", "cpu", "--no-progress", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medfoundry: error: {bad}: refused") and len(err.splitlines()) == 1
    assert not marker.exists()
    assert bad.is_file() and not (run / "checkpoint").exists()


def test_a_crafted_best_ckpt_of_a_finished_stage_is_refused(
    xray_folder, tmp_path, tiny_pretrain_config
):
    """The best weights carried to the next stage are read safely too."""
    cfg = tiny_pretrain_config("adam")
    run = pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    shutil.rmtree(run / "checkpoint")
    shutil.rmtree(run / "stage1_level2")
    marker = tmp_path / "owned.txt"
    _crafted_ckpt(run / STAGE / "checkpoints" / "best.ckpt", marker)
    with pytest.raises(CheckpointError, match="best.ckpt: refused"):
        pretrain(tiny_pretrain_config("adam"), [xray_folder], run, resume=True, progress=False)
    assert not marker.exists()


class _KilledAtEpoch(pretrain_task.NewCropsEachEpoch):
    """Dies (like a crash or kill -9: no checkpoint on the way out) when `epoch` starts."""

    epoch = 2

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")
        super().on_train_epoch_start(trainer, pl_module)


def _never_improving(cfg: dict) -> dict:
    """Select by `epoch` (min): the first epoch stays the best, later ones never improve."""
    cfg["selection"] = {"monitor": "epoch", "mode": "min"}
    return cfg


def test_last_ckpt_follows_every_epoch_and_resume_continues_from_it(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    """Best stays at epoch 0, yet last.ckpt advances each epoch; the resumed stage starts at the
    epoch after the kill (not after the best), keeps the log rows and the finished stage's
    time."""
    cfg = _never_improving(tiny_pretrain_config("adam"))
    cfg["epochs"] = [1, 3]
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(pretrain_task, "NewCropsEachEpoch", _KilledAtEpoch)
        with pytest.raises(RuntimeError, match="killed"):
            pretrain(cfg, [xray_folder], run, progress=False)
    stage1 = run / "stage1_level2"
    last = read_checkpoint(stage1 / "checkpoints" / "last.ckpt")
    best = read_checkpoint(stage1 / "checkpoints" / "best.ckpt")
    assert (last["epoch"], best["epoch"]) == (1, 0)
    steps_per_epoch = last["global_step"] // 2
    before = _log_epochs(stage1)
    assert set(before) == {0, 1}
    assert "stage0_level0" in json.loads((run / "timings.json").read_text())

    cfg = _never_improving(tiny_pretrain_config("adam"))
    cfg["epochs"] = [1, 3]
    pretrain(cfg, [xray_folder], run, resume=True, progress=False)
    after = _log_epochs(stage1)
    assert after[: len(before)] == before, "the rows logged before the kill were lost"
    assert set(after) == {0, 1, 2} and after.count(1) == before.count(1), "an epoch was repeated"
    last = read_checkpoint(stage1 / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * steps_per_epoch)
    assert read_checkpoint(stage1 / "checkpoints" / "best.ckpt")["epoch"] == 0
    timings = json.loads((run / "timings.json").read_text())
    assert set(timings) == {"stage0_level0", "stage1_level2"}
    assert (run / "checkpoint" / "model.safetensors").is_file()


def test_checkpoint_every_n_steps_writes_last_within_an_epoch(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    cfg = tiny_pretrain_config("moco")
    cfg["optim"]["batch_size"] = 2  # 5 steps per epoch
    cfg["trainer"]["checkpoint_every_n_steps"] = 2
    saved: list[int] = []
    real = pretrain_task.make_trainer

    def spy(*args, **kwargs):
        trainer = real(*args, **kwargs)
        original = trainer.save_checkpoint

        def save(path, *a, **k):
            if Path(path).name == "last.ckpt":
                saved.append(int(trainer.global_step))
            return original(path, *a, **k)

        trainer.save_checkpoint = save
        return trainer

    monkeypatch.setattr(pretrain_task, "make_trainer", spy)
    pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    assert saved == [2, 4, 5]  # steps 2 and 4, then the epoch's end


def test_resume_refuses_a_changed_config_or_other_data(
    xray_folder, tmp_path, capsys, tiny_pretrain_args
):
    from medfoundry.cli import main

    run = tmp_path / "run"
    assert main(tiny_pretrain_args("moco", xray_folder, run)) == 0
    record = (run / "config.json").read_bytes()
    capsys.readouterr()

    assert main(tiny_pretrain_args("moco", xray_folder, run, "--width", "0.25", "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert "backbone.width 0.125 -> 0.25" in err and str(run / "config.json") in err
    assert len(err.splitlines()) == 1

    other = tmp_path / "other"
    shutil.copytree(xray_folder, other)
    shutil.copy(other / "img00.png", other / "extra.png")
    assert main(tiny_pretrain_args("moco", other, run, "--resume")) == 2
    assert "other training data" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == record, "a refused resume rewrote config.json"

    moved = tmp_path / "moved"  # the same files elsewhere: the same data
    shutil.copytree(xray_folder, moved)
    assert main(tiny_pretrain_args("moco", moved, run, "--resume")) == 0
    assert (run / "config.json").read_bytes() == record


def test_check_resume_names_the_first_difference(tmp_path):
    stored = tmp_path / "config.json"
    old = {"method": "moco", "optim": {"lr": 0.03}, "trainer": {"devices": 1}, "n_images": 3}
    stored.write_text(json.dumps(old))
    pretrain_task.check_resume(stored, {**old, "trainer": {"devices": 2}})  # where, not what
    with pytest.raises(MedfoundryError, match=r"optim.lr 0.03 -> 0.1"):
        pretrain_task.check_resume(stored, {**old, "optim": {"lr": 0.1}})
    with pytest.raises(MedfoundryError, match=r"n_images 3 -> 4"):
        pretrain_task.check_resume(stored, {**old, "n_images": 4})


def test_interrupted_names_the_run_and_its_exit_code(tmp_path):
    from medfoundry.cli import interrupted_message

    exc = Interrupted(signal.SIGTERM, tmp_path)
    assert exc.exit_code == 143 and Interrupted(signal.SIGINT).exit_code == 130
    assert str(tmp_path) in interrupted_message(exc) and "--resume" in interrupted_message(exc)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until `path` exists (the first step's checkpoint); fails if the process ends first."""
    end = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.02)


def _default_sigint() -> None:
    """In the child: SIGINT back to its default, for a test suite run as a background job
    (where SIGINT is inherited as ignored, and the CLI rightly keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "medfoundry.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
    )


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_and_resume_finishes(xray_folder, tmp_path, tiny_pretrain_args):
    """A real subprocess: SIGTERM after the first step -> exit 143, one line naming the run,
    a resumable last.ckpt; its resume stopped by SIGINT -> 130; a last resume finishes."""
    run = tmp_path / "run"
    last = run / STAGE / "checkpoints" / "last.ckpt"
    args = tiny_pretrain_args("moco", xray_folder, run, "--epochs", "12", "--batch-size", "2")
    args += ["--set", "trainer.checkpoint_every_n_steps=1"]
    total = 12 * 5
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        first = last.stat().st_mtime_ns if last.is_file() else None
        proc = _start(args + (["--resume"] if first else []))
        while first is not None and last.stat().st_mtime_ns == first:  # a step of this run
            assert proc.poll() is None
            time.sleep(0.02)
        _wait_for(last, proc)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err[-2000:]
        lines = [ln for ln in err.splitlines() if ln.startswith("medfoundry:")]
        assert lines == [
            f"medfoundry: interrupted ({signum.name}); rerun with --resume to continue "
            f"the run in {run}"
        ]
        step = read_checkpoint(last)["global_step"]
        assert 0 < step < total
        assert not (run / "checkpoint").exists()
    proc = _start(args + ["--resume"])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert read_checkpoint(last)["global_step"] == total
    assert set(_log_epochs(run / STAGE)) == set(range(12))
    assert (run / "checkpoint" / "model.safetensors").is_file()


class _KilledAtStep(pretrain_task.NewCropsEachEpoch):
    """Dies (no checkpoint on the way out) when a batch starts at global step `step` of stage
    `stage_name` (matched on the trainer's folder)."""

    step = 3
    stage_name = STAGE

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.stage_name in str(trainer.default_root_dir):
            raise RuntimeError("killed")


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _log_rows(stage_dir: Path) -> list[dict[str, str]]:
    with (stage_dir / "logs" / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _killed_then_resumed(
    cfg_fn, data, run: Path, monkeypatch, killer, expect=RuntimeError, saved_step=None
) -> None:
    """Run until `killer` stops it (raising `expect`), check the step of the `last.ckpt` it
    left, then resume to the end."""
    with monkeypatch.context() as m:
        m.setattr(pretrain_task, "NewCropsEachEpoch", killer)
        with pytest.raises(expect):
            pretrain(cfg_fn(), [data], run, progress=False)
    if saved_step is not None:
        assert (
            read_checkpoint(run / STAGE / "checkpoints" / "last.ckpt")["global_step"] == saved_step
        )
    pretrain(cfg_fn(), [data], run, resume=True, progress=False)


def _assert_same_run(a: Path, b: Path, stages: list[str]) -> None:
    """Bit-identical last weights and logged rows (per step and per epoch) in every stage."""
    for stage in stages:
        wa = _weights(a / stage / "checkpoints" / "last.ckpt")
        wb = _weights(b / stage / "checkpoints" / "last.ckpt")
        assert wa.keys() == wb.keys()
        differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
        assert not differ, f"{stage}: {len(differ)} tensors differ, e.g. {differ[:3]}"
        assert _log_rows(a / stage) == _log_rows(b / stage), f"{stage}: the logs differ"


def test_killed_and_resumed_moco_equals_the_uninterrupted_run(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    def cfg():
        c = tiny_pretrain_config("moco")
        c["epochs"] = 3
        return c

    pretrain(cfg(), [xray_folder], tmp_path / "a", progress=False)
    _KilledAtEpoch.epoch = 2  # the last epoch's start: resumes from the end of epoch 1
    _killed_then_resumed(cfg, xray_folder, tmp_path / "b", monkeypatch, _KilledAtEpoch)
    _assert_same_run(tmp_path / "a", tmp_path / "b", [STAGE])


class _KilledInStageOne(_KilledAtEpoch):
    """Dies when epoch 1 of the second stage starts (the first stage is finished)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 1 and "stage1_" in str(trainer.default_root_dir):
            raise RuntimeError("killed")
        super(_KilledAtEpoch, self).on_train_epoch_start(trainer, pl_module)


def test_killed_and_resumed_adam_equals_the_uninterrupted_run_across_stages(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    def cfg():
        c = tiny_pretrain_config("adam")
        c["epochs"] = [2, 2]
        return c

    pretrain(cfg(), [xray_folder], tmp_path / "a", progress=False)
    _killed_then_resumed(cfg, xray_folder, tmp_path / "b", monkeypatch, _KilledInStageOne)
    _assert_same_run(tmp_path / "a", tmp_path / "b", [STAGE, "stage1_level2"])


def test_a_mid_epoch_resume_repeats_the_steps(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    """`checkpoint_every_n_steps`: killed at step 7 of 10, resumed from step 6: the same data
    order and random draws, so the same weights and per-step losses."""

    def cfg():
        c = tiny_pretrain_config("moco")
        c["epochs"] = 2
        c["optim"]["batch_size"] = 2  # 5 steps per epoch
        c["trainer"]["checkpoint_every_n_steps"] = 2
        return c

    pretrain(cfg(), [xray_folder], tmp_path / "a", progress=False)
    _KilledAtStep.step = 7
    _killed_then_resumed(cfg, xray_folder, tmp_path / "b", monkeypatch, _KilledAtStep, saved_step=6)
    _assert_same_run(tmp_path / "a", tmp_path / "b", [STAGE])


@pytest.fixture(scope="module")
def small_store(tmp_path_factory, make_blob_volume_store):
    """A 3D store of ten 16 x 32 x 32 synthetic volumes (blobs on noise)."""
    return make_blob_volume_store(tmp_path_factory, (16, 32, 32), centre_high=24, spread=40.0)


def test_killed_and_resumed_voco_equals_the_uninterrupted_run(small_store, tmp_path, monkeypatch):
    """A 3D method: random crops per (seed, epoch, item) and the global stream both resume;
    killed mid-epoch after a step checkpoint."""
    from medfoundry.config import apply_overrides, load_config

    def cfg():
        return apply_overrides(
            load_config("voco"),
            [
                "backbone={name: resnet10, width: 0.125, in_channels: 1, spatial_dims: 3}",
                "epochs=2",
                "optim.batch_size=2",
                "data.val_fraction=0.2",
                "data.crop_size=[16, 32, 32]",
                "voco={num_base: 2, proj_hidden: 32, proj_dim: 16}",
                "trainer={accelerator: cpu, devices: 1, checkpoint_every_n_steps: 3}",
            ],
        )

    pretrain(cfg(), [small_store], tmp_path / "a", progress=False)
    _KilledAtStep.step = 3  # 4 steps per epoch: resumes from step 3, mid epoch 0
    _killed_then_resumed(cfg, small_store, tmp_path / "b", monkeypatch, _KilledAtStep, saved_step=3)
    _assert_same_run(tmp_path / "a", tmp_path / "b", [STAGE])


class _SigtermAtStep(pretrain_task.NewCropsEachEpoch):
    """Raises Lightning's SIGTERM flag when a batch starts at global step `step` (what its
    signal handler does), so the loop stops after that batch."""

    step = 3

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def test_a_sigterm_stop_resumes_to_the_uninterrupted_run(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    """SIGTERM mid-epoch (no step checkpoints): `Interrupted` naming the run, a `last.ckpt`
    after the batch in progress, and a resume bit-identical to the uninterrupted run."""

    def cfg():
        c = tiny_pretrain_config("moco")
        c["epochs"] = 2
        c["optim"]["batch_size"] = 2  # 5 steps per epoch
        return c

    pretrain(cfg(), [xray_folder], tmp_path / "a", progress=False)
    _killed_then_resumed(
        cfg, xray_folder, tmp_path / "b", monkeypatch, _SigtermAtStep, Interrupted, saved_step=4
    )
    _assert_same_run(tmp_path / "a", tmp_path / "b", [STAGE])


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_an_empty_or_truncated_ckpt_is_one_line_naming_it(tmp_path, content):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="unreadable checkpoint") as info:
        read_checkpoint(bad)
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)
