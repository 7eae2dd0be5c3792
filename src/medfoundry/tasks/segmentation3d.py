"""Few-label 3D segmentation: train on store patches, predict whole volumes, evaluate per case.

``medfoundry finetune --task segmentation`` takes this path when ``--data`` is a 3D store
(``medfoundry prepare``) or an nnU-Net/MSD folder, or when ``--pretrained`` is a 3D checkpoint.

- **Network** (``network``; ``nets.segmenters3d``): ``auto`` (default: the checkpoint's,
  else ``resnet_unet``), ``resnet_unet``, ``pctnet``, ``unet`` or ``swinunetr``, with its
  options under the key of the same name (``pctnet``: ``backbone`` = ``PCTNetEncoder``
  arguments, default width 1, window 6, ``resolution_mode`` 1, and ``deep_supervision``,
  default true). With a checkpoint the network is the one the
  checkpoint fits (Volume Fusion / VoCo on a ResNet: ``resnet_unet`` with the checkpoint's
  backbone and decoder channels; Volume Fusion with ``volume_fusion_pctnet``: ``pctnet`` with
  the checkpoint's encoder arguments); a named network the checkpoint does not fit and
  scratch-only networks refuse a checkpoint.
- **Patch size**: each side must be a multiple of the network's per-axis rule
  (``segmenters3d.size_multiple_of``): 32 for ``resnet_unet`` / ``swinunetr``, 16 for
  ``unet``, (16, 16, 16) / (8, 16, 16) / (4, 16, 16) for ``pctnet`` in ``resolution_mode``
  0 / 1 / 2; the sliding-window roi (= the patch) is checked against the same rule.
- **Initialisation**: the encoder from ``model.safetensors`` (``load_backbone``; all tensors
  must load unless ``min_fraction`` < 1), the decoder from ``decoder.safetensors`` when the
  checkpoint has one (``load_decoder``, where names and shapes match, as MIS-FM transfers
  every shape-matching tensor); the output head (and PCT-Net's deep-supervision heads) are
  always new (``head_init: zero`` zeroes its last layer; ``head_warmup_steps`` trains only the
  new parts first; ``load_decoder: false`` leaves the decoder new). The report (encoder n/N,
  decoder n/N or "none in checkpoint", the new parts) is printed and stored. A class whose
  validation Dice never took off while another did (``stalled_classes``) is warned about.
  A 2D checkpoint is refused; the checkpoint's store preprocessing must equal the data's
  (``data.store3d_settings.COMPARED_KEYS``) or the run stops naming both, unless
  ``check_preprocessing: false``.
- **Data**: an MSD folder is first prepared into ``<out>/store`` (with the checkpoint's
  preprocessing when it records one and ``prepare.match_checkpoint``, else ``prepare``'s
  settings); a test MSD folder into ``<out>/test_store`` with the training store's settings.
  Validation cases (``val_fraction`` of the labeled cases, seeded) leave the training set.
- **Training**: ``steps`` steps of ``batch_size`` foreground-balanced patches
  (``foreground_fraction``, default 1/3; ``data.patches3d``) of ``patch_size`` voxels (D, H, W),
  Dice + CE, AdamW with warm-up + cosine (``train.segment3d_module``); a network that returns
  several outputs in training (PCT-Net with ``deep_supervision``, as MIS-FM fine-tunes it) is
  trained on their weighted sum (``nets.pctnet.deep_supervision_loss``: weights 1 / 2^i,
  normalised), validated and tested on its main output only; intensity jitter, no
  flips by default (``augment.flip_axes``: anterior/posterior-type labels are tied to the
  anatomy's orientation, and the store keeps every volume in one orientation, so a flip only
  teaches a pose that never occurs; "W" (left-right) is the one safe choice for such labels).
  Every ``val_every`` steps the validation volumes are segmented whole (sliding window,
  ``train.inference3d``; ``sliding_window: {overlap, sw_batch_size, mode}``, plus the optional
  ``amp: true`` for bfloat16 autocast on CUDA) and the weights with the best mean validation
  Dice are kept.
- **Empty labels**: a training case whose label is empty stays in the training set (it teaches
  background; its foreground-centred patches fall back to uniform ones), with a warning.
- **Evaluation**: per case and class, Dice and HD95 in mm on the store's grid (resampled to
  ``target_spacing``, foreground-cropped; the crop keeps every label voxel), conventions in
  ``evaluate.metrics3d``. The run folder gets ``cases.csv`` (one row per evaluated case),
  ``metrics.json`` (summary, load report), ``config.json``, ``versions.json`` and
  ``checkpoint/`` (whole network + decoder, reusable as ``--pretrained``).
"""

