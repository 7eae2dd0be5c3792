"""Use a fine-tuned 2D model on radiographs: segmentation masks at each image's own size, or
class probabilities in one CSV.

``medfoundry predict`` (and ``medfoundry.predict``) sends a 2D model (``load_model(...).kind``
``"segmentation2d"`` or ``"classification"``) to ``predict2d``; ``segment_image`` /
``classify_image`` handle one file, ``write_segmentation`` writes its masks.

Rules (inputs, preprocessing, segmentation and classification outputs, errors):
docs/rules/predict2d.md.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from medfoundry.data.image2d import resize_2d, to_channels
from medfoundry.data.normalize import normalize
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.io import ImageData, read_image, supported_extensions
from medfoundry.io.dicom import has_dicom_preamble
from medfoundry.runtime import atomic_save, atomic_write_text
from medfoundry.tasks.predict3d import PredictSummary
from medfoundry.zoo.models import LoadedModel, load_model

__all__ = [
    "PREDICTIONS_CSV",
    "Segmentation2D",
    "classify_image",
    "expand_images",
    "label_map",
    "overlay_image",
    "predict2d",
    "prepare_image",
    "read_2d",
    "segment_image",
    "write_segmentation",
]

PREDICTIONS_CSV = "predictions.csv"
THRESHOLD = 0.5
OVERLAY_ALPHA = 0.45
#: Colours of the structures in overlays (matplotlib's tab10), cycled.
PALETTE = np.array(
    [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ],
    dtype=np.float32,
)


@dataclass
class Segmentation2D:
    """One image's segmentation at its original size: the image as read, probabilities
    (K, H, W) float32 and masks (K, H, W) bool."""

    image: ImageData
    probabilities: np.ndarray
    masks: np.ndarray


# --- inputs ---------------------------------------------------------------------------------
def _suffix_of(name: str) -> str:
    """The longest reader-registry suffix ``name`` ends with ("" when none)."""
    lower = name.lower()
    found = [s for s in supported_extensions() if lower.endswith(s) and len(lower) > len(s)]
    return max(found, key=len) if found else ""


def _stem(path: Path) -> str:
    """Output name of an input: the file name without its image suffix."""
    suffix = _suffix_of(path.name)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _is_image_file(path: Path) -> bool:
    """A visible file with a registered suffix, or a DICOM file (``DICM`` header) without one."""
    if not path.is_file() or path.name.startswith("."):
        return False
    return bool(_suffix_of(path.name)) or has_dicom_preamble(path)


def _images_of(item: str | Path) -> list[Path]:
    """The images an input names: a file as given, a folder as its image files (sorted, not
    recursive)."""
    p = Path(item)
    if not p.exists():
        raise InputError(p, "not found")
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.iterdir() if _is_image_file(f))
    if not files:
        raise InputError(p, "holds no image files (PNG, JPEG, DICOM, ...)")
    return files


def _check_stems(images: Sequence[Path]) -> list[Path]:
    """``images`` without repeats; two images that would write the same outputs are refused."""
    by_stem: dict[str, Path] = {}
    for p in images:
        other = by_stem.setdefault(_stem(p), p)
        if other != p:
            raise InputError(p, f"has the same output name {_stem(p)!r} as {other}; rename one")
    return list(dict.fromkeys(images))


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files named by ``inputs`` (each once); two with one output name are an
    ``InputError``."""
    return _check_stems([p for item in inputs for p in _images_of(item)])


def _collect(
    inputs: str | Path | Sequence[str | Path], summary: PredictSummary, continue_on_error: bool
) -> list[Path]:
    """Expand the inputs; a bad one is recorded in ``summary`` when ``continue_on_error``."""
    images: list[Path] = []
    for item in [inputs] if isinstance(inputs, str | Path) else list(inputs):
        try:
            images += _images_of(item)
        except InputError as e:
            if not continue_on_error:
                raise
            summary.failed.append((str(item), str(e)))
    return _check_stems(images)


