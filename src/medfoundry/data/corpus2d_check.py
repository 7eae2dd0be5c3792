"""Completeness of a 2D corpus (``prepare-2d``): its markers, its check before use, and what
``--overwrite`` may delete.

A build marks its product three ways, so a stopped build is never mistaken for a corpus:

- ``corpus.json`` with ``"complete": false`` is written before the first PNG, and rewritten with
  ``"complete": true`` last, after ``manifest.csv`` (one row per PNG, with its size in bytes);
- every PNG carries the text chunk ``Software: medfoundry prepare-2d`` (``PNG_SOFTWARE``).

A corpus written before these markers has a ``corpus.json`` without ``complete`` (it was written
last, so it is complete) and a manifest without sizes (only the files' presence is checked).

Consumers (``check_image_folder``, run by ``collect_images`` for ``pretrain`` and ``embed``)
refuse, with one line naming it: an unfinished corpus; a manifest whose listed file is missing
or of another size (the first such file); and a folder that looks like a corpus (its first PNG
carries the marker, or it holds a corpus ``manifest.csv``) but has no ``corpus.json`` in it or
in a folder above it. A plain image folder passes unchecked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from PIL import Image

from medfoundry.errors import InputError
from medfoundry.runtime import is_temp_file

CORPUS_FILE = "corpus.json"
CORPUS_MANIFEST = "manifest.csv"
CORPUS_FORMAT = "medfoundry 2D corpus"
#: PNG text chunk ``Software`` of every image ``prepare-2d`` writes.
PNG_SOFTWARE = "medfoundry prepare-2d"
#: ``manifest.csv`` is UTF-8; a file name that is not (a surrogate-escaped ``str``) is written
#: and read back as its own bytes.
MANIFEST_ERRORS = "surrogateescape"
_RERUN = "rerun medfoundry prepare-2d with --overwrite"


def read_corpus_info(folder: Path) -> dict[str, Any] | None:
    """``folder/corpus.json`` when it is a 2D corpus's (either state), else None."""
    try:
        info = json.loads((folder / CORPUS_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) and info.get("format") == CORPUS_FORMAT else None


def png_is_marked(path: Path) -> bool:
    """Whether the PNG at ``path`` was written by ``prepare-2d`` (reads its header only)."""
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PNG_SOFTWARE
    except (OSError, ValueError):
        return False


def _looks_like_corpus(folder: Path, images: list[Path]) -> bool:
    """A marked first PNG, or a corpus ``manifest.csv`` (its ``file,source,input`` header)."""
    first = next((p for p in images if p.suffix.lower() == ".png"), None)
    if first is not None and png_is_marked(first):
        return True
    try:
        with open(
            folder / CORPUS_MANIFEST, newline="", encoding="utf-8", errors=MANIFEST_ERRORS
        ) as f:
            return f.readline().startswith("file,source,input,")
    except (OSError, UnicodeDecodeError):
        return False


def verify_corpus(root: Path, info: dict[str, Any]) -> None:
    """Refuse an unfinished corpus, or one whose listed file is missing or of another size."""
    if info.get("complete") is False:
        raise InputError(root, f"unfinished 2D corpus (its prepare-2d build stopped); {_RERUN}")
    manifest = root / CORPUS_MANIFEST
    try:
        with open(manifest, newline="", encoding="utf-8", errors=MANIFEST_ERRORS) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        raise InputError(manifest, f"missing: the 2D corpus's list of images; {_RERUN}") from None
    if isinstance(info.get("images"), int) and len(rows) != info["images"]:
        raise InputError(
            manifest, f"lists {len(rows)} images, corpus.json {info['images']}; {_RERUN}"
        )
    for row in rows:
        path = root / (row.get("file") or "")
        try:
            size = path.stat().st_size
        except OSError:
            raise InputError(path, f"missing (listed in {manifest}); {_RERUN}") from None
        expected = (row.get("bytes") or "").strip()
        if expected.isdigit() and size != int(expected):
            raise InputError(
                path, f"is {size} bytes, {manifest} says {expected} (damaged); {_RERUN}"
            )


def check_image_folder(folder: Path, images: list[Path]) -> None:
    """Refuse ``folder`` (with its scanned ``images``) when it is, or is part of, a corpus that
    is unfinished or damaged, or looks like a corpus without its ``corpus.json``."""
    info = read_corpus_info(folder)
    if info is not None:
        verify_corpus(folder, info)
        return
    if not _looks_like_corpus(folder, images):
        return  # a plain image folder
    for parent in folder.resolve().parents:
        parent_info = read_corpus_info(parent)
        if parent_info is not None:
            verify_corpus(parent, parent_info)
            return
    raise InputError(
        folder,
        f"looks like a prepare-2d corpus but has no {CORPUS_FILE} (its build stopped?); {_RERUN}",
    )


def _square_gray_png(path: Path) -> int | None:
    """The side of an 8-bit grayscale square PNG (what ``prepare-2d`` writes), else None."""
    try:
        with Image.open(path) as image:
            ok = image.format == "PNG" and image.mode == "L" and image.width == image.height
            return image.width if ok else None
    except (OSError, ValueError):
        return None


def is_own_product(folder: Path) -> bool:
    """Whether ``prepare-2d --overwrite`` may delete ``folder``: a corpus, finished or not.

    Rule (never an arbitrary user folder): ``folder`` holds a 2D corpus's ``corpus.json``; or
    it holds nothing but what a stopped build leaves: at its top only sub-folders, atomic-write
    temporary files and ``manifest.csv``; below, only PNGs and temporary files, at least one
    PNG, every PNG either marked (``PNG_SOFTWARE``) or (from a build before the marker)
    8-bit grayscale and square, all of one side. Any other file keeps the folder.
    """
    if read_corpus_info(folder) is not None:
        return True
    sides: set[int] = set()
    pngs = 0
    for path in folder.rglob("*"):
        if path.is_symlink():
            return False
        if path.is_dir() or is_temp_file(path):
            continue
        if path.parent == folder:
            if path.name != CORPUS_MANIFEST:
                return False
            continue
        if path.suffix != ".png":
            return False
        pngs += 1
        if png_is_marked(path):
            continue
        side = _square_gray_png(path)
        if side is None:
            return False
        sides.add(side)
    return pngs > 0 and len(sides) <= 1