from __future__ import annotations

import copy
import csv
import io
import random
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medfoundry.config import merge
from medfoundry.data.cases3d import is_msd_layout
from medfoundry.data.patches3d import PatchBatches, StoreVolumes
from medfoundry.data.store3d import prepare_store
from medfoundry.data.store3d_reader import STORE_FILE, Store, open_store
from medfoundry.data.store3d_settings import (
    describe_diff,
    prepare_kwargs,
    preprocessing_diff,
)
from medfoundry.errors import CheckpointError, InputError, MedfoundryError
from medfoundry.evaluate.metrics3d import dice_per_class, hd95_per_class
from medfoundry.evaluate.summary import describe
from medfoundry.nets.segmenters3d import (
    check_patch,
    create_segmenter3d,
    get_segmenter3d,
    network_for_checkpoint,
    size_multiple_of,
)
from medfoundry.runtime import (
    atomic_write_json,
    atomic_write_text,
    clear_outputs,
    record_run,
    seed_everything,
)
from medfoundry.tasks.finetune_out import RUN_OUTPUTS, check_finetune_out
from medfoundry.train.batchnorm_check import check_batchnorm_batch
from medfoundry.train.engine import BestWeights, make_trainer
from medfoundry.train.inference3d import predict_volume, segment_volume
from medfoundry.train.optim import zero_last_layer
from medfoundry.train.segment3d_module import DEFAULTS as MODULE_DEFAULTS
from medfoundry.train.segment3d_module import Segment3DModule, stalled_classes
from medfoundry.zoo import (
    BackboneSpec,
    Checkpoint,
    CheckpointLike,
    CheckpointMeta,
    has_decoder,
    load_backbone,
    load_decoder,
    resolve_checkpoint,
    save_checkpoint,
)
from medfoundry.zoo.meta import AXIS_ORDER_3D

