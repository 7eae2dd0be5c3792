"""Few-label 3D segmentation: train on store patches, predict whole volumes, evaluate per case.

``medfoundry finetune --task segmentation`` takes this path when ``--data`` is a 3D store
(``medfoundry prepare``) or an nnU-Net/MSD folder, or when ``--pretrained`` is a 3D checkpoint.
Entry points: ``finetune_segmentation3d`` (the command), ``train_segmenter3d``,
``evaluate_cases``; the training defaults are ``TRAIN_DEFAULTS``.

Keys and rules (network, patch size, initialisation, data, training, empty labels, evaluation,
the run folder): docs/rules/segmentation3d.md.
"""

from __future__ import annotations

import copy
import csv
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medfoundry.config import merge
from medfoundry.data.store.cases import is_msd_layout
from medfoundry.data.store.checks import (
    is_store,
    label_classes,
    open_or_prepare,
    open_test_store,
    split_validation,
)
from medfoundry.data.store.patches import PatchBatches, StoreVolumes
from medfoundry.data.store.reader import Store
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.metrics.segmentation3d import dice_per_class, hd95_per_class
from medfoundry.metrics.summary import describe
from medfoundry.nets.segmenters3d import check_patch
from medfoundry.runtime import (
    atomic_write_json,
    atomic_write_text,
    clear_outputs,
    record_run,
    seed_everything,
)
from medfoundry.tasks.finetune_out import RUN_OUTPUTS, check_finetune_out
from medfoundry.train.batchnorm_check import check_batchnorm_batch
from medfoundry.train.fit import fit_best, fitted_info
from medfoundry.train.inference3d import predict_volume, segment_volume
from medfoundry.train.optim import init_new_parts
from medfoundry.train.segment3d_module import DEFAULTS as MODULE_DEFAULTS
from medfoundry.train.segment3d_module import Segment3DModule, stalled_classes
from medfoundry.zoo import CheckpointLike, resolve_checkpoint, save_checkpoint
from medfoundry.zoo.adapt3d import (
    LOAD_KEYS,
    build_segmenter3d,
    check_preprocessing,
    checkpoint_meta,
    network_setup,
    network_size_multiple,
    new_parts,
    prepare_settings,
)

__all__ = [
    "TRAIN_DEFAULTS",
    "evaluate_cases",
    "finetune_segmentation3d",
    "is_3d_segmentation",
    "predict_volume",
    "segment_volume",
    "train_segmenter3d",
]

TRAIN_DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(MODULE_DEFAULTS),
    "network": "auto",
    "resnet_unet": {
        "backbone": {"name": "resnet18", "width": 0.5},
        "decoder_channels": [128, 64, 32, 16, 8],
    },
    "unet": {"features": [16, 16, 32, 64, 128, 16]},
    "swinunetr": {"feature_size": 12, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]},
    "patch_size": [32, 64, 32],
    "batch_size": 2,
    "steps": 2000,
    "val_every": 200,
    "foreground_fraction": 1.0 / 3.0,
    "precision": "32-true",
    "accelerator": "auto",
    "devices": 1,
    "num_workers": 0,
    "min_fraction": 1.0,  # share of encoder tensors a checkpoint must provide
    "load_decoder": True,  # false: a checkpoint's decoder is ignored (encoder-only transfer)
    "check_preprocessing": True,
    "hd95": True,
    "val_fraction": 0.2,
    "seed": 0,
    "prepare": {
        "target_spacing": None,  # None: the dataset's median spacing
        "modality": "auto",
        "ct_clip": [-1000.0, 1000.0],
        "mr_percentiles": [0.5, 99.5],
        "crop_foreground": True,
        "match_checkpoint": True,  # prepare MSD folders with the checkpoint's preprocessing
    },
}


# --- inputs ---------------------------------------------------------------------------------
def is_3d_segmentation(data: str | Path, pretrained: CheckpointLike | None) -> bool:
    """Whether fine-tuning on ``data`` is 3D: a store or MSD folder, or a 3D checkpoint."""
    if is_store(data) or is_msd_layout(Path(data)):
        return True
    if pretrained is not None:
        return resolve_checkpoint(pretrained).meta.spatial_dims == 3
    return False


