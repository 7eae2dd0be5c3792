"""Run-time plumbing shared by every command: seeding, atomic writes, run-folder records."""

from __future__ import annotations

import glob
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from medfoundry.errors import Interrupted, MedfoundryError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so the same seed gives the same run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


TEMP_SUFFIX = ".tmp"
#: A temporary file of a writer that is gone is removed after this long (seconds) when its
#: process is not running here, and after ``STALE_ANY`` in any case (another host's).
STALE_DEAD = 60.0
STALE_ANY = 24 * 3600.0


def is_temp_file(path: str | Path) -> bool:
    """Whether ``path`` is a temporary file of ``atomic_path`` (``.<name>.<pid>.<random>.tmp``,
    hidden): readers and folder checks skip these, a killed write may leave one behind."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or no way to tell: keep its file
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left in its folder (their
    process gone and older than ``STALE_DEAD`` s, or older than ``STALE_ANY`` s); the removed.
    A write in progress (its process alive, or recent) is never touched."""
    path = Path(path)
    removed: list[Path] = []
    now = time.time()
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        try:
            age = now - tmp.stat().st_mtime
        except OSError:
            continue
        gone = not (pid_text.isdigit() and _pid_running(int(pid_text)))
        if (gone and age > STALE_DEAD) or age > STALE_ANY:
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds.

    The temporary file is unique (``.<name>.<pid>.<random>.tmp``, hidden, in the target's
    folder, so the final ``os.replace`` is atomic) and removed when the block fails; those a
    killed process left behind are removed by the next write of the same file
    (``remove_stale_temps``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; give the usual 0666 & ~umask
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        # a write through a file object names no file (a full disk): name the one written
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str, errors: str | None = None) -> None:
    """Write text (UTF-8) so that a crash never leaves a half-written file; ``errors=
    "surrogateescape"`` writes non-UTF-8 file names held in ``text`` back as their bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors=errors)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented for people."""
    atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of the packages that decide a run's numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("medfoundry", "torch", "numpy", "monai", "lightning"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", "unknown"))
        except ImportError:  # pragma: no cover - optional
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the source tree medfoundry runs from, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def record_run(run_dir: str | Path, config: dict[str, Any], name: str = "config.json") -> None:
    """Store the resolved config, package versions and git commit in the run folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / name, config)
    atomic_write_json(run_dir / "versions.json", {**versions(), "git_commit": git_commit()})


def check_run_dir(
    run_dir: str | Path, outputs: Sequence[str], overwrite: bool, what: str = "a finished run"
) -> bool:
    """Refuse (one line) a run folder that holds any of ``outputs`` unless ``overwrite``, so a
    finished run is never replaced by accident; returns whether it holds one (the caller then
    calls ``clear_outputs`` once its inputs are checked, before writing)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MedfoundryError(f"{run_dir}: --out is a file, not a folder")
    found = [name for name in outputs if (run_dir / name).exists()]
    if found and not overwrite:
        raise MedfoundryError(
            f"{run_dir}: already holds {what} ({', '.join(found)}); pass --overwrite to "
            "replace it or choose a new --out"
        )
    return bool(found)


def clear_outputs(run_dir: str | Path, outputs: Sequence[str]) -> None:
    """Delete ``outputs`` (files or folders) of an old run in order, the completion marker
    first: a rerun that then fails leaves an unfinished folder, never a half-old finished one."""
    for name in outputs:
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """What SIGTERM and Ctrl-C do: stop at a safe point when a training loop asked for one
    (``defer_to``), else (and at a second signal) raise ``Interrupted`` at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._defer: Callable[[int], None] | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler: the first signal goes to the deferring loop when there is one."""
        first = self.received is None
        self.received = self.received or int(signum)
        if first and self._defer is not None:
            self._defer(int(signum))
            return
        raise Interrupted(int(signum))

    @contextmanager
    def defer_to(self, stop: Callable[[int], None]) -> Iterator[None]:
        """While the block runs, the first signal calls ``stop(signum)`` (which must make the
        loop stop at its next safe point) instead of raising."""
        previous, self._defer = self._defer, stop
        try:
            yield
        finally:
            self._defer = previous


_ACTIVE: list[StopSignals] = []


def active_stop_signals() -> StopSignals | None:
    """The innermost ``stop_signals`` block's handler, or None outside one."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextmanager
def stop_signals() -> Iterator[StopSignals]:
    """Handle SIGTERM (what ``timeout``, SLURM and docker send) and SIGINT as ``StopSignals``
    for the block; the previous handlers come back after it. An ignored signal stays ignored;
    off the main thread, where Python cannot set handlers, the block keeps the ones it has."""
    guard = StopSignals()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    # a signal the parent ignores stays ignored (a background job's SIGINT, `nohup`)
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not signal.SIG_IGN}
    for s in previous:
        signal.signal(s, guard.handle)
    _ACTIVE.append(guard)
    try:
        yield guard
    finally:
        _ACTIVE.remove(guard)
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