__all__ = [
    "TRAIN_DEFAULTS",
    "build_segmenter3d",
    "evaluate_cases",
    "finetune_segmentation3d",
    "is_3d_segmentation",
    "network_setup",
    "network_size_multiple",
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
def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a 3D store folder (holds ``store.json``)."""
    return (Path(path) / STORE_FILE).is_file()


def is_3d_segmentation(data: str | Path, pretrained: CheckpointLike | None) -> bool:
    """Whether fine-tuning on ``data`` is 3D: a store or MSD folder, or a 3D checkpoint."""
    if is_store(data) or is_msd_layout(Path(data)):
        return True
    if pretrained is not None:
        return resolve_checkpoint(pretrained).meta.spatial_dims == 3
    return False


def require_3d_checkpoint(meta: CheckpointMeta, path: CheckpointLike) -> None:
    """Raise ``CheckpointError`` unless the checkpoint holds a 3D network."""
    dims = meta.spatial_dims
    if dims != 3:
        raise CheckpointError(
            f"{path}: a {dims}D checkpoint (method {meta.method!r}, backbone "
            f"{meta.backbone_name!r}) cannot initialise 3D segmentation; "
            "pretrain with a 3D method (volume_fusion, voco) or pass --pretrained none"
        )


def prepare_settings(cfg: dict[str, Any], meta: CheckpointMeta | None) -> dict[str, Any]:
    """``prepare_store`` arguments for raw folders: the checkpoint's preprocessing when it
    records one (and ``prepare.match_checkpoint``), else the ``prepare`` config."""
    prep = dict(cfg.get("prepare") or {})
    recorded = meta.store_preprocessing if meta is not None else None
    if recorded is not None and prep.get("match_checkpoint", True):
        return prepare_kwargs(recorded)
    return {
        "target_spacing": prep.get("target_spacing"),
        "modality": str(prep.get("modality", "auto")),
        "ct_clip": tuple(prep.get("ct_clip") or (-1000.0, 1000.0)),
        "mr_percentiles": tuple(prep.get("mr_percentiles") or (0.5, 99.5)),
        "crop_foreground": bool(prep.get("crop_foreground", True)),
    }


def open_or_prepare(
    data: str | Path, store_dir: Path, settings: dict[str, Any], progress: bool = False
) -> Store:
    """``data`` itself when it is a store, else the store prepared from it into ``store_dir``
    (reused when already there with the same settings)."""
    if is_store(data):
        return open_store(data)
    if not is_msd_layout(Path(data)):
        raise InputError(
            data,
            "not a 3D store (no store.json) nor an nnU-Net/MSD folder (imagesTr/, labelsTr/); "
            "for 2D segmentation use an images/ + masks/<structure>/ folder",
        )
    prepare_store(data, store_dir, progress=progress, **settings)
    return open_store(store_dir)


def label_classes(store: Store) -> tuple[list[int], list[str]]:
    """Foreground label values of a store and their names (dataset.json, else ``c<value>``)."""
    named = store.info.get("labels") or {}
    present = store.info.get("counts", {}).get("label_classes") or []
    values = sorted({int(k) for k in named} | {int(v) for v in present})
    values = [v for v in values if v > 0]
    if not values:
        raise InputError(store.root, "no foreground label value in the store's labels")
    return values, [str(named.get(str(v), f"c{v}")) for v in values]


def check_preprocessing(
    meta: CheckpointMeta, checkpoint: CheckpointLike, store: Store, strict: bool = True
) -> None:
    """Stop (``CheckpointError``) when the checkpoint's store preprocessing differs from the
    store's, naming both; warn instead when ``strict`` is False or nothing was recorded."""
    recorded = meta.store_preprocessing
    if recorded is None:
        warnings.warn(
            f"{checkpoint}: records no 3D store preprocessing; cannot check it against "
            f"{store.root}",
            stacklevel=2,
        )
        return
    diff = preprocessing_diff(recorded, store.preprocessing)
    if not diff:
        return
    message = (
        f"checkpoint {checkpoint} and store {store.root} differ in preprocessing "
        f"({describe_diff(recorded, store.preprocessing, diff)}; checkpoint vs store); prepare "
        "the data with the checkpoint's settings or set check_preprocessing=false"
    )
    if strict:
        raise CheckpointError(message)
    warnings.warn(message, stacklevel=2)


def open_test_store(test_data: str | Path, store: Store, out: Path, progress: bool) -> Store:
    """The test store (an MSD folder prepared into ``<out>/test_store`` with the training
    store's settings), checked before training: same preprocessing, same label values and
    names, at least one labeled case; else one line naming both stores."""
    test = open_or_prepare(
        test_data, out / "test_store", prepare_kwargs(store.preprocessing), progress
    )
    diff = preprocessing_diff(store.preprocessing, test.preprocessing)
    if diff:
        raise InputError(
            test.root,
            f"preprocessed differently from the training store {store.root} "
            f"({describe_diff(store.preprocessing, test.preprocessing, diff)})",
        )
    train_labels = dict(zip(*label_classes(store), strict=True))
    test_labels = dict(zip(*label_classes(test), strict=True))
    if test_labels != train_labels:

        def show(labels: dict[int, str]) -> str:
            return ", ".join(f"{v}={n}" for v, n in labels.items())

        raise InputError(
            test.root,
            f"labels {show(test_labels)} differ from the training store {store.root} "
            f"({show(train_labels)})",
        )
    if not test.labeled_indices:
        raise InputError(test.root, "no labeled case to test on")
    return test


# --- network --------------------------------------------------------------------------------
def network_setup(cfg: dict[str, Any], pretrained: CheckpointLike | None) -> dict[str, Any]:
    """The network to build: ``{"network", "options", "checkpoint", "meta", "resolved"}``
    (``checkpoint``: the path as given; ``resolved``: its ``Checkpoint``, read once here or
    passed in; ``meta``: its ``CheckpointMeta``).

    ``cfg["network"]`` = ``auto`` (default) takes the checkpoint's network, ``resnet_unet``
    without one; a named network must be the one the checkpoint fits (a mismatch is an error,
    not a silent swap). Options come from ``cfg[<network>]``, then the checkpoint's.
    """
    name = str(cfg.get("network", "auto"))
    if name != "auto":
        get_segmenter3d(name)  # a clear error for an unknown name
    meta: CheckpointMeta | None = None
    resolved: Checkpoint | None = None
    if pretrained is not None:
        resolved = resolve_checkpoint(pretrained)
        meta = resolved.meta
        require_3d_checkpoint(meta, pretrained)
        if name != "auto" and get_segmenter3d(name).from_checkpoint is None:
            raise CheckpointError(
                f"network {name!r} trains from scratch only; a checkpoint ({pretrained}) "
                "initialises resnet_unet (or another network that loads checkpoints)"
            )
        try:
            fitted = network_for_checkpoint(meta.backbone_config, meta.decoder)
        except ValueError as e:
            raise CheckpointError(f"{pretrained}: {e}") from e
        if name not in ("auto", fitted):
            raise CheckpointError(
                f"network {name!r} is configured but the checkpoint {pretrained} initialises "
                f"{fitted!r}; set network: auto (or {fitted}) to fine-tune it"
            )
        name = fitted
        if meta.in_channels != 1:
            raise CheckpointError(
                f"{pretrained}: {meta.in_channels} input channels; 3D stores hold one"
            )
    elif name == "auto":
        name = "resnet_unet"
    options = copy.deepcopy(dict(cfg.get(name) or {}))
    if meta is not None:
        from_checkpoint = get_segmenter3d(name).from_checkpoint
        assert from_checkpoint is not None
        options.update(from_checkpoint(meta.backbone_config or {}, meta.decoder))
    return {
        "network": name,
        "options": options,
        "checkpoint": None if pretrained is None else str(pretrained),
        "meta": meta,
        "resolved": resolved,
    }


def build_segmenter3d(
    setup: dict[str, Any], num_classes: int, min_fraction: float = 1.0, decoder: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``setup`` with ``num_classes`` outputs, initialised from its checkpoint
    (encoder, then decoder when there is one and ``decoder``; the head stays new); returns
    (model, load info)."""
    model = create_segmenter3d(setup["network"], 1, num_classes, **setup["options"])
    if setup["checkpoint"] is None:
        return model, {"summary": "random initialisation"}
    ckpt: CheckpointLike = setup.get("resolved") or setup["checkpoint"]
    enc = load_backbone(ckpt, model.encoder, min_fraction=min_fraction)
    info: dict[str, Any] = {
        "checkpoint": setup["checkpoint"],
        "encoder": f"{enc.loaded}/{enc.total_model}",
        "encoder_report": enc.summary(),
        "head": "re-initialised",
    }
    net_decoder = getattr(model, "decoder", None)
    if decoder and has_decoder(ckpt) and isinstance(net_decoder, nn.Module):
        dec = load_decoder(ckpt, net_decoder)
        info["decoder"] = f"{dec.loaded}/{dec.total_model}"
        info["decoder_report"] = dec.summary()
    else:
        info["decoder"] = (
            "not loaded (load_decoder: false)" if has_decoder(ckpt) else "none in checkpoint"
        )
    new = new_parts(model)
    info["new"] = ", ".join(new)
    info["summary"] = (
        f"encoder {info['encoder']} tensors, decoder "
        + (f"{info['decoder']} tensors" if "decoder_report" in info else info["decoder"])
        + f", {' and '.join(new)} re-initialised"
    )
    return model, info


def new_parts(model: nn.Module) -> list[str]:
    """Top-level parts of ``model`` no checkpoint initialises (all but encoder and decoder;
    ``head`` first): the head, PCT-Net's ``aux_heads``."""
    parts = {k.split(".")[0] for k in model.state_dict()} - {"encoder", "decoder"}
    return sorted(parts, key=lambda p: (p != "head", p))


def init_new_parts(
    model: nn.Module, fresh: Sequence[str] | None, cfg: dict[str, Any]
) -> dict[str, Any]:
    """Apply ``head_init`` to the parts a checkpoint left new (``fresh``; None: no checkpoint,
    nothing to do); returns what was done, for the run's info."""
    rule = str(cfg.get("head_init", "default"))
    if rule not in ("default", "zero"):
        raise MedfoundryError(f"config head_init: {rule!r}; choose 'default' or 'zero'")
    hold = int(cfg.get("head_warmup_steps") or 0)
    if fresh is None:
        return {}
    out: dict[str, Any] = {"head_init": rule, "head_warmup_steps": hold}
    if rule == "zero":
        out["zeroed_layers"] = sum(zero_last_layer(getattr(model, p)) for p in fresh)
    return out


def network_size_multiple(setup: dict[str, Any]) -> tuple[int, int, int]:
    """The per-axis (D, H, W) size rule of the network of ``setup``."""
    return size_multiple_of(setup["network"], setup["options"])


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
    best = BestWeights("val/dice_mean", mode="max")
    trainer = make_trainer(
        out_dir,
        max_steps=steps,
        precision=str(c["precision"]),
        accelerator=str(c["accelerator"]),
        devices=c["devices"],
        progress=progress,
        check_val_every_n_epoch=None if has_val else 1,
        val_check_interval=max(1, min(int(c["val_every"]), steps)) if has_val else None,
        save_checkpoints=False,
        callbacks=[best] if has_val else [],
        log_every_n_steps=max(1, min(10, steps)),
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    info["train_seconds"] = round(time.perf_counter() - start, 2)
    info["steps"] = int(trainer.global_step)
    if has_val and best.best_state is not None:
        best.restore(module)
        info["best_val_dice"] = best.best_score
        info["best_step"] = best.best_step
        info["val_history"] = [[s, round(v, 5)] for s, v in best.history]
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


def split_validation(
    indices: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(train, validation) case indices; at least one validation case when there are two or
    more cases, and at least one training case."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val = min(max(1, int(round(n * float(val_fraction)))), n - 1) if n > 1 else 0
    return sorted(order[n_val:]), sorted(order[:n_val])


def checkpoint_meta(
    setup: dict[str, Any],
    model: nn.Module,
    store: Store,
    cfg: dict[str, Any],
    classes: Sequence[int],
    names: Sequence[str],
    load: dict[str, Any],
) -> CheckpointMeta:
    """Metadata of a fine-tuned 3D segmenter (rebuild, feed and reuse it as --pretrained)."""
    encoder = getattr(model, "encoder", None)
    backbone = (
        BackboneSpec.from_config(encoder.config)
        if isinstance(encoder, nn.Module) and hasattr(encoder, "config")
        else None
    )
    decoder = getattr(model, "decoder", None)
    decoder_cfg: dict[str, Any] | None = None
    if setup["network"] == "resnet_unet":
        decoder_cfg = {
            "type": "resnet_unet",
            "decoder_channels": list(model.config["decoder_channels"]),
        }
    elif isinstance(getattr(decoder, "config", None), dict):  # PCT-Net: its decoder.config
        decoder_cfg = dict(decoder.config)
    return CheckpointMeta(
        task="segmentation",
        method="finetune",
        network=setup["network"],
        network_options=copy.deepcopy(setup["options"]),
        num_classes=max(classes) + 1,
        labels={str(v): n for v, n in zip(classes, names, strict=True)},
        in_channels=1,
        spatial_dims=3,
        axis_order=AXIS_ORDER_3D,
        input_size=tuple(int(s) for s in cfg["patch_size"]),
        sliding_window=dict(cfg["sliding_window"]),
        normalization={"name": "store", **store.preprocessing},
        pretrained_from=setup["checkpoint"],
        backbone=backbone,
        decoder=decoder_cfg,
        extra={"load_report": load.get("summary")},
    )


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
    cases; write the run folder (module doc). Returns the metrics written to metrics.json.

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
        "load": {k: v for k, v in info.items() if k in _LOAD_KEYS},
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


_LOAD_KEYS = (
    "summary",
    "checkpoint",
    "encoder",
    "encoder_report",
    "decoder",
    "decoder_report",
    "new",
)
