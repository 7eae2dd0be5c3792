"""Single-frame DICOM images via pydicom.

What the reader applies, in this order:

1. Decoding (``ds.pixel_array``; compressed transfer syntaxes need a pydicom decoder plugin,
   Pillow covers JPEG and JPEG 2000). YBR color data comes back as RGB.
2. Modality LUT: the Modality LUT Sequence, or Rescale Slope/Intercept. After this step the
   values are in the modality's physical unit; for CT that is Hounsfield units.
3. VOI LUT (VOI LUT Sequence, else Window Center/Width, first view), **only for projection
   radiographs** (Modality CR/DX/XR/..., reported as ``"XR"``, and mammography ``"MG"``).
   A radiograph's VOI is part of how the image is meant to look (detector raw values are often
   unusable without it). CT, MR and other cross-sectional modalities are NOT windowed: a CT slice
   keeps its HU values (air about -1000, soft tissue 0..100, bone several hundred) and choosing a
   window is a later, explicit decision of the caller.
4. MONOCHROME1 images (where low values are displayed white) are inverted so that dense
   structures (bone) are always bright: ``out = lo + hi - value`` over the nominal output range
   (the window's output range when a VOI was applied, else the stored range mapped through the
   modality LUT).

Spacing comes from Pixel Spacing, else Imager Pixel Spacing (detector plane, not corrected for
magnification), else (1.0, 1.0) with ``meta["spacing_known"] = False``. ``meta`` records every
step that was applied (``modality_lut``, ``voi``, ``inverted``, ``value_range``, ...).

Multi-frame files (NumberOfFrames > 1), files without pixel data, and CT images without
Rescale Slope/Intercept (or a Modality LUT Sequence; the CT Image module requires them, and
without them the values are not Hounsfield units) are refused with an ``InputError``. A series
of single-slice files is read as a volume by ``medfoundry.io.dicom_series``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medfoundry.errors import InputError
from medfoundry.io.image import ImageData

DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})

#: DICOM Modality values that are projection radiographs, reported as "XR".
RADIOGRAPH_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "XR", "DR", "RG", "PX"})
#: Output modalities for which the file's VOI LUT / window is applied.
VOI_MODALITIES: frozenset[str] = frozenset({"XR", "MG"})

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_dicom_preamble(path: str | Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def normalize_modality(value: Any) -> str:
    """Map the DICOM Modality tag to the toolkit's names (CR/DX/... -> "XR")."""
    text = str(value or "").strip().upper()
    if not text:
        return "unknown"
    return "XR" if text in RADIOGRAPH_MODALITIES else text