# --- training -------------------------------------------------------------------------------
def train_segmenter3d(
    store: Store,
    train_indices: Sequence[int],
    val_indices: Sequence[int],
    *,
    setup: dict[str, Any],
    cfg: dict[str, Any],
    seed: int,
    out_dir: Path | None = None,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train on patches of the store's ``train_indices``; model-select on whole
    ``val_indices`` volumes. Returns the CPU model in eval mode (best-by-validation weights, the
    final ones without validation cases) and an info dict (load report, timings, history).
    ``out_dir`` (optional) receives Lightning's CSV logs only."""
    c = merge(TRAIN_DEFAULTS, cfg)
    if not train_indices:
        raise MedfoundryError("train_segmenter3d: no training cases")
    patch = [int(s) for s in c["patch_size"]]
    try:
        check_patch(setup["network"], patch, setup["options"])
    except ValueError as e:
        raise MedfoundryError(f"config patch_size: {e}") from e
    classes, names = label_classes(store)
    seed_everything(seed)
    model, info = build_segmenter3d(
        setup, max(classes) + 1, float(c["min_fraction"]), bool(c["load_decoder"])
    )
    sample = torch.zeros(1, 1, *patch)  # 3D stores hold one channel
    check_batchnorm_batch(model, sample, int(c["batch_size"]), "patch_size")
    fresh = None
    if setup["checkpoint"] is not None:
        fresh = new_parts(model) + ([] if "decoder_report" in info else ["decoder"])
    info.update(init_new_parts(model, fresh, c))
    steps = int(c["steps"])
    module = Segment3DModule(
        model,
        classes,
        names,
        patch,
        cfg=c,
        max_steps=steps,
        size_multiple=network_size_multiple(setup),
        new_parts=fresh,
    )
    batches = PatchBatches(
        store,
        train_indices,
        patch,
        int(c["batch_size"]),
        steps,
        float(c["foreground_fraction"]),
        seed=seed,
    )
    workers = int(c["num_workers"])
    train_loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers)
    has_val = len(val_indices) > 0
    val_loader = (
        DataLoader(StoreVolumes(store, val_indices), batch_size=1, num_workers=workers)
        if has_val
        else None
    )
    fitted = fit_best(
        module,
        train_loader,
        val_loader,
        steps=steps,
        monitor="val/dice_mean",
        val_every=max(1, min(int(c["val_every"]), steps)),
        precision=str(c["precision"]),
        accelerator=str(c["accelerator"]),
        devices=c["devices"],
        progress=progress,
        out_dir=out_dir,
        log_every=max(1, min(10, steps)),
    )
    info.update(fitted_info(fitted))
    if fitted.restored:
        info["val_classes"] = module.val_log
        stalled = stalled_classes(module.val_log, names)
        if stalled:
            info["stalled_classes"] = stalled
            warnings.warn(
                "3D fine-tuning: at the kept weights class(es) "
                + ", ".join(f"{n!r} (validation Dice {v:.2f})" for n, v in stalled.items())
                + " lag far behind the best class: unless they are simply harder, this is the "
                "class-merging minimum (one class takes both structures) seen with pretrained "
                f"weights at lr {float(c['lr']):g}; a higher lr (e.g. 3e-3) or an lr grid "
                "(`tune`) avoided it in docs/results.md §7",
                stacklevel=2,
            )
    return module.model.cpu().eval(), info