# --- one image ------------------------------------------------------------------------------
def read_2d(path: str | Path, model: LoadedModel) -> ImageData:
    """Read a 2D image for ``model``; a volume or non-finite pixels are an ``InputError``."""
    image = read_image(path)
    shape = image.spatial_shape
    if len(shape) != 2:
        raise InputError(
            path,
            f"is a {len(shape)}D volume (shape {shape}); this 2D {model.kind} model takes 2D "
            "images (PNG, JPEG, single-frame DICOM)",
        )
    if not np.isfinite(image.array).all():
        raise InputError(path, "contains NaN or infinite intensities")
    return image


def prepare_image(image: ImageData, model: LoadedModel) -> torch.Tensor:
    """The (C, H, W) float32 tensor the network sees, preprocessed as fine-tuning did."""
    array = to_channels(image.array, model.in_channels, image.source)
    array = resize_2d(array, (model.input_size[0], model.input_size[1]))
    return torch.from_numpy(np.ascontiguousarray(normalize(array, model.preprocessing)))


def _logits(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """The network's float32 output for one (C, H, W) image, batch axis kept, on the CPU."""
    device = next(model.network.parameters()).device
    with torch.no_grad():
        return model.network(x[None].to(device)).float().cpu()


def segment_image(model: LoadedModel, path: str | Path) -> Segmentation2D:
    """Read, preprocess and segment one image; probabilities and masks at its original size."""
    image = read_2d(path, model)
    probs = torch.sigmoid(_logits(model, prepare_image(image, model)))[0]  # (K, S, S)
    probs_hw = np.clip(resize_2d(probs.numpy(), image.spatial_shape), 0.0, 1.0)  # (K, H, W)
    return Segmentation2D(image, probs_hw.astype(np.float32), probs_hw > THRESHOLD)


def classify_image(model: LoadedModel, path: str | Path) -> np.ndarray:
    """Class probabilities (K,) float64 of one image (softmax, as training)."""
    image = read_2d(path, model)
    return _logits(model, prepare_image(image, model)).softmax(-1)[0].double().numpy()


# --- outputs --------------------------------------------------------------------------------
def label_map(masks: np.ndarray) -> np.ndarray:
    """(H, W) labels of (K, H, W) masks: 0 background, k+1 for structure k; later structures
    win where they overlap. uint8 (uint16 beyond 255 structures)."""
    dtype = np.uint8 if masks.shape[0] < 256 else np.uint16
    labels = np.zeros(masks.shape[1:], dtype=dtype)
    for k, mask in enumerate(masks):
        labels[mask] = k + 1
    return labels


def _display(image: ImageData) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255]: the image min-max scaled between its 0.5/99.5 percentiles."""
    array = image.array if image.channels == 3 else image.array.mean(axis=0, keepdims=True)
    lo, hi = np.percentile(array, [0.5, 99.5])
    scaled = np.clip((array - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0) * 255.0
    return np.repeat(scaled, 3 // scaled.shape[0], axis=0).transpose(1, 2, 0).astype(np.float32)


def overlay_image(image: ImageData, masks: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: the image with each mask blended in its ``PALETTE`` colour (later on
    top)."""
    rgb = _display(image)
    for k, mask in enumerate(masks):
        colour = PALETTE[k % len(PALETTE)]
        rgb[mask] = (1 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * colour
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _safe(name: str) -> str:
    """A structure name usable in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "structure"


def _targets(out_dir: Path, stem: str, names: Sequence[str], overlay: bool) -> list[Path]:
    """The files of one input, the label map last (its presence means the input is done)."""
    files = [out_dir / f"{stem}_{_safe(n)}.png" for n in names]
    if overlay:
        files.append(out_dir / f"{stem}_overlay.png")
    return [*files, out_dir / f"{stem}_labels.png"]


def _write_png(path: Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 (H, W) or uint8 (H, W, 3) array as PNG, atomically."""
    atomic_save(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))
    return path


def write_segmentation(
    seg: Segmentation2D, out_dir: str | Path, stem: str, names: Sequence[str], overlay: bool
) -> list[Path]:
    """Write the masks, the overlay (optional) and the label map (last) of one image."""
    targets = _targets(Path(out_dir), stem, names, overlay)
    for path, mask in zip(targets, seg.masks, strict=False):
        _write_png(path, mask.astype(np.uint8) * 255)
    if overlay:
        _write_png(targets[-2], overlay_image(seg.image, seg.masks))
    _write_png(targets[-1], label_map(seg.masks))
    return targets


