"""Killed writes leave no lasting litter: temporary files are unique, hidden, in the target's
folder, removed when the write fails, and those a killed process left are removed by the next
write of the same file (never one a live writer is still using); readers skip them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from medfoundry.data.manifest import scan_images
from medfoundry.runtime import (
    STALE_DEAD,
    atomic_path,
    atomic_write_json,
    is_temp_file,
    remove_stale_temps,
)


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _age(path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_temp_names_are_unique_hidden_and_carry_the_pid(tmp_path):
    target = tmp_path / "state.json"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path
        assert a.name.startswith(f".state.json.{os.getpid()}.") and is_temp_file(a)
        a.write_text("{}")
        b.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_a_failed_write_removes_its_temp_file(tmp_path):
    with pytest.raises(OSError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "metrics.json"
    dead = tmp_path / f".metrics.json.{_dead_pid()}.abc123.tmp"
    dead.write_bytes(b"")  # what kill -9 between mkstemp and os.replace leaves
    _age(dead, STALE_DEAD + 5)
    legacy = tmp_path / ".metrics.json.k2j4h1x9.tmp"  # the name before the pid was added
    legacy.write_bytes(b"")
    _age(legacy, STALE_DEAD + 5)
    atomic_write_json(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_live_or_recent_writers_temp_file_is_kept(tmp_path):
    target = tmp_path / "model.safetensors"
    live = tmp_path / f".model.safetensors.{os.getpid()}.zzz.tmp"  # this process: alive
    live.write_bytes(b"x")
    _age(live, STALE_DEAD + 5)
    recent = tmp_path / f".model.safetensors.{_dead_pid()}.yyy.tmp"  # gone, but just now
    recent.write_bytes(b"x")
    other = tmp_path / f".other.json.{_dead_pid()}.xxx.tmp"  # another file's
    other.write_bytes(b"x")
    _age(other, STALE_DEAD + 5)
    assert remove_stale_temps(target) == []
    assert live.exists() and recent.exists() and other.exists()


def test_image_scans_skip_stray_temp_files(tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 3).save(tmp_path / "a.png")
    (tmp_path / f".b.png.{_dead_pid()}.q.tmp").write_bytes(b"")
    assert [p.name for p in scan_images(tmp_path)] == ["a.png"]
