"""Play issue #14's fault classes on a fresh install, as a new user would; print a PASS/FAIL table.

Every check drives the real command (``python -m medfoundry.cli``) in a subprocess, on tiny
synthetic data in a temporary folder, and looks at what a user sees: the exit code (2 for a
user error, 143 / 130 for SIGTERM / SIGINT), stderr (one line naming the file or key, no
traceback), what is left on disk, and for class 3 whether a ``kill -9``-ed and resumed run ends
with the same weights (bytes of ``model.safetensors``) and log as one never stopped.

Usage: ``OMP_NUM_THREADS=1 python tools/fault_check.py [--only 1,3,14] [--keep]``.
Needs only the standard library, numpy, PIL and nibabel (and medfoundry installed); the
read-only folder and "disk full" checks mount tiny tmpfs folders inside the temporary folder
(root only; SKIP otherwise). Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

STAGE = "stage0_level0"
# flags of a `pretrain` run that takes seconds on one CPU thread (as tests/conftest.py's)
TINY = (
    "--backbone resnet10 --width 0.125 --load-size 32 --input-size 32 --batch-size 2 "
    "--queue-size 64 --accelerator cpu --no-progress --set moco.proj_hidden=32 "
    "--set moco.proj_dim=16"
).split()
VOCO = (
    "--method voco --backbone resnet10 --width 0.125 --epochs 2 --batch-size 2 "
    "--accelerator cpu --no-progress --set backbone.spatial_dims=3 --set data.val_fraction=0.2 "
    "--set data.crop_size=[16,32,32] --set voco.num_base=2 --set voco.proj_hidden=32 "
    "--set voco.proj_dim=16 --set trainer.checkpoint_every_n_steps=3"
).split()
PREPARE = ["--modality", "MR", "--no-crop", "--no-progress"]
CALL_TIMEOUT = 180.0


# --- results --------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the table."""

    cls: str
    fault: str
    expected: str
    got: str
    status: str  # PASS, FAIL or SKIP


@dataclass
class Result:
    """What a finished command showed: exit code, stdout, stderr, seconds."""

    rc: int
    out: str
    err: str
    seconds: float

    def err_lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [ln for ln in self.err.splitlines() if ln.strip()]


@dataclass
class Ctx:
    """The temporary folder, the shared fixtures built on demand, and the table."""

    root: Path
    rows: list[Row] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    calls: int = 0

    def add(self, cls: str, fault: str, expected: str, ok: bool | None, got: str) -> None:
        """Record one check; ``ok=None`` is a SKIP (``got`` says why)."""
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(cls, fault, expected, got, status))
        print(f"[{status}] {cls}: {fault} -> {got}", file=sys.stderr, flush=True)

    def fixture(self, name: str, build: Callable[[], Any]) -> Any:
        """Build a shared fixture once (a folder, a finished run) and reuse it."""
        if name not in self.cache:
            self.cache[name] = build()
        return self.cache[name]

    def path(self, name: str) -> Path:
        """A new path under the temporary folder (removed first when it exists)."""
        p = self.root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        return p


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _child_setup() -> None:
    """In the child: SIGINT back to its default (a background job inherits it as ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(ctx: Ctx, *args: str | Path, timeout: float = CALL_TIMEOUT) -> Result:
    """Run ``medfoundry ARGS`` to the end in the temporary folder."""
    ctx.calls += 1
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "medfoundry.cli", *map(str, args)],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            env=_env(),
            cwd=ctx.root,
            timeout=timeout,
            preexec_fn=_child_setup,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return Result(-1, "", f"timed out after {timeout:.0f} s\n{err}", timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def start(ctx: Ctx, *args: str | Path) -> subprocess.Popen:
    """Start ``medfoundry ARGS`` in the background (to signal or kill it)."""
    ctx.calls += 1
    return subprocess.Popen(
        [sys.executable, "-m", "medfoundry.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=_env(),
        cwd=ctx.root,
        preexec_fn=_child_setup,
    )


def finish(proc: subprocess.Popen, seconds: float = CALL_TIMEOUT) -> Result:
    """Wait for a started command and collect what it showed."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err = f"timed out\n{err}"
    return Result(proc.returncode, out, err, time.monotonic() - t0)


def _short(text: str, n: int = 150) -> str:
    text = text.replace("|", "\\|").replace("\n", " ").strip()
    return text if len(text) <= n else text[: n - 1] + "…"


def describe(res: Result) -> str:
    """Exit code and the gist of stderr, for the table."""
    lines = res.err_lines()
    if "Traceback" in res.err:
        last = [ln for ln in lines if not ln.startswith(" ")][-1:] or ["?"]
        return f"exit {res.rc}; Traceback ({len(lines)} lines), last: {_short(last[0], 110)}"
    if not lines:
        return f"exit {res.rc}; stderr empty"
    extra = f" (+{len(lines) - 1} more stderr lines)" if len(lines) > 1 else ""
    return f"exit {res.rc}; {_short(lines[0])}{extra}"


def one_line_error(res: Result, names: Sequence[str | Path] = (), code: int = 2) -> bool:
    """Exit ``code``, stderr exactly one ``medfoundry: error:`` line holding every one of
    ``names``, and no traceback."""
    lines = res.err_lines()
    return (
        res.rc == code
        and "Traceback" not in res.err
        and len(lines) == 1
        and lines[0].startswith("medfoundry: error:")
        and all(str(n) in lines[0] for n in names)
    )


def check_error(
    ctx: Ctx, cls: str, fault: str, res: Result, names: Sequence[str | Path], extra: str = ""
) -> bool:
    """Record an "exit 2, one line naming X" check; returns whether it passed."""
    shown = ", ".join(str(n) if len(str(n)) < 40 else Path(n).name for n in names)
    expected = f"exit 2, one line naming {shown}" if names else "exit 2, one line"
    ok = one_line_error(res, names)
    ctx.add(cls, fault, expected + extra, ok, describe(res))
    return ok