# --- the runs -------------------------------------------------------------------------------
def _segment_all(
    model: LoadedModel,
    images: Sequence[Path],
    out_dir: Path,
    summary: PredictSummary,
    *,
    overlay: bool,
    overwrite: bool,
    continue_on_error: bool,
    progress: bool,
) -> None:
    """Segment ``images`` into ``out_dir`` (rules: docs/rules/predict2d.md)."""
    for path in tqdm(images, desc="predict", disable=not progress, unit="image"):
        stem = _stem(path)
        targets = _targets(out_dir, stem, model.names, overlay)
        if not overwrite and all(t.exists() for t in targets):
            summary.skipped.append(path)
            continue
        try:
            seg = segment_image(model, path)
        except MedfoundryError as e:
            if not continue_on_error:
                raise
            summary.failed.append((str(path), str(e)))
            continue
        summary.written.append(write_segmentation(seg, out_dir, stem, model.names, overlay)[-1])


def _read_table(path: Path, header: list[str], overwrite: bool) -> dict[str, list[str]]:
    """Rows (input -> row) of an existing predictions CSV with ``header``; none without a file
    (or, with ``overwrite``, when its columns differ)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != header:
        if overwrite:
            return {}
        found = rows[0] if rows else []
        raise MedfoundryError(
            f"{path}: columns {found} differ from this model's {header}; choose another --out "
            "or pass --overwrite to replace the file"
        )
    return {row[0]: row for row in rows[1:] if row}


def _write_table(path: Path, header: list[str], rows: dict[str, list[str]]) -> None:
    """Write the predictions CSV atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows.values())
    atomic_write_text(path, buffer.getvalue())


def _classify_all(
    model: LoadedModel,
    images: Sequence[Path],
    out_dir: Path,
    summary: PredictSummary,
    *,
    overwrite: bool,
    continue_on_error: bool,
    progress: bool,
) -> None:
    """Classify ``images`` into ``<out_dir>/predictions.csv`` (rules: docs/rules/predict2d.md)."""
    table = out_dir / PREDICTIONS_CSV
    header = ["input", "predicted", *[f"p_{c}" for c in model.names]]
    rows = _read_table(table, header, overwrite)
    fresh = overwrite and table.is_file() and not rows  # a file with other columns: replace it
    try:
        for path in tqdm(images, desc="predict", disable=not progress, unit="image"):
            key = str(path)
            if not overwrite and key in rows:
                summary.skipped.append(path)
                continue
            try:
                probs = classify_image(model, path)
            except MedfoundryError as e:
                if not continue_on_error:
                    raise
                summary.failed.append((key, str(e)))
                continue
            predicted = model.names[int(np.argmax(probs))]
            rows[key] = [key, predicted, *[f"{p:.8g}" for p in probs]]
            summary.written.append(path)
    finally:
        if summary.written or fresh:
            _write_table(table, header, rows)
    summary.table = table if table.is_file() else None


def predict2d(
    model: str | Path | LoadedModel,
    inputs: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    overlay: bool = False,
    overwrite: bool = False,
    continue_on_error: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> PredictSummary:
    """Segment or classify every image of ``inputs`` with a fine-tuned 2D model (run folder or
    loaded) into ``out`` (rules: docs/rules/predict2d.md); ``overlay`` applies to segmentation
    only."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(model, LoadedModel):
        model = load_model(model, device=device)
    else:
        model.network.to(device)
    if model.kind not in ("segmentation2d", "classification"):
        raise MedfoundryError(f"{model.folder}: a {model.kind} model, not a 2D model")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    summary = PredictSummary()
    images = _collect(inputs, summary, continue_on_error)
    options = {"overwrite": overwrite, "continue_on_error": continue_on_error, "progress": progress}
    if model.kind == "segmentation2d":
        _segment_all(model, images, out_dir, summary, overlay=overlay, **options)
    else:
        if overlay:
            summary.notes.append("--overlay applies to 2D segmentation models only; ignored")
        _classify_all(model, images, out_dir, summary, **options)
    return summary
