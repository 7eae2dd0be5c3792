"""Segment whole scans with a fine-tuned 3D model and write label maps on each scan's own grid.

``medfoundry predict`` (and ``medfoundry.predict``) takes the run folder of
``medfoundry finetune --task segmentation`` on 3D data (its ``checkpoint/``: ``model.safetensors``
+ ``medfoundry.json``). Rules:

- **Model**: rebuilt from ``medfoundry.json`` (``network``, ``network_options``,
  ``num_classes``; ``medfoundry.zoo.models.load_segmenter3d``, re-exported here) and loaded strictly: every tensor of the whole network, head included, or a
  ``CheckpointError`` naming the folder. A checkpoint that is not a 3D segmentation model (a
  pretrained backbone, a 2D or classification model) is a ``CheckpointError`` too.
- **Preprocessing**: the checkpoint's store settings (``normalization`` = the store's
  ``preprocessing``) applied by ``medfoundry.data.store.preprocess`` exactly as
  ``medfoundry prepare`` did for training (foreground box from tissue only: there is no label).
- **Inference**: the Gaussian sliding window of ``medfoundry.train.inference3d`` with the
  checkpoint's roi (``input_size``) and ``sliding_window`` settings.
- **Back to the scan**: probabilities are un-cropped (background outside the box), resampled
  trilinearly to the scan's grid, argmax-ed and flipped/transposed back to the file's voxel
  order (``resample="nearest"``: argmax first, labels by nearest neighbour), so
  ``<out>/<stem>.nii.gz`` (uint8 labels) has the input's shape and affine; with
  ``probabilities``, ``<stem>_probabilities.nii.gz`` holds (i, j, k, K) float32 softmax values.
- **Inputs**: NIfTI / NRRD / MHA files, folders of such files (not recursive), or a DICOM series
  folder (stem: the folder's name). Two inputs with the same stem are refused up front.
- **Outputs** are written atomically; an input whose outputs exist is skipped (and counted)
  unless ``overwrite``. A bad input (unreadable, 2D, a single slice, constant) stops the run
  with an ``InputError`` naming it, unless ``continue_on_error``: then the rest is done and the
  failures are returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medfoundry.data.store.preprocess import (
    RESAMPLE_MODES,
    GridInverse,
    VolumeSettings,
    preprocess_volume,
    to_original_grid,
)
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.io import ImageData, read_image, write_nifti
from medfoundry.io.dicom_series import dicom_files_in
from medfoundry.io.itk import ITK_EXTENSIONS
from medfoundry.io.nifti import NIFTI_EXTENSIONS
from medfoundry.train.inference3d import predict_volume
from medfoundry.zoo.models import TrainedSegmenter3D, load_segmenter3d

__all__ = [
    "PredictSummary",
    "expand_inputs",
    "TrainedSegmenter3D",
    "VolumePrediction",
    "load_segmenter3d",
    "predict",
    "predict_volume_file",
    "preprocess_for_model",
    "to_original_grid",
    "write_prediction",
]

#: Suffixes of the volume files taken from an input folder (a DICOM folder is one series).
VOLUME_SUFFIXES = tuple(sorted(NIFTI_EXTENSIONS | ITK_EXTENSIONS, key=len, reverse=True))
PROBABILITIES_SUFFIX = "_probabilities"


@dataclass
class VolumePrediction:
    """One scan's prediction on its own grid: labels (i, j, k) uint8, probabilities
    (i, j, k, K) float32 or None, the (i, j, k, 1) -> LPS mm affine, and the NIfTI codes."""

    source: str
    labels: np.ndarray
    probabilities: np.ndarray | None
    affine: np.ndarray
    sform_code: int = 1
    qform_code: int = 1


@dataclass
class PredictSummary:
    """What ``predict`` did: written outputs (per input: its label map; for a classifier the
    input, whose row is in ``table``), skipped inputs, failures (path, message), the
    classifier's CSV, and notes (options that did not apply to the model)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    table: Path | None = None
    notes: list[str] = field(default_factory=list)


def preprocess_for_model(
    image: ImageData, settings: VolumeSettings | dict[str, Any]
) -> tuple[np.ndarray, GridInverse]:
    """The (D, H, W) float32 volume a 3D model sees (the store's preprocessing, foreground from
    tissue only) and the way back to ``image``'s grid."""
    if not isinstance(settings, VolumeSettings):
        settings = VolumeSettings.from_preprocessing(settings)
    shape = image.spatial_shape
    if len(shape) != 3 or min(shape) < 2:
        kind = "a 2D image" if len(shape) == 2 or min(shape) < 2 else f"{len(shape)}D data"
        raise InputError(image.source, f"is {kind} (shape {shape}); this 3D model segments volumes")
    done = preprocess_volume(image, settings)
    if done is None:
        raise InputError(image.source, "is a constant volume: nothing to segment")
    return done.array, done.inverse