# --- tiny data ------------------------------------------------------------------------------
def write_png(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 array as PNG (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)
    return path


def xray_folder(folder: Path, n: int = 16, size: int = 32, seed: int = 0) -> Path:
    """``n`` random 8-bit 'radiographs' (a bright blob on noise), ``size``²."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        blob = 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (size * 1.2))
        write_png(folder / f"img{i:02d}.png", 60 + blob + rng.normal(0, 8, (size, size)))
    return folder


def jsrt_like(root: Path, n: int = 6, size: int = 32, seed: int = 0) -> Path:
    """A JSRT-layout folder: images/ and masks/{heart,left_lung}/ (binary 0/255 PNGs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        dy, dx = rng.integers(-2, 3, 2)
        lung = ((yy - size / 2 - dy) / (size / 3)) ** 2 + ((xx - size / 3 - dx) / (size / 7)) ** 2
        heart = (yy - 0.65 * size - dy) ** 2 + (xx - 0.55 * size - dx) ** 2 < (size / 6) ** 2
        img = np.full((size, size), 150.0)
        img[lung < 1] = 70
        img[heart] = 200
        write_png(root / "images" / f"c{i}.png", img + rng.normal(0, 10, img.shape))
        write_png(root / "masks" / "left_lung" / f"c{i}.png", (lung < 1) * 255)
        write_png(root / "masks" / "heart" / f"c{i}.png", heart * 255)
    return root


def class_folder(root: Path, classes: Sequence[str], images: Path) -> Path:
    """A classification folder: one sub-folder per class, each a copy of ``images``."""
    for name in classes:
        shutil.copytree(images, root / name)
    return root


def blob_volumes(folder: Path, n: int = 10, shape: tuple[int, int, int] = (16, 32, 32)) -> Path:
    """``n`` float NIfTI volumes (a Gaussian blob on noise), identity affine."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for i in range(n):
        c = rng.uniform(8, 24, size=3)
        vol = 100 * np.exp(-((zz - c[0] / 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / 40.0)
        vol = (vol + 20 + rng.normal(0, 3, vol.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / f"case{i}.nii.gz")
    return folder


def msd_folder(folder: Path, n: int = 4, shape: tuple[int, int, int] = (20, 24, 20)) -> Path:
    """A tiny nnU-Net/MSD folder: ``n`` volumes with two labeled boxes each, and dataset.json."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[5:12, 6:14, 5:12], lab[12:16, 8:12, 8:12] = 1, 2
        vol = (rng.normal(100, 10, shape) + 50 * (lab > 0)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    labels = {"0": "background", "1": "a", "2": "b"}
    info = {"name": "toy", "modality": {"0": "MRI"}, "labels": labels}
    (folder / "dataset.json").write_text(json.dumps(info))
    return folder


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _element(group: int, elem: int, vr: str, value: bytes | str | int) -> bytes:
    """One explicit-VR little-endian DICOM data element."""
    if isinstance(value, int):
        raw = struct.pack("<H" if vr == "US" else "<I", value)
    elif isinstance(value, str):
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    else:
        raw = value + (b"\0" if len(value) % 2 else b"")
    head = struct.pack("<HH", group, elem) + vr.encode()
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return head + b"\0\0" + struct.pack("<I", len(raw)) + raw
    return head + struct.pack("<H", len(raw)) + raw


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: float = 2.0) -> list[Path]:
    """Write ``hu`` (slices, rows, cols) as single-slice CT DICOM files, by hand (no pydicom)."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    study, series, frame = _uid(), _uid(), _uid()
    paths = []
    for k, plane in enumerate(hu):
        sop = _uid()
        meta_body = (
            _element(0x0002, 0x0001, "OB", b"\0\1")
            + _element(0x0002, 0x0002, "UI", ct)
            + _element(0x0002, 0x0003, "UI", sop)
            + _element(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1")
        )
        meta = _element(0x0002, 0x0000, "UL", len(meta_body)) + meta_body
        rows, cols = plane.shape
        body = b"".join(
            [
                _element(0x0008, 0x0016, "UI", ct),
                _element(0x0008, 0x0018, "UI", sop),
                _element(0x0008, 0x0060, "CS", "CT"),
                _element(0x0010, 0x0020, "LO", "fault-check"),
                _element(0x0018, 0x0050, "DS", f"{spacing:g}"),
                _element(0x0020, 0x000D, "UI", study),
                _element(0x0020, 0x000E, "UI", series),
                _element(0x0020, 0x0013, "IS", str(k + 1)),
                _element(0x0020, 0x0032, "DS", f"-20\\-20\\{k * spacing:g}"),
                _element(0x0020, 0x0037, "DS", "1\\0\\0\\0\\1\\0"),
                _element(0x0020, 0x0052, "UI", frame),
                _element(0x0028, 0x0002, "US", 1),
                _element(0x0028, 0x0004, "CS", "MONOCHROME2"),
                _element(0x0028, 0x0010, "US", rows),
                _element(0x0028, 0x0011, "US", cols),
                _element(0x0028, 0x0030, "DS", "1\\1"),
                _element(0x0028, 0x0100, "US", 16),
                _element(0x0028, 0x0101, "US", 16),
                _element(0x0028, 0x0102, "US", 15),
                _element(0x0028, 0x0103, "US", 1),
                _element(0x0028, 0x1052, "DS", "-1024"),
                _element(0x0028, 0x1053, "DS", "1"),
                _element(0x7FE0, 0x0010, "OW", (plane + 1024).astype("<i2").tobytes()),
            ]
        )
        path = folder / f"slice{k:03d}.dcm"
        path.write_bytes(b"\0" * 128 + b"DICM" + meta + body)
        paths.append(path)
    return paths


# --- reading results without torch ------------------------------------------------------------
def safetensors_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Every tensor of a safetensors file: name -> (dtype, shape, raw bytes)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    return {
        k: (v["dtype"], v["shape"], data[v["data_offsets"][0] : v["data_offsets"][1]])
        for k, v in header.items()
        if k != "__metadata__"
    }


class _Stub(dict):
    """Stands in for every class a checkpoint's pickle names: nothing is imported or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:
        """Ignore the state."""


class _PeekUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's plain values (epoch, global_step) and stubs the rest."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in ("dict", "set", "list", "tuple"):
            return {"dict": dict, "set": set, "list": list, "tuple": tuple}[name]
        return _Stub

    def persistent_load(self, pid: Any) -> Any:
        return None


def peek_ckpt(path: Path) -> dict[str, Any]:
    """A Lightning ``.ckpt``'s top-level plain values, read safely (no torch, no code run)."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        obj = _PeekUnpickler(z.open(name)).load()
    return {k: v for k, v in obj.items() if isinstance(v, (int, float, str))}


def ckpt_step(path: Path) -> int | None:
    """The global step of a ``.ckpt``, or None while it cannot be read."""
    try:
        return int(peek_ckpt(path)["global_step"])
    except Exception:  # noqa: BLE001 - any unreadable state is "not yet"
        return None


def csv_rows(path: Path) -> list[str]:
    """The lines of a CSV file (the log), or [] when absent."""
    return path.read_text().splitlines() if path.is_file() else []


def log_epochs(stage_dir: Path) -> list[int]:
    """The epoch column of a stage's ``logs/metrics.csv``."""
    rows = csv_rows(stage_dir / "logs" / "metrics.csv")
    return [int(r.split(",")[0]) for r in rows[1:]]


def temp_files(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (``.<name>.<pid>.<random>.tmp``) under ``folder``."""
    return [p for p in folder.rglob(".*.tmp")] if folder.exists() else []


def wait_for_ckpt(proc: subprocess.Popen, ckpt: Path, min_step: int, limit: float = 120) -> int:
    """Poll until ``ckpt`` holds a step >= ``min_step``; returns it (-1 if the run ended)."""
    end = time.monotonic() + limit
    seen = None
    while time.monotonic() < end and proc.poll() is None:
        if ckpt.is_file():
            stamp = ckpt.stat().st_mtime_ns
            if stamp != seen:
                seen = stamp
                step = ckpt_step(ckpt)
                if step is not None and step >= min_step:
                    return step
        time.sleep(0.01)
    return -1


def pretrain_args(method: str, data: Path | Sequence[Path], out: Path, *extra: str) -> list[str]:
    """Argv of a tiny CPU ``pretrain``; ``extra`` last, so it overrides."""
    datas = [data] if isinstance(data, Path) else list(data)
    return ["pretrain", "--method", method, "--data", *map(str, datas), "--out", str(out)] + [
        *TINY,
        *extra,
    ]


# --- shared fixtures --------------------------------------------------------------------------
def imgs(ctx: Ctx) -> Path:
    """16 random 32² PNGs."""
    return ctx.fixture("imgs", lambda: xray_folder(ctx.path("imgs")))


def baseline_args(ctx: Ctx, out: Path) -> list[str]:
    """The baseline MoCo run: 3 epochs, batch 2, epoch checkpoints only."""
    return pretrain_args("moco", imgs(ctx), out, "--epochs", "3")


def baseline(ctx: Ctx) -> dict[str, Any]:
    """A finished 3-epoch MoCo run, with the steps its ``last.ckpt`` was seen at."""

    def build() -> dict[str, Any]:
        out = ctx.path("base")
        last = out / STAGE / "checkpoints" / "last.ckpt"
        proc = start(ctx, *baseline_args(ctx, out))
        seen: list[int] = []
        stamp = None
        while proc.poll() is None:
            if last.is_file() and last.stat().st_mtime_ns != stamp:
                stamp = last.stat().st_mtime_ns
                step = ckpt_step(last)
                if step is not None and step not in seen:
                    seen.append(step)
            time.sleep(0.01)
        res = finish(proc)
        return {"run": out, "res": res, "seen": seen}

    return ctx.fixture("baseline", build)


def copy_of_baseline(ctx: Ctx, name: str) -> Path | None:
    """A copy of the finished baseline run (None when it failed)."""
    base = baseline(ctx)
    if base["res"].rc != 0:
        return None
    dst = ctx.path(name)
    shutil.copytree(base["run"], dst, symlinks=True)
    return dst


def store3d(ctx: Ctx) -> tuple[Path, Result]:
    """A 3D store (``prepare``) of ten 16 x 32 x 32 blob volumes."""

    def build() -> tuple[Path, Result]:
        vols = blob_volumes(ctx.path("vols"))
        out = ctx.path("store")
        return out, cli(ctx, "prepare", "--data", vols, "--out", out, *PREPARE)

    return ctx.fixture("store3d", build)


def voco_run(ctx: Ctx) -> tuple[Path, Result]:
    """A finished tiny VoCo (3D) run on the store."""

    def build() -> tuple[Path, Result]:
        store, _ = store3d(ctx)
        out = ctx.path("voco_a")
        return out, cli(ctx, "pretrain", "--data", store, "--out", out, *VOCO)

    return ctx.fixture("voco_a", build)


def finetune_cls_args(data: Path, out: Path, pretrained: Path | str, *extra: str) -> list[str]:
    """Argv of a 2-step CPU classification fine-tuning at 32²."""
    args = ["finetune", "--task", "classification", "--data", str(data), "--out", str(out)]
    args += ["--pretrained", str(pretrained), "--steps", "2", "--image-size", "32"]
    return args + ["--no-progress", "--set", "accelerator=cpu", *extra]


def finetune_seg_args(data: Path, out: Path, pretrained: Path | str, *extra: str) -> list[str]:
    """Argv of a 2-step CPU 2D segmentation fine-tuning at 32²."""
    args = ["finetune", "--task", "segmentation", "--data", str(data), "--out", str(out)]
    args += ["--pretrained", str(pretrained), "--steps", "2", "--image-size", "32"]
    return args + ["--no-progress", "--set", "accelerator=cpu", *extra]


def cls_data(ctx: Ctx) -> Path:
    """A classification folder with classes A and B."""
    return ctx.fixture("cls", lambda: class_folder(ctx.path("cls"), ("A", "B"), imgs(ctx)))


def mount_tmpfs(path: Path, options: str) -> str | None:
    """Mount a tmpfs at ``path`` (inside the temporary folder); None, or why it failed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount failed: {exc}"
    return None if res.returncode == 0 else f"mount failed: {_short(res.stderr, 80)}"


def unmount(path: Path) -> None:
    """Unmount a tmpfs mounted by ``mount_tmpfs`` (lazily, never raising)."""
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20, check=False)


# --- the classes ------------------------------------------------------------------------------
STALE = (".timings.json.999999.zz.tmp", "checkpoint/.model.safetensors.999999.zz.tmp")
STALE_LAST = f"{STAGE}/checkpoints/.last.ckpt.999999.zz.tmp"


def signals_run(ctx: Ctx) -> dict[str, Any]:
    """A 4-epoch MoCo run stopped by SIGTERM, its resume stopped by SIGINT, then resumed to
    the end; before that last resume, 0-byte temp files of a dead writer (1 h old) are planted
    beside the files it rewrites (class 15)."""

    def build() -> dict[str, Any]:
        run = ctx.path("signals")
        last = run / STAGE / "checkpoints" / "last.ckpt"
        args = pretrain_args("moco", imgs(ctx), run, "--epochs", "4")
        args += ["--set", "trainer.checkpoint_every_n_steps=1"]
        stops = []
        for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            before = ckpt_step(last) if last.is_file() else None
            proc = start(ctx, *args, *(["--resume"] if before is not None else []))
            got_step = wait_for_ckpt(proc, last, (before or 0) + 1)
            running = proc.poll() is None
            proc.send_signal(signum)
            res = finish(proc)
            step = ckpt_step(last) if last.is_file() else None
            exported = (run / "checkpoint").exists()  # a stopped run exports nothing
            stops.append((signum, code, before, got_step if running else -1, res, step, exported))
        planted = [run / name for name in (*STALE, STALE_LAST)]
        old = time.time() - 3600
        for p in planted:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
            os.utime(p, (old, old))
        res = cli(ctx, *args, "--resume")
        return {"run": run, "epochs": 4, "stops": stops, "final": res, "planted": planted}

    return ctx.fixture("signals", build)


def class_1(ctx: Ctx) -> None:
    """SIGTERM / SIGINT save a resumable checkpoint, say how to resume, exit 143 / 130."""
    sig = signals_run(ctx)
    run = sig["run"]
    for signum, code, before, got_step, res, step, exported in sig["stops"]:
        want = (
            f"medfoundry: interrupted ({signum.name}); rerun with --resume to continue the run "
            f"in {run}"
        )
        ok = (
            got_step > 0
            and res.rc == code
            and res.err_lines() == [want]
            and step is not None
            and step >= got_step
            and not exported
        )
        ctx.add(
            "1",
            f"{signum.name} to `pretrain`{' --resume' if before is not None else ''} mid-run "
            f"(after step {got_step})",
            f"exit {code}, one line 'interrupted ({signum.name}); rerun with --resume…', "
            "last.ckpt saved",
            ok,
            f"{describe(res)}; last.ckpt step {step}"
            + ("; checkpoint/ exported" if exported else ""),
        )
    res = sig["final"]
    last = run / STAGE / "checkpoints" / "last.ckpt"
    final = ckpt_step(last) if last.is_file() else None
    ok = res.rc == 0 and (run / "checkpoint" / "model.safetensors").is_file()
    ctx.add(
        "1",
        "`--resume` after SIGTERM and SIGINT",
        "exit 0, run finished (checkpoint/model.safetensors)",
        ok,
        f"{describe(res)}; final step {final}",
    )


def class_2(ctx: Ctx) -> None:
    """``last.ckpt`` follows every epoch (improved or not); the best is kept apart."""
    base = baseline(ctx)
    run, res, seen = base["run"], base["res"], base["seen"]
    last = run / STAGE / "checkpoints" / "last.ckpt"
    if res.rc != 0 or not last.is_file():
        ctx.add("2", "3-epoch MoCo run", "exit 0", False, describe(res))
        return
    total = ckpt_step(last) or 0
    per_epoch = total // 3
    wanted = [per_epoch * k for k in (1, 2, 3)]
    ok = per_epoch > 0 and all(s in seen for s in wanted)
    ctx.add(
        "2",
        "3-epoch run, `last.ckpt` watched while it trains",
        f"last.ckpt written at the end of every epoch (steps {wanted})",
        ok,
        f"last.ckpt seen at steps {seen}",
    )
    best = run / STAGE / "checkpoints" / "best.ckpt"
    best_step = ckpt_step(best) if best.is_file() else None
    meta = peek_ckpt(last)
    ok = best.is_file() and meta.get("epoch") in (2, 3) and total == 3 * per_epoch
    ctx.add(
        "2",
        "finished run's checkpoints",
        "last.ckpt = the last epoch, best.ckpt kept separately",
        ok,
        f"last.ckpt epoch {meta.get('epoch')} step {total}; best.ckpt "
        f"{'step ' + str(best_step) if best.is_file() else 'absent'}",
    )


def _compare_runs(a: Path, b: Path, stages: Sequence[str]) -> tuple[bool, str]:
    """Same final weights (bytes) and logs in every stage?"""
    fa, fb = a / "checkpoint" / "model.safetensors", b / "checkpoint" / "model.safetensors"
    if not (fa.is_file() and fb.is_file()):
        return False, f"final weights missing ({fa.is_file()}, {fb.is_file()})"
    ta, tb = safetensors_tensors(fa), safetensors_tensors(fb)
    if ta.keys() != tb.keys():
        return False, "different tensor names"
    differ = [k for k in ta if ta[k] != tb[k]]
    worst = 0.0
    for k in differ:
        if ta[k][0] == "F32":
            x = np.frombuffer(ta[k][2], "<f4")
            y = np.frombuffer(tb[k][2], "<f4")
            worst = max(worst, float(np.abs(x - y).max()))
    logs_equal = all(
        csv_rows(a / s / "logs" / "metrics.csv") == csv_rows(b / s / "logs" / "metrics.csv")
        for s in stages
    )
    got = (
        f"{len(ta) - len(differ)}/{len(ta)} tensors bit-identical"
        + (f" (max abs diff {worst:.3g})" if differ else "")
        + f"; logs {'equal' if logs_equal else 'differ'}"
    )
    return not differ and logs_equal, got


def _kill_and_resume(ctx: Ctx, args: list[str], ckpt: Path, min_step: int) -> tuple[int, Result]:
    """Start ``args``, ``kill -9`` it once ``ckpt`` holds ``min_step``, resume to the end."""
    proc = start(ctx, *args)
    step = wait_for_ckpt(proc, ckpt, min_step)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    return (step if running else -1), cli(ctx, *args, "--resume")


def class_3(ctx: Ctx) -> None:
    """``kill -9`` anywhere and ``--resume`` gives the uninterrupted run's weights and log."""
    every3 = ["--set", "trainer.checkpoint_every_n_steps=3"]
    cases: list[tuple[str, Callable[[Path], list[str]] | None, list[str], str, int]] = [
        (
            "MoCo (2D), kill -9 mid-epoch 1",
            lambda out: pretrain_args("moco", imgs(ctx), out, "--epochs", "2", *every3),
            [STAGE],
            STAGE,
            9,
        ),
        (
            "Adam (2D) levels [0, 2], kill -9 in stage 2",
            lambda out: pretrain_args(
                "adam", imgs(ctx), out, "--epochs", "2", "--set", "levels=[0, 2]", *every3
            ),
            [STAGE, "stage1_level2"],
            "stage1_level2",
            3,
        ),
        ("VoCo (3D), kill -9 mid-epoch 1", None, [STAGE], STAGE, 6),
    ]
    for k, (fault, make, stages, kill_stage, min_step) in enumerate(cases):
        b = ctx.path(f"resume_b{k}")
        if make is None:  # VoCo on the 3D store
            store, res_store = store3d(ctx)
            if res_store.rc != 0:
                ctx.add("3", fault, "the 3D store is made", False, describe(res_store))
                continue
            a, res_a = voco_run(ctx)
            argv = ["pretrain", "--data", str(store), "--out", str(b), *VOCO]
        else:
            a = ctx.path(f"resume_a{k}")
            res_a = cli(ctx, *make(a))
            argv = make(b)
        if res_a.rc != 0:
            ctx.add("3", fault, "uninterrupted run finishes", False, describe(res_a))
            continue
        ckpt = b / kill_stage / "checkpoints" / "last.ckpt"
        step, res_b = _kill_and_resume(ctx, argv, ckpt, min_step)
        if step < 0 or res_b.rc != 0:
            got = f"killed at step {step}; resume: {describe(res_b)}"
            ctx.add("3", fault, "resume finishes", False, got)
            continue
        ok, got = _compare_runs(a, b, stages)
        ctx.add(
            "3",
            f"{fault} (killed after last.ckpt of step {step})",
            "final model.safetensors bit-identical, metrics.csv equal",
            ok,
            got,
        )


def class_4(ctx: Ctx) -> None:
    """Resume keeps the history: metrics.csv, curves.png and timings.json."""
    sig = signals_run(ctx)
    run = sig["run"]
    if sig["final"].rc != 0:
        ctx.add("4", "history after 2 stops + resumes", "a finished run", False, "class 1 failed")
        return
    epochs = log_epochs(run / STAGE)
    timings = (
        json.loads((run / "timings.json").read_text()) if (run / "timings.json").is_file() else {}
    )
    ok = set(epochs) == set(range(sig["epochs"])) and (run / "curves.png").is_file()
    ok = ok and STAGE in timings
    ctx.add(
        "4",
        "run stopped by SIGTERM, then SIGINT, resumed twice",
        f"metrics.csv holds epochs 0-{sig['epochs'] - 1}, curves.png, timings.json has the stage",
        ok,
        f"epochs logged {sorted(set(epochs))}; curves.png "
        f"{'present' if (run / 'curves.png').is_file() else 'absent'}; timings {list(timings)}",
    )
    steps = [
        int(r.split(",")[1])
        for r in csv_rows(run / STAGE / "logs" / "metrics.csv")[1:]
        if r.split(",")[3:4] != [""]  # per-step train rows
    ]
    dup = len(steps) - len(set(steps))
    ctx.add(
        "4",
        "same run: per-step rows of metrics.csv",
        "no step logged twice (the steps redone after a stop replace the old rows)",
        dup == 0 and bool(steps),
        f"{len(steps)} step rows, {dup} repeated",
    )


def class_5(ctx: Ctx) -> None:
    """Resume refuses a changed config or other data, naming it; nothing rewritten."""
    run = copy_of_baseline(ctx, "changed")
    if run is None:
        ctx.add("5", "resume with changes", "a baseline run", False, "baseline run failed")
        return
    before = (run / "config.json").read_bytes()
    res = cli(ctx, *baseline_args(ctx, run), "--resume", "--width", "0.25")
    ok = check_error(ctx, "5", "`--resume --width 0.25` (run has 0.125)", res, ["backbone.width"])
    del ok
    same = (run / "config.json").read_bytes() == before
    other = ctx.path("imgs_other")
    shutil.copytree(imgs(ctx), other)
    (other / "img00.png").unlink()
    args = pretrain_args("moco", other, run, "--epochs", "3", "--resume")
    res = cli(ctx, *args)
    ok = one_line_error(res, ["data"]) and same and (run / "config.json").read_bytes() == before
    ctx.add(
        "5",
        "`--resume --data` another folder (one image fewer)",
        "exit 2, one line naming the data; config.json unchanged",
        ok,
        f"{describe(res)}; config.json {'unchanged' if same else 'REWRITTEN'}",
    )


class _Payload:
    """Unpickling this runs code: it writes a marker file (what a crafted run folder can do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').write('owned')",))


def class_6(ctx: Ctx) -> None:
    """No file in a run folder is unpickled with arbitrary objects."""
    for fault, which in (
        ("crafted `last.ckpt` in an unfinished run, `--resume`", "last"),
        ("crafted `best.ckpt`+`last.ckpt` of a finished stage, `--resume`", "best"),
    ):
        run = copy_of_baseline(ctx, f"crafted_{which}")
        if run is None:
            ctx.add("6", fault, "a baseline run", False, "baseline run failed")
            continue
        marker = ctx.root / f"owned_{which}"
        payload = pickle.dumps({"state_dict": {}, "epoch": 0, "x": _Payload(marker)}, protocol=2)
        ckpts = run / STAGE / "checkpoints"
        if which == "last":
            shutil.rmtree(run / STAGE / "checkpoint")  # the stage is not done: resume loads last
            shutil.rmtree(run / "checkpoint")
            (ckpts / "last.ckpt").write_bytes(payload)
            named = ckpts / "last.ckpt"
        else:
            for p in ckpts.glob("*.ckpt"):
                p.write_bytes(payload)
            named = ckpts
        res = cli(ctx, *baseline_args(ctx, run), "--resume")
        ok = one_line_error(res, [named]) and not marker.exists()
        ctx.add(
            "6",
            fault,
            "exit 2, one line naming the file, no code run",
            ok,
            f"{describe(res)}; code {'RAN' if marker.exists() else 'not run'}",
        )


def class_7(ctx: Ctx) -> None:
    """Producers mark completeness; consumers refuse partial or damaged products."""
    # a prepare-2d killed mid-way: 300 slices of one volume
    src = ctx.path("p2d_src")
    src.mkdir()
    vol = np.random.default_rng(0).normal(100, 20, (300, 64, 64)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol.T.copy(), np.eye(4)), src / "big.nii.gz")
    corpus = ctx.path("p2d_killed")
    proc = start(
        ctx, "prepare-2d", "--source", src, "--out", corpus, "--size", "32", "--no-progress"
    )
    end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < end:
        if corpus.is_dir() and len(list(corpus.rglob("*.png"))) >= 5:
            break
        time.sleep(0.01)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    n_png = len(list(corpus.rglob("*.png")))
    if finished_first or n_png == 0:
        ctx.add(
            "7",
            "`prepare-2d` killed mid-way",
            "a partial corpus to test",
            None,
            f"prepare-2d ended before the kill ({n_png} PNGs)",
        )
    else:
        run = ctx.path("on_partial")
        res = cli(ctx, *pretrain_args("moco", corpus, run, "--epochs", "1"))
        ok = one_line_error(res, [corpus]) and not (run / "checkpoint").exists()
        ctx.add(
            "7",
            f"`pretrain` on a corpus whose `prepare-2d` was killed ({n_png} PNGs)",
            "exit 2, one line naming the corpus, no training",
            ok,
            describe(res),
        )
        res = cli(
            ctx,
            "prepare-2d",
            "--source",
            src,
            "--out",
            corpus,
            "--size",
            "32",
            "--overwrite",
            "--no-progress",
        )
        ok = res.rc == 0 and (corpus / "corpus.json").is_file()
        n_png = len(list(corpus.rglob("*.png")))
        ctx.add(
            "7",
            "`prepare-2d --overwrite` on that killed corpus",
            "exit 0, cleans and rebuilds (corpus.json)",
            ok,
            f"{describe(res)}; {n_png} PNGs",
        )
    # a finished corpus with a deleted file
    corpus = ctx.path("p2d_done")
    res = cli(
        ctx, "prepare-2d", "--source", imgs(ctx), "--out", corpus, "--size", "32", "--no-progress"
    )
    pngs = sorted(p for p in corpus.rglob("*.png"))
    if res.rc != 0 or not pngs:
        ctx.add("7", "`prepare-2d` of 16 PNGs", "exit 0", False, describe(res))
    else:
        gone = pngs[3]
        gone.unlink()
        run = ctx.path("on_damaged")
        res = cli(ctx, *pretrain_args("moco", corpus, run, "--epochs", "1"))
        check_error(ctx, "7", "`pretrain` on a finished corpus with one PNG deleted", res, [gone])
    # a 3D store with a truncated .npy
    store, res = store3d(ctx)
    if res.rc != 0:
        ctx.add("7", "`prepare` a 3D store", "exit 0", False, describe(res))
        return
    damaged = ctx.path("store_damaged")
    shutil.copytree(store, damaged)
    npy = sorted(damaged.rglob("*.npy"))[1]
    npy.write_bytes(npy.read_bytes()[:-100])
    vols = ctx.root / "vols"
    res = cli(ctx, "prepare", "--data", vols, "--out", damaged, *PREPARE)
    ok = one_line_error(res, [npy]) and "up to date" not in res.out
    ctx.add(
        "7",
        "`prepare` again over a store with a truncated .npy",
        "exit 2, one line naming the .npy (not 'up to date, reused')",
        ok,
        describe(res) + ("; stdout says reused" if "up to date" in res.out else ""),
    )
    run = ctx.path("voco_damaged")
    res = cli(ctx, "pretrain", "--data", damaged, "--out", run, *VOCO)
    check_error(ctx, "7", "`pretrain --method voco` on that store", res, [npy])


def class_8(ctx: Ctx) -> None:
    """Weights are verified on load."""
    run = copy_of_baseline(ctx, "flipped")
    if run is None:
        ctx.add("8", "flipped weights", "a baseline run", False, "baseline run failed")
        return
    weights = run / "checkpoint" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    lo = 8 + n
    span = min(4000, len(raw) - lo)
    raw[lo : lo + span] = bytes(b ^ 0xFF for b in raw[lo : lo + span])
    weights.write_bytes(bytes(raw))
    out = ctx.path("ft_flipped")
    res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, run))
    ok = one_line_error(res, [weights]) and not (out / "checkpoint").exists()
    ctx.add(
        "8",
        f"{span} inverted bytes in model.safetensors, `finetune --pretrained`",
        "exit 2, one line naming model.safetensors, no training",
        ok,
        describe(res),
    )
    out = ctx.path("embed_flipped")
    res = cli(ctx, "embed", "--model", run, "--input", imgs(ctx), "--out", out, "--no-progress")
    check_error(ctx, "8", "same checkpoint, `embed --model`", res, [weights])


def class_9(ctx: Ctx) -> None:
    """finetune checks every input before any work and keeps a finished run."""
    base = baseline(ctx)
    pre = base["run"] if base["res"].rc == 0 else "none"
    seg = ctx.fixture("jsrt", lambda: jsrt_like(ctx.path("jsrt")))
    out = ctx.path("ft_badtest")
    missing = ctx.root / "no_such_test"
    res = cli(ctx, *finetune_seg_args(seg, out, pre, "--test-data", str(missing)))
    ok = one_line_error(res, [missing]) and not (out / "checkpoint").exists()
    ctx.add(
        "9",
        "`finetune --task segmentation --test-data` a missing folder",
        "exit 2 naming it, before training (no checkpoint/)",
        ok,
        describe(res),
    )
    other = ctx.fixture("cls_ac", lambda: class_folder(ctx.path("cls_ac"), ("A", "C"), imgs(ctx)))
    out = ctx.path("ft_otherclasses")
    res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, pre, "--test-data", str(other)))
    ok = one_line_error(res, [other]) and not (out / "checkpoint").exists()
    ctx.add(
        "9",
        "classification `--test-data` with classes A, C (train: A, B)",
        "exit 2, one line naming the test folder, no training",
        ok,
        describe(res),
    )
    out = ctx.path("ft_done")
    res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, pre))
    if res.rc != 0:
        ctx.add("9", "a tiny classification fine-tuning", "exit 0", False, describe(res))
        return
    marker = sorted(p.name for p in out.iterdir())
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, pre))
    same = stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ok = one_line_error(res, [out, "--overwrite"]) and same
    ctx.add(
        "9",
        "`finetune` again into the finished `--out`",
        "exit 2 naming --out and --overwrite; no file touched",
        ok,
        f"{describe(res)}; files {'untouched' if same else 'CHANGED'} ({', '.join(marker)})",
    )


def _edited_meta(ctx: Ctx, name: str, edit: Callable[[Any], Any]) -> Path | None:
    """A copy of the baseline run whose checkpoint/medfoundry.json is ``edit(meta)``."""
    run = copy_of_baseline(ctx, name)
    if run is None:
        return None
    path = run / "checkpoint" / "medfoundry.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return run


def _set_backbone(meta: dict[str, Any], **kv: Any) -> dict[str, Any]:
    meta.get("backbone", {}).update(kv) if isinstance(meta.get("backbone"), dict) else None
    return meta


def class_10(ctx: Ctx) -> None:
    """Every user error is one line naming the file or key, exit 2."""
    data = imgs(ctx)
    afile = ctx.path("a_file")
    afile.write_text("not a folder\n")
    res = cli(ctx, *pretrain_args("moco", data, afile, "--epochs", "1"))
    check_error(ctx, "10", "`pretrain --out` an existing file", res, [afile])

    ro = ctx.path("readonly")
    why = mount_tmpfs(ro, "ro,size=64k")
    if why:
        ctx.add("10", "`--out` in a read-only folder", "exit 2, one line", None, why)
    else:
        out = ro / "run"
        res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1"))
        check_error(ctx, "10", "`pretrain --out` in a read-only folder (ro tmpfs)", res, [out])
        ctx.cache.setdefault("mounts", []).append(ro)

    one = ctx.path("one_image")
    one.mkdir()
    shutil.copy(data / "img00.png", one / "img00.png")
    out = ctx.path("run_one")
    res = cli(ctx, *pretrain_args("moco", one, out, "--epochs", "1"))
    check_error(ctx, "10", "`pretrain` on a single image", res, [])

    for fault, flags, key in (
        ("`--set optim.lr=abc`", ["--set", "optim.lr=abc"], "optim.lr"),
        ("`--batch-size 0`", ["--batch-size", "0"], "optim.batch_size"),
    ):
        out = ctx.path("run_badvalue")
        res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1", *flags))
        ok = one_line_error(res, [key]) and not out.exists()
        ctx.add(
            "10", f"`pretrain` {fault}", f"exit 2 naming {key}; no --out made", ok, describe(res)
        )

    for fault, content in (("empty", b""), ("truncated", None)):
        run = copy_of_baseline(ctx, f"ckpt_{fault}")
        if run is None:
            ctx.add("10", f"{fault} last.ckpt", "a baseline run", False, "baseline run failed")
            continue
        last = run / STAGE / "checkpoints" / "last.ckpt"
        last.write_bytes(content if content is not None else last.read_bytes()[:5000])
        shutil.rmtree(run / STAGE / "checkpoint")
        shutil.rmtree(run / "checkpoint")
        res = cli(ctx, *baseline_args(ctx, run), "--resume")
        check_error(ctx, "10", f"`--resume` with a {fault} last.ckpt", res, [last])

    edits: list[tuple[str, Callable[[Any], Any]]] = [
        ("unknown backbone", lambda m: _set_backbone(m, name="resnet9000")),
        ("`{}`", lambda m: {}),
        ("a list", lambda m: [m]),
        ("`input_size: null`", lambda m: {**m, "input_size": None}),
    ]
    for fault, edit in edits:
        run = _edited_meta(ctx, "meta_edit", edit)
        if run is None:
            ctx.add("10", fault, "a baseline run", False, "baseline run failed")
            continue
        out = ctx.path("ft_meta")
        res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, run))
        meta = run / "checkpoint" / "medfoundry.json"
        check_error(ctx, "10", f"hand-edited medfoundry.json: {fault}, `finetune`", res, [meta])

    for command in ("prepare-2d", "prepare"):
        src = ctx.path(f"nonutf8_{command}")
        src.mkdir()
        if command == "prepare-2d":
            shutil.copy(data / "img01.png", src / "ok.png")
            target = os.fsencode(src) + b"/caf\xe9.png"
            shutil.copy(data / "img00.png", os.fsdecode(target))
        else:
            vols = blob_volumes(ctx.path("nonutf8_vols"), n=2)
            shutil.copy(vols / "case0.nii.gz", src / "ok.nii.gz")
            shutil.copy(vols / "case1.nii.gz", os.fsdecode(os.fsencode(src) + b"/caf\xe9.nii.gz"))
        out = ctx.path(f"nonutf8_{command}_out")
        extra = ["--size", "32"] if command == "prepare-2d" else ["--modality", "MR", "--no-crop"]
        flag = "--source" if command == "prepare-2d" else "--data"
        res = cli(ctx, command, flag, src, "--out", out, *extra, "--no-progress")
        ok = "Traceback" not in res.err and (
            res.rc == 0 or (one_line_error(res) and "caf" in res.err)
        )
        ctx.add(
            "10",
            f"`{command}` with a non-UTF-8 file name (caf\\xe9)",
            "exit 0, or exit 2 with one line naming the file",
            ok,
            describe(res),
        )

    run3d, res3d = voco_run(ctx)
    if res3d.rc != 0:
        ctx.add("10", "3D checkpoint to 2D classification", "a 3D run", False, describe(res3d))
    else:
        out = ctx.path("ft_3d_to_2d")
        res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, run3d))
        check_error(ctx, "10", "3D (VoCo) checkpoint to 2D classification", res, [])

    msd = msd_folder(ctx.path("msd"))
    out = ctx.path("ft3d_batch1")
    res = cli(
        ctx, "finetune", "--task", "segmentation", "--data", msd, "--pretrained", "none",
        "--out", out, "--steps", "2", "--batch-size", "1", "--patch-size", "32", "32", "32",
        "--no-progress",
    )  # fmt: skip
    check_error(ctx, "10", "3D fine-tuning with batch 1 and a 32³ patch", res, ["batch_size"])

    disk_full(ctx)


def remount(path: Path, options: str) -> str | None:
    """Change a tmpfs's mount options (its size); None, or why it failed."""
    res = subprocess.run(
        ["mount", "-o", f"remount,{options}", str(path)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return None if res.returncode == 0 else f"remount failed: {_short(res.stderr, 80)}"


def disk_full(ctx: Ctx) -> None:
    """The disk fills up during pretraining (the second epoch's checkpoint does not fit in a
    14 MiB tmpfs): one line, nothing half-written, the last good checkpoint kept; after
    space is freed (the tmpfs grown) ``--resume`` finishes."""
    base = baseline(ctx)  # same flags: its last.ckpt's size sizes the disk
    base_last = base["run"] / STAGE / "checkpoints" / "last.ckpt"
    if base["res"].rc != 0 or not base_last.is_file():
        ctx.add("10", "disk full during `pretrain`", "a baseline run", False, "baseline failed")
        return
    ckpt_bytes = base_last.stat().st_size
    total = ckpt_step(base_last) or 0
    # room for best.ckpt + last.ckpt of epoch 1, not for epoch 2's temporary copy
    size_k = int(2.5 * ckpt_bytes / 1024) + 64
    full = ctx.path("full")
    why = mount_tmpfs(full, f"size={size_k}k")
    if why:
        ctx.add("10", "disk full during `pretrain`", "exit 2, one line", None, why)
        return
    ctx.cache.setdefault("mounts", []).append(full)
    out = full / "run"
    args = pretrain_args("moco", imgs(ctx), out, "--epochs", "3")
    res = cli(ctx, *args)
    temps = temp_files(full)
    last = out / STAGE / "checkpoints" / "last.ckpt"
    step = ckpt_step(last) if last.is_file() else None
    ok = one_line_error(res, ["space"]) and not temps
    ctx.add(
        "10",
        f"disk full during `pretrain` ({size_k} KiB tmpfs: epoch 2's checkpoint does not fit)",
        "exit 2, one line (no space left); no .tmp left",
        ok,
        f"{describe(res)}; {len(temps)} .tmp files left",
    )
    ctx.add(
        "10",
        "same run: what the disk holds after the failure",
        "the last complete last.ckpt (before the failing epoch) intact and readable",
        step is not None and 0 < step < total,
        f"last.ckpt step {step} of {total}; files: "
        + ", ".join(sorted(p.name for p in out.rglob("*") if p.is_file())),
    )
    why = remount(full, "size=64m")
    if why:
        ctx.add("10", "`--resume` once space is freed", "exit 0", None, why)
        return
    res = cli(ctx, *args, "--resume")
    ok = res.rc == 0 and (out / "checkpoint" / "model.safetensors").is_file()
    ctx.add(
        "10",
        "`--resume` once space is freed (tmpfs grown to 64 MiB)",
        "exit 0, the run finishes",
        ok,
        describe(res),
    )


def class_11(ctx: Ctx) -> None:
    """A misspelled ``--set`` key is an error suggesting the nearest known one."""
    out = ctx.path("run_typo")
    res = cli(ctx, *pretrain_args("moco", imgs(ctx), out, "--epochs", "1", "--set", "optim.lrr=1"))
    ok = one_line_error(res, ["optim.lrr", "'optim.lr'"]) and not out.exists()
    ctx.add(
        "11",
        "`pretrain --set optim.lrr=1`",
        "exit 2, one line suggesting 'optim.lr'; no --out made",
        ok,
        describe(res),
    )
    out = ctx.path("ft_typo")
    res = cli(ctx, *finetune_cls_args(cls_data(ctx), out, "none", "--set", "val_evry=3"))
    ok = one_line_error(res, ["val_evry", "'val_every'"]) and not out.exists()
    ctx.add(
        "11",
        "`finetune --set val_evry=3`",
        "exit 2, one line suggesting 'val_every'; no --out made",
        ok,
        describe(res),
    )


def class_12(ctx: Ctx) -> None:
    """A mask must be binary."""
    seg = ctx.path("jsrt_graymask")
    jsrt_like(seg)
    bad = seg / "masks" / "heart" / "c2.png"
    shutil.copy(seg / "images" / "c2.png", bad)
    out = ctx.path("ft_graymask")
    res = cli(ctx, *finetune_seg_args(seg, out, "none"))
    ok = one_line_error(res, [bad]) and not (out / "checkpoint").exists()
    ctx.add(
        "12",
        "grayscale X-ray given as a mask, `finetune --task segmentation`",
        "exit 2, one line naming the mask",
        ok,
        describe(res),
    )


def class_13(ctx: Ctx) -> None:
    """A damaged slice of a DICOM series is named, wherever it is."""
    hu = np.full((8, 24, 24), -1000, np.int16)
    hu[2:6, 6:18, 6:18] = 40
    for where, k in (("last", 7), ("middle", 3)):
        src = ctx.path(f"dicom_{where}")
        paths = write_dicom_series(src / "series", hu)
        paths[k].write_bytes(b"")
        out = ctx.path(f"dicom_{where}_out")
        res = cli(ctx, "prepare", "--data", src, "--out", out, "--no-progress")
        check_error(
            ctx, "13", f"zero-byte slice ({where}) of a DICOM series, `prepare`", res, [paths[k]]
        )
    src = ctx.path("dicom_ok")
    write_dicom_series(src / "series", hu)
    out = ctx.path("dicom_ok_out")
    res = cli(ctx, "prepare", "--data", src, "--out", out, "--no-progress")
    ok = res.rc == 0 and (out / "store.json").is_file() and "1 cases" in res.out
    ctx.add(
        "13",
        "the same series undamaged (control)",
        "exit 0, a 1-case store",
        ok,
        describe(res) + f"; {_short(res.out, 80)}",
    )


def class_14(ctx: Ctx) -> None:
    """``--out`` inside ``--data`` is refused."""
    data = ctx.path("imgs_with_out")
    shutil.copytree(imgs(ctx), data)
    out = data / "run"
    res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1"))
    ok = one_line_error(res, [out]) and not out.exists()
    ctx.add(
        "14",
        "`pretrain --data D --out D/run`",
        "exit 2, one line refusing --out inside --data; nothing written",
        ok,
        describe(res) + ("; D/run was written" if out.exists() else ""),
    )
    if out.exists():
        res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1", "--resume"))
        ctx.add(
            "14",
            "then `--resume` of that run",
            "exit 2, one line refusing --out inside --data",
            one_line_error(res, [out]) and "inside" in res.err,
            describe(res),
        )
    out = data / "corpus"
    res = cli(ctx, "prepare-2d", "--source", data, "--out", out, "--size", "32", "--no-progress")
    check_error(ctx, "14", "`prepare-2d --source D --out D/corpus`", res, [out])
    store, res_store = store3d(ctx)
    del store
    vols = ctx.root / "vols_with_out"
    if res_store.rc == 0:
        if vols.exists():
            shutil.rmtree(vols)
        shutil.copytree(ctx.root / "vols", vols)
        out = vols / "store"
        res = cli(ctx, "prepare", "--data", vols, "--out", out, *PREPARE)
        check_error(ctx, "14", "`prepare --data V --out V/store`", res, [out])


def class_15(ctx: Ctx) -> None:
    """The smaller items: --epochs 0, constant images, failed runs, stale temps, threads."""
    out = ctx.path("run_epochs0")
    res = cli(ctx, *pretrain_args("moco", imgs(ctx), out, "--epochs", "0"))
    ok = one_line_error(res, ["epochs"]) and "no checkpoint to continue" not in res.err
    ctx.add("15", "`pretrain --epochs 0`", "exit 2, one line naming epochs", ok, describe(res))

    data = ctx.path("imgs_constant")
    shutil.copytree(imgs(ctx), data)
    const = write_png(data / "flat.png", np.full((32, 32), 128))
    stray = data / ".img03.png.999999.abcd.tmp"  # what a killed write leaves: skipped by scans
    stray.write_bytes(b"")
    out = ctx.path("run_constant")
    res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1"))
    warned = [ln for ln in res.err_lines() if "flat.png" in ln and "constant" in ln]
    ctx.add(
        "15",
        "a constant image among the pretraining images",
        "exit 0 with one warning naming it",
        res.rc == 0 and len(warned) == 1 and "Traceback" not in res.err,
        describe(res),
    )
    ctx.add(
        "15",
        "same folder: a 0-byte `.img03.png.<pid>.<rand>.tmp` left by a killed write",
        "skipped by the image scan (the run above trains)",
        res.rc == 0 and str(stray.name) not in res.err,
        f"exit {res.rc}; n_images "
        + str(
            json.loads((out / "config.json").read_text()).get("n_images")
            if (out / "config.json").is_file()
            else "?"
        ),
    )
    del const

    data = ctx.path("imgs_truncated")
    shutil.copytree(imgs(ctx), data)
    bad = data / "img05.png"
    bad.write_bytes(bad.read_bytes()[:60])
    out = ctx.path("run_failed")
    res = cli(ctx, *pretrain_args("moco", data, out, "--epochs", "1"))
    left = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    ok = one_line_error(res, [bad]) and not left
    ctx.add(
        "15",
        "`pretrain` stopped by a truncated PNG",
        "exit 2 naming it; no config.json / versions.json left in --out",
        ok,
        f"{describe(res)}; left in --out: {', '.join(left) or 'nothing'}",
    )

    sig = signals_run(ctx)
    left = [str(p.relative_to(sig["run"])) for p in sig["planted"] if p.exists()]
    ctx.add(
        "15",
        "0-byte .tmp files of a dead writer (1 h old) in a stopped run, then `--resume`",
        "the next write of each file removes its stale .tmp",
        sig["final"].rc == 0 and not left,
        f"{describe(sig['final'])}; left: {', '.join(left) or 'none'}",
    )

    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    hits = [
        ln.strip()
        for ln in text.splitlines()
        if "thread" in ln.lower()
        and any(w in ln.lower() for w in ("differ", "identical", "same result", "numbers"))
    ]
    ctx.add(
        "15",
        "results differ between 1 and 2 threads",
        "README says so",
        bool(hits),
        _short(hits[0], 100) if hits else "README has no such sentence",
    )


CLASSES: dict[int, Callable[[Ctx], None]] = {
    1: class_1,
    2: class_2,
    3: class_3,
    4: class_4,
    5: class_5,
    6: class_6,
    7: class_7,
    8: class_8,
    9: class_9,
    10: class_10,
    11: class_11,
    12: class_12,
    13: class_13,
    14: class_14,
    15: class_15,
}


def table(rows: Sequence[Row]) -> str:
    """The Markdown table of the checks."""
    lines = ["| class | fault | expected | got | result |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.cls} | {_short(r.fault, 200)} | {_short(r.expected, 200)} | "
            f"{_short(r.got, 300)} | {r.status} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected classes and print the table; 1 when any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated class numbers (default: 1-15)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    chosen = sorted({int(x) for x in args.only.split(",")}) if args.only else sorted(CLASSES)
    unknown = [c for c in chosen if c not in CLASSES]
    if unknown:
        parser.error(f"--only: no class {unknown}; classes are 1-15")
    root = Path(tempfile.mkdtemp(prefix="medfoundry-faults-")).resolve()
    ctx = Ctx(root)
    t0 = time.monotonic()
    try:
        for c in chosen:
            t = time.monotonic()
            try:
                CLASSES[c](ctx)
            except Exception as exc:  # noqa: BLE001 - a broken check is a FAIL row, not a crash
                ctx.add(str(c), "the check itself", "runs", False, f"{type(exc).__name__}: {exc}")
            print(f"class {c}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    finally:
        for m in ctx.cache.get("mounts", []):
            unmount(m)
        if args.keep:
            print(f"kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.monotonic() - t0
    counts = {s: sum(r.status == s for r in ctx.rows) for s in ("PASS", "FAIL", "SKIP")}
    print(f"## medfoundry fault check (issue #14), classes {','.join(map(str, chosen))}\n")
    print(table(ctx.rows))
    print(
        f"\n{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP; "
        f"{ctx.calls} commands, {seconds:.0f} s (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