# --- evaluation -----------------------------------------------------------------------------
def evaluate_cases(
    model: nn.Module,
    store: Store,
    indices: Sequence[int],
    cfg: dict[str, Any],
    device: str | torch.device | None = None,
    size_multiple: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """One record per labeled case: id, shape, spacing, ``dice_<class>``, ``hd95_<class>``
    (when ``cfg["hd95"]``) and ``dice_mean`` over the foreground classes. ``size_multiple``:
    the network's per-axis rule (``network_size_multiple``), checked against the roi."""
    c = merge(TRAIN_DEFAULTS, cfg)
    classes, names = label_classes(store)
    sw = c["sliding_window"]
    roi = [int(s) for s in c["patch_size"]]
    if device is None:
        device = (
            "cpu" if str(c["accelerator"]) == "cpu" or not torch.cuda.is_available() else "cuda"
        )
    model = model.to(device)
    records = []
    for i in indices:
        case = store.cases[int(i)]
        label = store.label(int(i), mmap=False)
        if label is None:
            continue
        image = store.image(int(i), mmap=False).astype(np.float32)  # (1, D, H, W)
        pred = segment_volume(
            model,
            image,
            roi,
            overlap=float(sw["overlap"]),
            sw_batch_size=int(sw["sw_batch_size"]),
            mode=str(sw["mode"]),
            device=device,
            amp=bool(sw.get("amp", False)),
            size_multiple=size_multiple,
        )
        dice = dice_per_class(pred, label[0], classes)
        record: dict[str, Any] = {
            "id": case["id"],
            "shape": list(case["shape"]),
            "spacing": list(case["spacing"]),
            "empty_label": bool(case.get("empty_label", False)),
        }
        record.update({f"dice_{n}": round(float(d), 6) for n, d in zip(names, dice, strict=True)})
        record["dice_mean"] = round(float(dice.mean()), 6)
        if c["hd95"]:
            hd = hd95_per_class(pred, label[0], classes, case["spacing"])
            record.update({f"hd95_{n}": round(float(h), 4) for n, h in zip(names, hd, strict=True)})
        records.append(record)
    return records


def summarise(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean / sd / n over cases of every per-class metric in ``records``."""
    keys = [f"dice_{n}" for n in names] + ["dice_mean"] + [f"hd95_{n}" for n in names]
    return {k: describe([r[k] for r in records]) for k in keys if records and k in records[0]}


def write_cases_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Per-case metrics as CSV (one row per case, written atomically)."""
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow(
            {k: ("x".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()}
        )
    atomic_write_text(path, buf.getvalue())


def finetune_segmentation3d(
    data: str | Path,
    pretrained: CheckpointLike | None,
    out_dir: str | Path,
    cfg: dict[str, Any],
    test_data: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune a 3D segmenter on a store or MSD folder; evaluate validation (and test)
    cases; write the run folder (docs/rules/segmentation3d.md). Returns the metrics written to
    metrics.json.

    Every input (out folder, checkpoint, training and test stores, their labels) is checked
    before training; a finished run in ``out_dir`` is refused unless ``overwrite``."""
    c = merge(TRAIN_DEFAULTS, cfg)
    out = Path(out_dir)
    seed = int(c["seed"])
    setup = network_setup(c, pretrained)
    finished = check_finetune_out(out, setup["resolved"], overwrite)
    store = open_or_prepare(data, out / "store", prepare_settings(c, setup["meta"]), progress)
    if setup["meta"] is not None:
        check_preprocessing(setup["meta"], pretrained, store, bool(c["check_preprocessing"]))
    classes, names = label_classes(store)
    labeled = store.labeled_indices
    if not labeled:
        raise InputError(store.root, "no labeled case to train on")
    test_store = None if test_data is None else open_test_store(test_data, store, out, progress)
    empty = [store.case_ids[i] for i in labeled if store.cases[i].get("empty_label")]
    if empty:
        warnings.warn(
            f"{len(empty)} training case(s) with an empty label kept as background-only "
            f"examples ({', '.join(empty[:10])})",
            stacklevel=2,
        )
    train_idx, val_idx = split_validation(labeled, float(c["val_fraction"]), seed)
    if finished:
        clear_outputs(out, RUN_OUTPUTS)
    record_run(
        out,
        {
            **c,
            "data": str(data),
            "store": str(store.root),
            "pretrained": None if pretrained is None else str(pretrained),
            "test_data": None if test_data is None else str(test_data),
            "network_resolved": {"network": setup["network"], "options": setup["options"]},
        },
    )
    model, info = train_segmenter3d(
        store, train_idx, val_idx, setup=setup, cfg=c, seed=seed, out_dir=out, progress=progress
    )
    print(f"initialisation: {info['summary']}")
    multiple = network_size_multiple(setup)
    records = [
        {"split": "val", **r}
        for r in evaluate_cases(model, store, val_idx, c, size_multiple=multiple)
    ]
    metrics: dict[str, Any] = {
        "load": {k: v for k, v in info.items() if k in LOAD_KEYS},
        "network": setup["network"],
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "train_ids": [store.case_ids[i] for i in train_idx],
        "val_ids": [store.case_ids[i] for i in val_idx],
        "empty_label_training_cases": empty,
        "best_val_dice": info.get("best_val_dice"),
        "best_step": info.get("best_step"),
        "val_history": info.get("val_history"),
        "train_seconds": info.get("train_seconds"),
        "val": summarise(records, names),
    }
    if test_store is not None:
        test_records = evaluate_cases(
            model, test_store, test_store.labeled_indices, c, size_multiple=multiple
        )
        records += [{"split": "test", **r} for r in test_records]
        metrics["n_test"] = len(test_records)
        metrics["test"] = summarise(test_records, names)
        print(
            "test Dice: "
            + ", ".join(f"{n} {metrics['test'][f'dice_{n}']['mean']:.3f}" for n in names)
        )
    write_cases_csv(out / "cases.csv", records)
    meta = checkpoint_meta(setup, model, store, c, classes, names, info)
    decoder = getattr(model, "decoder", None)
    save_checkpoint(
        out / "checkpoint",
        model.state_dict(),
        meta,
        decoder=decoder.state_dict() if isinstance(decoder, nn.Module) else None,
    )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
