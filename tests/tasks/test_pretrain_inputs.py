"""Pretraining refuses what it cannot train on before it writes anything: too few images, a
batch of one, an --out inside --data, a damaged image; a full disk reports its first error."""

from __future__ import annotations

import errno
import os
import shutil

import lightning as L
import pytest

import medfoundry.tasks.pretrain as pretrain_task
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.tasks.pretrain import pretrain


def test_a_single_image_is_refused_naming_the_folder(xray_folder, tmp_path, tiny_pretrain_config):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(xray_folder / "img00.png", one / "img00.png")
    out = tmp_path / "run"
    with pytest.raises(MedfoundryError, match=r"one: 1 training item.*at least 2"):
        pretrain(tiny_pretrain_config("moco"), [one], out, progress=False)
    assert not out.exists()


def test_a_batch_of_one_is_refused_naming_the_key(xray_folder, tmp_path, tiny_pretrain_config):
    cfg = tiny_pretrain_config("moco")
    cfg["optim"]["batch_size"] = 1
    out = tmp_path / "run"
    with pytest.raises(MedfoundryError, match="optim.batch_size: 1"):
        pretrain(cfg, [xray_folder], out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize("resume", [False, True])
def test_out_inside_data_is_refused_before_anything_is_written(
    xray_folder, tmp_path, tiny_pretrain_config, resume
):
    before = sorted(p.name for p in xray_folder.iterdir())
    for out in (xray_folder / "run", tmp_path / "other" / ".." / xray_folder.name / "x" / "run"):
        with pytest.raises(MedfoundryError, match="--out is inside --data"):
            pretrain(tiny_pretrain_config("moco"), [xray_folder], out, resume=resume)
    assert sorted(p.name for p in xray_folder.iterdir()) == before


def test_a_run_stopped_by_a_damaged_image_leaves_nothing(
    xray_folder, tmp_path, tiny_pretrain_config
):
    bad = xray_folder / "img05.png"
    bad.write_bytes(bad.read_bytes()[:60])
    out = tmp_path / "run"
    with pytest.raises(InputError, match="img05.png"):
        pretrain(tiny_pretrain_config("moco"), [xray_folder], out, progress=False)
    assert not out.exists()
    kept = tmp_path / "kept"  # a folder that existed keeps its content, and gets nothing more
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="img05.png"):
        pretrain(tiny_pretrain_config("moco"), [xray_folder], kept, progress=False)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_a_full_disk_reports_its_first_error(
    xray_folder, tmp_path, tiny_pretrain_config, monkeypatch
):
    """The timings written after a failed stage hit the same full disk: that second error must
    not replace the first (the checkpoint that did not fit)."""
    full = os.strerror(errno.ENOSPC)

    def fit(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, full, "last.ckpt")

    def write_json(path, obj):
        raise OSError(errno.ENOSPC, full, str(path))

    monkeypatch.setattr(L.Trainer, "fit", fit)
    monkeypatch.setattr(pretrain_task, "atomic_write_json", write_json)
    with pytest.raises(OSError) as info:
        pretrain(tiny_pretrain_config("moco"), [xray_folder], tmp_path / "run", progress=False)
    assert info.value.filename == "last.ckpt"
