"""Sizes and checksums of a 3D store's ``.npy`` files: recorded at write time, checked before use.

``prepare_store`` records, per case, ``file_checks``: ``{relative path: {"bytes": size,
"blake2b": digest}}``. The digest is BLAKE2b (8-byte digest, ``hashlib``) of the size, the first
and the last MiB of the file (``CHECK_SPAN``): a fixed cost of at most 2 MiB read per file,
whatever the volume's size, that still covers the ``.npy`` header (shape, dtype), the start of
the voxels and the end, where a truncated or zero-filled copy differs; BLAKE2b rather than CRC32
because it is as fast here, in the standard library, and has no easy collisions. A damage in
the middle of a large file is not seen (a full hash would read the whole store at every reuse).

``check_store_files`` is run by ``open_store`` (sizes only: one ``stat`` per file) and by
``prepare_store`` before it reuses a store (sizes and checksums). It refuses, with one line
naming the file, a missing file, a file of another size or, with ``checksum``, content that
differs. A store written before ``file_checks`` existed has no recorded size: its image and
label files are checked against the size their ``.npy`` header and the record's shape and dtype
imply; a file whose size cannot be derived so is refused with a message to rebuild the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import InputError

#: Bytes hashed at each end of a file.
CHECK_SPAN = 1 << 20
FILE_KEYS = ("image_file", "label_file", "foreground_file")
_REBUILD = "rebuild the store: medfoundry prepare --overwrite"


def file_digest(path: Path, size: int) -> str:
    """BLAKE2b (hex) of ``size``, the first and the last ``CHECK_SPAN`` bytes of ``path``."""
    digest = hashlib.blake2b(str(size).encode(), digest_size=8)
    with open(path, "rb") as f:
        digest.update(f.read(CHECK_SPAN))
        if size > CHECK_SPAN:
            f.seek(max(CHECK_SPAN, size - CHECK_SPAN))
            digest.update(f.read(CHECK_SPAN))
    return digest.hexdigest()


def file_check(path: Path) -> dict[str, Any]:
    """The record of one written file: its size in bytes and its ``file_digest``."""
    size = path.stat().st_size
    return {"bytes": size, "blake2b": file_digest(path, size)}


def _npy_size(path: Path, shape: Sequence[int] | None, dtype: str | None) -> int:
    """The size the ``.npy`` at ``path`` must have: its header's length plus shape x dtype
    (the record's ``shape`` and ``dtype`` when given, which the header must match)."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0
            header = (read if major == 1 else np.lib.format.read_array_header_2_0)(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(path, f"not a readable .npy (damaged: {e}); {_REBUILD}") from None
    file_shape, _, file_dtype = header
    if shape is not None and tuple(file_shape) != tuple(shape):
        raise InputError(path, f"holds shape {file_shape}, store.json says {shape}; {_REBUILD}")
    if dtype is not None and np.dtype(file_dtype) != np.dtype(dtype):
        raise InputError(path, f"holds {file_dtype}, store.json says {dtype}; {_REBUILD}")
    return offset + int(np.prod(file_shape, dtype=np.int64)) * np.dtype(file_dtype).itemsize


def _legacy_size(path: Path, key: str, record: dict[str, Any], settings: dict[str, Any]) -> int:
    """A file's size derived from store.json (a store written before ``file_checks``)."""
    if key == "foreground_file":
        return _npy_size(path, None, None)
    dtype = settings.get("image_dtype" if key == "image_file" else "label_dtype")
    if record.get("shape") is None or dtype is None:
        raise InputError(
            path, f"store.json records neither its size nor its shape and dtype; {_REBUILD}"
        )
    return _npy_size(path, record["shape"], dtype)


def check_case_files(
    root: Path, record: dict[str, Any], settings: dict[str, Any], checksum: bool = False
) -> None:
    """Refuse a missing, resized or (``checksum``) changed file of one case record."""
    checks = record.get("file_checks") or {}
    for key in FILE_KEYS:
        name = record.get(key)
        if not name:
            continue
        path = root / name
        try:
            size = path.stat().st_size
        except OSError:
            raise InputError(path, f"missing from the 3D store {root}; {_REBUILD}") from None
        check = checks.get(name)
        expected = int(check["bytes"]) if check else _legacy_size(path, key, record, settings)
        if size != expected:
            raise InputError(
                path, f"is {size} bytes, expected {expected} (truncated or damaged); {_REBUILD}"
            )
        if checksum and check and file_digest(path, size) != check.get("blake2b"):
            raise InputError(path, f"content differs from its checksum in store.json; {_REBUILD}")


def check_store_files(root: str | Path, info: dict[str, Any], checksum: bool = False) -> None:
    """``check_case_files`` for every case of the store ``info`` (store.json) at ``root``."""
    settings = info.get("settings") or {}
    for record in info.get("cases") or []:
        check_case_files(Path(root), record, settings, checksum)
