"""PNG, JPEG, BMP and TIFF files via Pillow.

Rules:

- grayscale (L, 1, I;16, I, F) -> (1, H, W); RGB -> (3, H, W). Color is kept: converting to
  gray (or gray to 3 channels) is the caller's decision.
- 16-bit images keep their full range (values up to 65535), float TIFFs keep their values.
- palette ("P") images become RGB, or 1 channel when every used color is gray;
  "LA"/"PA" drop the alpha channel.
- 4-channel images (RGBA, CMYK, ...) are refused: the alpha channel or the K channel cannot
  be dropped without guessing.
- The whole file is decoded (``Image.load()``), so a truncated or corrupt file is an error here
  rather than a half-black image later.
- Spacing is unknown for these formats: (1.0, 1.0) with ``meta["spacing_known"] = False``
  (a DPI header, when present, is recorded in ``meta["dpi"]`` but not trusted as spacing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfoundry.errors import InputError
from medfoundry.io.image import ImageData

RASTER_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})

_FOUR_CHANNEL_MODES = {"RGBA", "RGBa", "RGBX", "CMYK"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
FOUR_CHANNEL_PROBLEM = "4-channel image not supported: expected 1 (grayscale) or 3 (RGB) channels"


def _decode(path: Path) -> tuple[Image.Image, str, int, dict]:
    """Open and fully decode the file; return (image, format, n_frames, info)."""
    try:
        with Image.open(path) as img:
            fmt = img.format or "unknown"
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            img.load()
            info = dict(img.info)
            return img.copy(), fmt, n_frames, info
    except UnidentifiedImageError as e:
        raise InputError(path, "not a readable image file (Pillow cannot identify it)") from e
    except Image.DecompressionBombError as e:
        raise InputError(path, f"image too large to decode safely: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise InputError(path, f"corrupt or truncated image file: {e}") from e
    except Exception as e:  # Pillow plugins raise assorted errors on broken files
        raise InputError(path, f"cannot decode image file: {type(e).__name__}: {e}") from e


def _to_array(img: Image.Image, path: Path) -> tuple[np.ndarray, dict]:
    """Return a channel-first float32 array and what was done to get it."""
    mode = img.mode
    meta: dict = {}
    if mode in _FOUR_CHANNEL_MODES:
        raise InputError(path, f"{FOUR_CHANNEL_PROBLEM} (mode {mode})")
    if mode in ("LA", "La"):
        img = img.getchannel("L")
        meta["alpha_dropped"] = True
        mode = "L"
    if mode in ("P", "PA"):
        meta["alpha_dropped"] = mode == "PA"
        rgb = np.asarray(img.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            meta["converted"] = f"{mode}->L (palette holds only gray values)"
            return rgb[None, :, :, 0].astype(np.float32), meta | {"bit_depth": 8}
        meta["converted"] = f"{mode}->RGB"
        return np.moveaxis(rgb, -1, 0).astype(np.float32), meta | {"bit_depth": 8}
    if mode == "1":
        img = img.convert("L")
        meta["converted"] = "1->L (0/255)"
        mode = "L"
    if mode == "YCbCr":
        img = img.convert("RGB")
        meta["converted"] = "YCbCr->RGB"
        mode = "RGB"

    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[None].astype(np.float32), meta | {"bit_depth": 8}
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
        return np.moveaxis(arr, -1, 0).astype(np.float32), meta | {"bit_depth": 8}
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.float32)
        return arr[None], meta | {"bit_depth": 16}
    if mode in ("I", "I;32", "I;32S"):
        arr = np.asarray(img).astype(np.float32)
        return arr[None], meta | {"bit_depth": 32}
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return arr[None], meta | {"bit_depth": 32, "float": True}
    raise InputError(
        path, f"unsupported image mode {mode!r}: expected grayscale (1 channel) or RGB (3 channels)"
    )


def read_raster(path: str | Path) -> ImageData:
    """Read a PNG/JPEG/BMP/TIFF file into an ``ImageData`` (see the module docstring)."""
    p = Path(path)
    img, fmt, n_frames, info = _decode(p)
    if n_frames > 1:
        raise InputError(p, f"multi-frame {fmt} ({n_frames} frames/pages) is not a single 2D image")
    original_mode = img.mode
    array, meta = _to_array(img, p)
    if array.ndim != 3 or array.shape[0] not in (1, 3) or min(array.shape[1:]) < 1:
        raise InputError(p, f"decoded to an unexpected array shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise InputError(p, "contains NaN or infinite pixel values")

    bit_depth = meta.pop("bit_depth")
    is_float = meta.pop("float", False)
    if is_float:
        value_range = None
    elif bit_depth == 32:
        value_range = None
    else:
        value_range = (0.0, float(2**bit_depth - 1))
    meta = {
        "format": fmt,
        "mode": original_mode,
        "bit_depth": bit_depth,
        "value_range": value_range,
        "spacing_known": False,
        **meta,
    }
    if "dpi" in info:
        try:
            meta["dpi"] = tuple(float(v) for v in info["dpi"])
        except (TypeError, ValueError):
            pass
    return ImageData(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=(1.0, 1.0),
        modality="unknown",
        source=str(path),
        meta=meta,
    )