def _read_dataset(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    try:
        if path.stat().st_size == 0:
            raise InputError(path, "empty file (0 bytes): a damaged or incompletely copied DICOM")
    except OSError as e:
        raise InputError(path, f"cannot open file: {e.strerror or e}") from e
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        if path.suffix.lower() not in DICOM_EXTENSIONS:
            raise InputError(path, f"not a DICOM file: {e}") from e
        first_error = e
    except Exception as e:
        raise InputError(path, f"corrupt or truncated DICOM file: {type(e).__name__}: {e}") from e

    # A .dcm file without the 'DICM' header (old ACR-NEMA style): try a forced read.
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        has_pixels = stop_before_pixels or any(k in ds for k in _PIXEL_KEYWORDS)
        if not has_pixels or "Rows" not in ds:
            raise ValueError("no image elements found")
    except Exception as e:
        raise InputError(path, f"not a DICOM file: {first_error}") from e
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if little is False:
            uid = ExplicitVRBigEndian
        else:
            uid = ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = uid
    return ds


def _stored_range(ds: pydicom.Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


def _modality_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """Nominal range after the modality LUT (same convention as pydicom's windowing)."""
    lo, hi = _stored_range(ds)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        a, b = lo * slope + intercept, hi * slope + intercept
        return min(a, b), max(a, b)
    return lo, hi


def _spacing(ds: pydicom.Dataset) -> tuple[tuple[float, float], str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        if value is None:
            continue
        try:
            values = [float(v) for v in (value if isinstance(value, list | tuple) else list(value))]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values):
            return (values[0], values[1]), keyword
    return (1.0, 1.0), "unknown"


def _as_number(value: Any) -> float | list[float] | None:
    """A DS/IS value (single or multi-valued) as float(s), for ``meta``."""
    try:
        if isinstance(value, str | bytes | int | float):
            return float(value)
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _lut_table(item: pydicom.Dataset, ds: pydicom.Dataset) -> tuple[np.ndarray, int]:
    """The LUT entries and the first mapped value of a VOI LUT Sequence item."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    n = descriptor[0] or 2**16
    first = descriptor[1]
    if int(ds.get("PixelRepresentation") or 0) == 1 and first > 2**15 - 1:
        first -= 2**16  # first mapped value is SS for signed pixel data
    data = item.LUTData
    if isinstance(data, bytes):
        try:
            little = bool(ds.file_meta.TransferSyntaxUID.is_little_endian)
        except (AttributeError, ValueError):
            little = True
        if len(data) >= 2 * n:
            table = np.frombuffer(data, dtype="<u2" if little else ">u2", count=n)
        else:  # 8-bit entries packed into OW
            table = np.frombuffer(data, dtype=np.uint8, count=min(n, len(data)))
    else:
        table = np.asarray(data if isinstance(data, list | tuple) else list(data), dtype=np.int64)
    if table.size == 0:
        raise ValueError("empty VOI LUT")
    return table.astype(np.float64), first


def _apply_voi(
    arr: np.ndarray, ds: pydicom.Dataset, meta: dict
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the VOI LUT (preferred) or the window; return the array and its output range."""
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            table, first = _lut_table(item, ds)
            # Own lookup instead of pydicom's apply_voi: pydicom 3.0.2 builds the index array
            # in the LUT's dtype, so 8-bit LUTs with more than 256 entries wrap around.
            index = np.clip(np.rint(np.asarray(arr, dtype=np.float64)) - first, 0, len(table) - 1)
            meta["voi"] = "lut"
            out = table[index.astype(np.int64)].astype(np.float64)
            return out, (float(table.min()), float(table.max()))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        if ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
            meta["voi"] = "none"
            meta["voi_skipped"] = "window given for a non-monochrome image"
            return arr, None
        try:
            out = apply_windowing(arr, ds)
        except (ValueError, TypeError, IndexError) as e:
            meta["voi"] = "none"
            meta["voi_skipped"] = f"invalid window: {e}"
            return arr, None
        meta["voi"] = "window"
        meta["window_center"] = _as_number(ds.WindowCenter)
        meta["window_width"] = _as_number(ds.WindowWidth)
        meta["voi_lut_function"] = str(ds.get("VOILUTFunction") or "LINEAR")
        return out, _modality_range(ds)
    meta["voi"] = "none"
    return arr, None


def read_dicom_dataset(path: str | Path, stop_before_pixels: bool = False) -> pydicom.Dataset:
    """The pydicom dataset of a file (tags only when ``stop_before_pixels``), or an InputError."""
    return _read_dataset(Path(path), stop_before_pixels=stop_before_pixels)


def read_dicom(path: str | Path) -> ImageData:
    """Read a single-frame DICOM image into an ``ImageData`` (see the module docstring)."""
    return dataset_to_image(_read_dataset(Path(path)), path)


def _check_ct_rescale(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse a CT image without a modality LUT: its values could not be trusted as HU."""
    if ds.get("ModalityLUTSequence"):
        return
    missing = [k for k in ("RescaleSlope", "RescaleIntercept") if k not in ds]
    if missing:
        raise InputError(
            path,
            f"CT DICOM without {' and '.join(missing)}: cannot convert to Hounsfield units "
            "(the CT Image module requires both tags)",
        )


def dataset_to_image(ds: pydicom.Dataset, path: str | Path) -> ImageData:
    """Decode an already-read single-frame DICOM dataset (``path`` is for messages and meta)."""
    p = Path(path)
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        sop = ds.get("SOPClassUID")
        kind = f" ({getattr(sop, 'name', sop)})" if sop else ""
        raise InputError(p, f"DICOM file has no pixel data{kind} (not an image, or truncated)")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise InputError(
            p,
            f"multi-frame DICOM ({frames} frames) is not a 2D image; "
            "expected a single-frame image (read it as a volume or split the frames)",
        )

    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if samples == 4 or photometric in ("ARGB", "CMYK"):
        raise InputError(
            p, "4-channel image not supported: expected 1 (grayscale) or 3 (RGB) channels"
        )

    try:
        raw = ds.pixel_array
    except Exception as e:
        raise InputError(p, f"cannot decode DICOM pixel data: {type(e).__name__}: {e}") from e

    modality_tag = str(ds.get("Modality") or "").strip().upper()
    modality = normalize_modality(modality_tag)
    is_float = any(k in ds for k in _PIXEL_KEYWORDS[1:])
    if modality == "CT" and not is_float:
        _check_ct_rescale(ds, p)
    meta: dict[str, Any] = {
        "format": "DICOM",
        "modality_tag": modality_tag or None,
        "photometric_interpretation": photometric,
        "bits_allocated": int(ds.get("BitsAllocated") or 0) or None,
        "bits_stored": int(ds.get("BitsStored") or 0) or None,
        "pixel_representation": int(ds.get("PixelRepresentation") or 0),
        "transfer_syntax": str(getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "")),
        "modality_lut": "none",
        "voi": "none",
        "inverted": False,
    }
    value_range: tuple[float, float] | None = None

    try:
        if samples == 1 and photometric != "PALETTE COLOR":
            if raw.ndim != 2:
                raise InputError(
                    p, f"expected a single 2D frame, got pixel data of shape {raw.shape}"
                )
            arr = raw
            if not is_float:
                if ds.get("ModalityLUTSequence"):
                    arr = apply_modality_lut(arr, ds)
                    meta["modality_lut"] = "lut"
                elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
                    arr = apply_modality_lut(arr, ds)
                    meta["modality_lut"] = "rescale"
                    meta["rescale_slope"] = float(ds.RescaleSlope)
                    meta["rescale_intercept"] = float(ds.RescaleIntercept)
                value_range = _modality_range(ds)
            if modality in VOI_MODALITIES and not is_float:
                arr, voi_range = _apply_voi(arr, ds, meta)
                if voi_range is not None:
                    value_range = (min(voi_range), max(voi_range))
            elif ds.get("VOILUTSequence") or "WindowCenter" in ds:
                meta["voi_available"] = True  # present in the file, deliberately not applied
            arr = np.asarray(arr, dtype=np.float64)
            if photometric == "MONOCHROME1":
                if value_range is not None:
                    lo, hi = value_range
                else:
                    finite = arr[np.isfinite(arr)]
                    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0, 0)
                arr = (lo + hi) - arr
                meta["inverted"] = True
            array = arr[None]
        else:
            if photometric == "PALETTE COLOR":
                rgb = apply_color_lut(raw, ds)
                meta["converted"] = "PALETTE COLOR->RGB"
            else:
                rgb = raw
            if rgb.ndim != 3 or rgb.shape[-1] != 3:
                raise InputError(
                    p, f"expected a single RGB frame, got pixel data of shape {rgb.shape}"
                )
            if photometric == "PALETTE COLOR" or not np.issubdtype(rgb.dtype, np.integer):
                top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else None
            else:
                top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
            value_range = None if top is None else (0.0, top)
            array = np.moveaxis(np.asarray(rgb, dtype=np.float64), -1, 0)
    except InputError:
        raise
    except Exception as e:
        raise InputError(
            p, f"cannot apply the DICOM LUTs to the pixel data: {type(e).__name__}: {e}"
        ) from e

    if not np.isfinite(array).all():
        raise InputError(p, "contains NaN or infinite pixel values")

    spacing, spacing_source = _spacing(ds)
    meta["value_range"] = value_range
    meta["spacing_source"] = spacing_source
    meta["spacing_known"] = spacing_source != "unknown"
    return ImageData(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=spacing,
        modality=modality,
        source=str(path),
        meta=meta,
    )
