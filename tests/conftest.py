"""Shared test fixtures: tiny configs and the optional real-data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests use tiny tensors: one intra-op thread is faster than two, and keeps the suite from
# slowing down tenfold when other jobs share the cores (OpenMP threads spin-wait).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data folder beside the repository; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("real data folder ../shared/data not present")
    return SHARED_DATA


@pytest.fixture
def xray_folder(tmp_path: Path) -> Path:
    """Twelve synthetic 8-bit 'radiographs' (64²) with a bright blob at varying places."""
    folder = tmp_path / "xrays"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(12):
        cy, cx = rng.integers(16, 48, size=2)
        img = (
            60
            + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 80.0)
            + rng.normal(0, 8, (64, 64))
        )
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


@pytest.fixture
def tiny_pretrain_config():
    """Factory of Adam/MoCo configs small enough for a test."""
    return _tiny_pretrain_config


# `--set` pairs of an MAE run small enough for a test (a Swin of embed dim 8 at 64²)
TINY_MAE = [
    "backbone={name: swin, in_channels: 1, embed_dim: 8, depths: [1, 1, 1, 1], "
    "num_heads: [1, 1, 2, 2], window_size: 2, patch_size: 4, drop_path: 0.0}",
    "data={load_size: 64, val_fraction: 0.2, num_workers: 0}",
    "epochs=2",
    "optim.batch_size=4",
    "optim.warmup_epochs=1",
    "trainer={accelerator: cpu, devices: 1}",
]


def _tiny_pretrain_config(method: str = "adam") -> dict:
    """An Adam/MoCo/MAE config small enough for a test (seconds on 2 cores)."""
    from medfoundry.config import apply_overrides, load_config

    if method == "mae":
        return apply_overrides(load_config("mae"), TINY_MAE)
    return apply_overrides(
        load_config(method),
        [
            "backbone={name: resnet10, width: 0.125, in_channels: 1}",
            "data={load_size: 64, val_fraction: 0.2, num_workers: 0}",
            "views={out_size: 32}",
            "epochs=1",
            "moco.proj_hidden=32",
            "moco.proj_dim=16",
            "moco.queue_size=64",
            "optim.batch_size=4",
            "trainer={accelerator: cpu, devices: 1}",
        ]
        + (["levels=[0, 2]"] if method == "adam" else []),
    )


# flags of a `medfoundry pretrain` run small enough for a test
TINY_PRETRAIN_FLAGS = (
    "--backbone resnet10 --width 0.125 --load-size 64 --input-size 32 --epochs 1 "
    "--batch-size 4 --queue-size 64 --accelerator cpu --no-progress"
).split()


def _tiny_pretrain_args(method: str, data: Path, out: Path, *extra: str) -> list[str]:
    """Argv of a tiny CPU `pretrain` of ``method``; ``extra`` comes last, so it overrides."""
    args = ["pretrain", "--method", method, "--data", str(data), "--out", str(out)]
    return [*args, *TINY_PRETRAIN_FLAGS, *extra]


@pytest.fixture
def tiny_pretrain_args():
    """Factory `(method, data, out, *extra) -> argv` of tiny CPU `medfoundry pretrain` runs."""
    return _tiny_pretrain_args


def _blob_volume_store(
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[int, int, int],
    centre_high: float,
    spread: float,
) -> Path:
    """A 3D store of ten unlabeled ``shape`` (z, y, x) volumes: a Gaussian blob on noise."""
    import nibabel as nib

    from medfoundry.data.store.build import prepare_store

    root = tmp_path_factory.mktemp("vols")
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for i in range(10):
        c = rng.uniform(8, centre_high, size=3)
        vol = 100 * np.exp(-((zz - c[0] / 2) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / spread)
        vol = (vol + 20 + rng.normal(0, 3, vol.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"case{i}.nii.gz")
    store = tmp_path_factory.mktemp("store") / "s"
    prepare_store(root, store, modality="MR", crop_foreground=False, progress=False)
    return store


@pytest.fixture(scope="session")
def make_blob_volume_store():
    """Factory `(tmp_path_factory, shape, centre_high, spread) -> store` of blob volumes."""
    return _blob_volume_store


JSRT_NAMES = ["heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def _make_jsrt_like(root: Path, ids: list[str], size: int = 64, seed: int = 0) -> Path:
    """Chest-X-ray-like toys: dark lungs, a bright disk heart, two thin clavicle bars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    s = size / 64
    for name in ids:
        masks = {n: np.zeros((size, size), bool) for n in JSRT_NAMES}
        dy, dx = rng.integers(-3, 4, 2) * s
        masks["right_lung"] = ((yy - 32 * s - dy) / (20 * s)) ** 2 + (
            (xx - 18 * s - dx) / (9 * s)
        ) ** 2 < 1
        masks["left_lung"] = ((yy - 32 * s - dy) / (20 * s)) ** 2 + (
            (xx - 46 * s - dx) / (9 * s)
        ) ** 2 < 1
        r = rng.uniform(8, 11) * s
        masks["heart"] = (yy - 42 * s - dy) ** 2 + (xx - 34 * s - dx) ** 2 < r**2
        row = int(10 * s + dy)
        masks["right_clavicle"][row : row + int(3 * s), int(8 * s) : int(28 * s)] = True
        masks["left_clavicle"][row : row + int(3 * s), int(36 * s) : int(56 * s)] = True
        img = np.full((size, size), 150.0)
        img[masks["left_lung"] | masks["right_lung"]] = 70
        img[masks["heart"]] = 200
        img[masks["left_clavicle"] | masks["right_clavicle"]] = 235
        img += rng.normal(0, 12, img.shape)
        _png(root / "images" / f"{name}.png", img)
        for n, m in masks.items():
            _png(root / "masks" / n / f"{name}.png", m.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="session")
def make_jsrt_like():
    """Factory `(root, ids, size=64, seed=0) -> root` of toy JSRT-layout folders."""
    return _make_jsrt_like


def _write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.8),
    modality: str = "CT",
    series_uid: str | None = None,
    origin: tuple[float, float, float] = (-50.0, -60.0, 100.0),
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    rescale: bool = True,
    positions: list[float] | None = None,
    prefix: str = "",
) -> list[Path]:
    """Write ``volume`` (slices, rows, cols; HU for CT) as single-slice DICOM files.

    Files are named in a shuffled order (and InstanceNumber shuffled) so readers must sort by
    ImagePositionPatient. CT values are stored as HU + 1024 with Rescale Intercept -1024
    (``rescale=False`` stores them without the rescale tags). ``positions`` overrides the
    offsets along the slice normal (mm); default ``k * spacing[0]``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    offsets = positions if positions is not None else [k * spacing[0] for k in range(len(volume))]
    order = np.random.default_rng(1).permutation(len(volume))
    paths = []
    for k, (slice_hu, offset) in enumerate(zip(volume, offsets, strict=True)):
        stored = np.asarray(slice_hu) + (1024 if modality == "CT" and rescale else 0)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientID = "test"
        ds.InstanceNumber = int(order[k]) + 1
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + offset * normal]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        if modality == "CT" and rescale:
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = np.ascontiguousarray(stored, dtype=np.int16).tobytes()
        path = folder / f"{prefix}{order[k]:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def write_dicom_series():
    """Factory ``(folder, volume, **options) -> paths`` of single-slice DICOM series."""
    return _write_dicom_series