def predict_volume_file(
    network: nn.Module,
    settings: VolumeSettings | dict[str, Any],
    path: str | Path,
    roi: Sequence[int],
    *,
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    size_multiple: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    probabilities: bool = False,
    resample: str = "probabilities",
) -> VolumePrediction:
    """Read, preprocess and segment one scan (sliding window); the label map (and optionally
    the probabilities) on the scan's own grid, with its affine."""
    image = read_image(path)
    volume, inverse = preprocess_for_model(image, settings)
    probs = predict_volume(
        network,
        volume[None],  # (1, d, h, w)
        roi,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        mode=mode,
        device=device,
        amp=amp,
        size_multiple=size_multiple,
    )  # (K, d, h, w)
    labels, probs_ijk = to_original_grid(probs.numpy(), inverse, resample, probabilities)
    meta = image.meta
    codes = (int(meta.get("sform_code") or 1), int(meta.get("qform_code") or 1))
    return VolumePrediction(str(path), labels, probs_ijk, inverse.original_affine, *codes)


def write_prediction(prediction: VolumePrediction, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``<stem>.nii.gz`` (and ``<stem>_probabilities.nii.gz``) atomically; the label map
    last, so its presence means the input is done."""
    out = Path(out_dir)
    written = []
    codes = {"sform_code": prediction.sform_code, "qform_code": prediction.qform_code}
    if prediction.probabilities is not None:
        path = out / f"{stem}{PROBABILITIES_SUFFIX}.nii.gz"
        written.append(write_nifti(path, prediction.probabilities, prediction.affine, **codes))
    labels = out / f"{stem}.nii.gz"
    written.append(
        write_nifti(labels, prediction.labels.astype(np.uint8), prediction.affine, **codes)
    )
    return written


def _stem(path: Path) -> str:
    """Output name of an input: the file name without its volume suffix; a folder's name."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() else name


def _scans_of(item: str | Path) -> list[Path]:
    """The scans an input names: a file as given, a DICOM series folder as one scan, any other
    folder as its volume files (sorted, not recursive)."""
    p = Path(item)
    if not p.exists():
        raise InputError(p, "not found")
    if not p.is_dir() or dicom_files_in(p):
        return [p]
    files = sorted(
        f
        for f in p.iterdir()
        if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(VOLUME_SUFFIXES)
    )
    if not files:
        raise InputError(p, "holds no NIfTI/NRRD/MHA volume and no DICOM series")
    return files


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The scans named by ``inputs`` (``_scans_of`` each); two with one output name are an
    ``InputError``."""
    scans = [p for item in inputs for p in _scans_of(item)]
    _check_stems(scans)
    return scans


def _check_stems(scans: Sequence[Path]) -> None:
    """Refuse two scans that would write the same output file."""
    by_stem: dict[str, Path] = {}
    for p in scans:
        other = by_stem.setdefault(_stem(p), p)
        if other != p:
            raise InputError(p, f"has the same output name {_stem(p)!r} as {other}; rename one")


def predict(
    model: str | Path | TrainedSegmenter3D,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    probabilities: bool = False,
    overwrite: bool = False,
    continue_on_error: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
    resample: str = "probabilities",
) -> PredictSummary:
    """Segment every scan of ``inputs`` with a fine-tuned 3D model (run folder or loaded) and
    write ``<out>/<stem>.nii.gz`` on each scan's grid (rules: module doc)."""
    if resample not in RESAMPLE_MODES:
        raise MedfoundryError(f"resample {resample!r}: choose from {list(RESAMPLE_MODES)}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(model, TrainedSegmenter3D):
        model = load_segmenter3d(model, device=device)
    else:
        model.network.to(device)
    amp = model.amp and torch.device(device).type == "cuda"
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    summary = PredictSummary()
    scans: list[Path] = []
    for item in [inputs] if isinstance(inputs, str | Path) else list(inputs):
        try:
            scans += _scans_of(item)
        except InputError as e:
            if not continue_on_error:
                raise
            summary.failed.append((str(item), str(e)))
    _check_stems(scans)
    for scan in tqdm(scans, desc="predict", disable=not progress, unit="scan"):
        stem = _stem(scan)
        targets = [out_dir / f"{stem}.nii.gz"]
        if probabilities:
            targets.append(out_dir / f"{stem}{PROBABILITIES_SUFFIX}.nii.gz")
        if not overwrite and all(t.exists() for t in targets):
            summary.skipped.append(scan)
            continue
        try:
            prediction = predict_volume_file(
                model.network,
                model.settings,
                scan,
                model.roi,
                **model.sliding_window,
                size_multiple=model.size_multiple,
                device=device,
                amp=amp,
                probabilities=probabilities,
                resample=resample,
            )
        except MedfoundryError as e:
            if not continue_on_error:
                raise
            summary.failed.append((str(scan), str(e)))
            continue
        summary.written.append(write_prediction(prediction, out_dir, stem)[-1])
    return summary
