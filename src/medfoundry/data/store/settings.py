"""Compare the preprocessing of 3D stores and checkpoints, and prepare a store to match one.

A model sees intensities, spacing and axes as its store made them, so fine-tuning a checkpoint
on a store, or testing on another store, needs the same values for ``COMPARED_KEYS`` (crop
settings and storage dtypes change no voxel value a model sees, so they may differ).
A 3D checkpoint records its store's ``Store.preprocessing`` as ``normalization``
(``{"name": "store", ...}``, written by ``medfoundry pretrain`` and ``finetune``; read back as
``zoo.CheckpointMeta.store_preprocessing``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: Preprocessing settings that must agree between a checkpoint's store and a downstream store.
COMPARED_KEYS = ("axis_order", "target_spacing", "modality", "normalization", "resampling")


def _same(a: Any, b: Any) -> bool:
    """Equal settings (spacings to 1e-4 mm)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        try:
            return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-4))
        except (TypeError, ValueError):
            pass
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def preprocessing_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The ``COMPARED_KEYS`` whose values differ between two preprocessing records."""
    return [k for k in COMPARED_KEYS if not _same(a.get(k), b.get(k))]


def describe_diff(a: dict[str, Any], b: dict[str, Any], keys: list[str]) -> str:
    """``key: A vs B`` for each differing key (one line)."""
    return "; ".join(f"{k}: {json.dumps(a.get(k))} vs {json.dumps(b.get(k))}" for k in keys)


def prepare_kwargs(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """``prepare_store`` arguments that reproduce a store's preprocessing on other data."""
    norm = preprocessing.get("normalization") or {}
    out: dict[str, Any] = {
        "target_spacing": list(preprocessing["target_spacing"]),
        "modality": str(preprocessing.get("modality", "auto")),
        "crop_foreground": bool(preprocessing.get("crop_foreground", True)),
    }
    if "CT" in norm:
        out["ct_clip"] = tuple(float(v) for v in norm["CT"]["hu"])
    if "other" in norm:
        out["mr_percentiles"] = (float(norm["other"]["lower"]), float(norm["other"]["upper"]))
    return out
