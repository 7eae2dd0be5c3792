"""`medfoundry pretrain`: self-supervised pretraining on a folder of 2D images, stage by stage.

The driver names no method: it asks the method's spec (`methods.method_spec`, `MethodSpec`)
for its data, stages, input size, options and exports. MoCo-v2 and VIS-MAE (`mae`) train one
stage; Adam trains coarse-to-fine (levels 0 -> 2 -> 4), each stage warm-started from the previous
stage's best-by-validation weights with a fresh queue (the reference code carried the last
epoch and its stale queue over). A method that declares its own stages (`MethodSpec.stage_plan`:
Adam-v2's L then LCD, each over granularities) gets them from its plan. Every stage writes Lightning checkpoints (resume) and, when it
finishes, an exported backbone (`checkpoint/model.safetensors` + `medfoundry.json`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.store.dataset import StoreCropDataset
from medfoundry.data.store.images2d import Store2D, Store2DDataset, is_store2d, open_store2d
from medfoundry.data.store.reader import Store, open_store
from medfoundry.data.unlabeled2d import TensorImageDataset, collect_images, load_images
from medfoundry.errors import Interrupted, MedfoundryError
from medfoundry.methods import Stage, build_method, method_spec
from medfoundry.nets import create_backbone
from medfoundry.runtime import (
    atomic_write_json,
    check_run_dir,
    is_temp_file,
    record_run,
    seed_everything,
    stop_signals,
)
from medfoundry.train.curves import plot_pretrain_curves, plot_reconstructions
from medfoundry.train.engine import make_trainer, read_checkpoint, resume_path, stop_at_batch_end
from medfoundry.train.guards import PruningCollapseGuard, RepresentationCollapseGuard
from medfoundry.train.pretrain_module import PretrainModule
from medfoundry.train.probe import OnlineProbe, ProbeSet, load_probe_set
from medfoundry.train.resume import EpochShuffle, ResumeState
from medfoundry.zoo import BackboneSpec, CheckpointMeta, save_checkpoint
from medfoundry.zoo.meta import AXIS_ORDER_2D, AXIS_ORDER_3D

FINAL_DIR = "checkpoint"


def _stage_epochs(cfg: dict[str, Any], n_stages: int) -> list[int]:
    epochs = cfg.get("epochs", 1)
    if isinstance(epochs, int):
        return [epochs] * n_stages
    if method_spec(cfg["method"]).stages == "single":  # an Adam preset's per-level list:
        return [sum(int(e) for e in epochs)]  # the same total compute in one stage
    if len(epochs) != n_stages:
        raise MedfoundryError(f"config: epochs has {len(epochs)} entries for {n_stages} levels")
    return [int(e) for e in epochs]


def stage_levels(cfg: dict[str, Any]) -> list[int]:
    """The decomposition levels to train in sequence (a single-stage method: level 0)."""
    if method_spec(cfg["method"]).stages == "single":
        return [0]
    return [int(level) for level in cfg.get("levels", [0, 2, 4])]


def training_stages(cfg: dict[str, Any]) -> list[Stage]:
    """The stages to train in sequence: the method's own plan (``MethodSpec.stage_plan``), else
    one stage per decomposition level (``stage_levels``), named ``level{n}``."""
    plan = method_spec(cfg["method"]).stage_plan
    if plan is not None:
        try:
            return plan(cfg)
        except ValueError as exc:
            raise MedfoundryError(f"config: {exc}") from exc
    levels = stage_levels(cfg)
    epochs = _stage_epochs(cfg, len(levels))
    return [Stage(f"level{lv}", (lv,) * n) for lv, n in zip(levels, epochs, strict=True)]


class LevelEachEpoch(Callback):
    """Set the method's level at each epoch start, for stages whose level changes per epoch."""

    def __init__(self, levels: Sequence[int]) -> None:
        self.levels = tuple(levels)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.method.set_level(self.levels[min(trainer.current_epoch, len(self.levels) - 1)])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also at the start, for a mid-epoch resume (Lightning skips that epoch's start)."""
        self.on_train_epoch_start(trainer, pl_module)


def _split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction)) if n >= 10 else 0
    return perm[n_val:], perm[:n_val]


def _selected_ckpt(stage_dir: Path) -> Path:
    """The stage's checkpoint to carry forward: best by validation loss, else the last."""
    best = stage_dir / "checkpoints" / "best.ckpt"
    last = stage_dir / "checkpoints" / "last.ckpt"
    if best.is_file():
        return best
    if last.is_file():
        return last
    raise MedfoundryError(f"{stage_dir}: no checkpoint to continue from")


def _guards(cfg: dict[str, Any], level: int, stage_dir: Path) -> list[Callback]:
    """The stage's collapse guards: the pruner guard on pruned stages, the representation
    guard on contrastive ones (`guard.collapse_patience` / `guard.representation_patience`:
    0 turns each off; `guard.representation_warmup` unset: a quarter of the stage's steps on
    each rank, at least 100)."""
    guard = cfg.get("guard", {})
    spec = method_spec(cfg["method"])
    out: list[Callback] = []
    if spec.logs_retrieval:
        warmup = guard.get("representation_warmup")
        out.append(
            RepresentationCollapseGuard(
                warmup_steps=int(warmup) if warmup is not None else None,
                patience=int(guard.get("representation_patience", 100)),
                chance_factor=float(guard.get("retrieval_chance_factor", 2.0)),
                max_mean_length=float(guard.get("max_mean_length", 0.95)),
                where=str(stage_dir),
            )
        )
    if level == 0 or spec.options(cfg).get("prune_threshold") is None:
        return out
    out.append(
        PruningCollapseGuard(
            max_fraction=float(guard.get("max_pruned_fraction", 0.99)),
            patience=int(guard.get("collapse_patience", 50)),
            where=str(stage_dir),
        )
    )
    return out


def selection_rule(cfg: dict[str, Any], has_val: bool, has_probe: bool) -> tuple[str | None, str]:
    """(monitored metric, mode) that picks the checkpoint a stage carries forward.

    ``selection.monitor: auto`` (default): the probe's kNN AUC when ``--probe-data`` is given;
    else within-batch retrieval on the validation images for contrastive methods (never their
    raw loss, which a shortcut can lower, see docs/representation.md); else the validation
    loss; the last epoch without validation images. A named metric (``selection.monitor:
    val/loss``, ``selection.mode: min``) overrides the rule.
    """
    sel = cfg.get("selection") or {}
    monitor = sel.get("monitor", "auto")
    if monitor != "auto":
        return (None if monitor in (None, "last") else str(monitor)), str(sel.get("mode", "max"))
    if has_probe:
        return "probe/knn_auc", "max"
    if not has_val:
        return None, "min"
    if method_spec(cfg["method"]).logs_retrieval:
        return "val/retrieval", "max"
    return "val/loss", "min"


def _probe_set(cfg: dict[str, Any], progress: bool) -> ProbeSet | None:
    """The labeled probe images (`probe.data`: class folders) at the backbone's input size."""
    pcfg = cfg.get("probe") or {}
    if not pcfg.get("data"):
        return None
    if method_spec(cfg["method"]).volumetric:
        raise MedfoundryError(
            f"probe.data: the online probe reads 2D class folders; {cfg['method']} pretrains "
            "on 3D crops (measure a 3D run downstream instead)"
        )
    return load_probe_set(
        pcfg["data"],
        int(input_size(cfg)),
        channels=int(cfg["backbone"]["in_channels"]),
        normalization=cfg.get("normalization", XRAY_NORMALIZATION),
        per_class=int(pcfg.get("per_class", 200)),
        seed=int(cfg.get("seed", 0)),
        progress=progress,
    )


def input_size(cfg: dict[str, Any]) -> int | list[int]:
    """Size of the inputs the backbone sees (``MethodSpec.input_size``): MoCo/Adam views, MAE's
    whole loaded image, a 3D crop (Volume Fusion) or one VoCo base crop ([d, h/n, w/n])."""
    return method_spec(cfg["method"]).input_size(cfg)


def _build(cfg: dict[str, Any], level: int) -> torch.nn.Module:
    """The SSL method around a fresh backbone, with the method's own config section
    (``MethodSpec.section``: Adam's is the MoCo section it shares)."""
    spec = method_spec(cfg["method"])
    backbone = create_backbone(**cfg["backbone"])
    if not spec.takes_views:
        return build_method(spec.name, backbone, **spec.options(cfg))
    kwargs = {"level": level, "out_size": input_size(cfg), **spec.options(cfg)}
    if cfg["views"].get("augment"):  # view augmentation (the method's fields) over the paper's
        kwargs["augment"] = dict(cfg["views"]["augment"])
    return build_method(spec.name, backbone, **kwargs)


def _image_data(
    cfg: dict[str, Any],
    paths: Sequence[Path],
    seed: int,
    normalization: dict[str, Any],
    progress: bool,
) -> tuple[Dataset, Dataset | None, int]:
    """2D images decoded once into memory; (train set, validation set or None, image count)."""
    images = load_images(
        paths,
        int(cfg["data"]["load_size"]),
        channels=int(cfg["backbone"]["in_channels"]),
        normalization=normalization,
        progress=progress,
    )
    train_idx, val_idx = _split(len(paths), float(cfg["data"].get("val_fraction", 0.05)), seed)
    val = TensorImageDataset(images[val_idx]) if len(val_idx) else None
    return TensorImageDataset(images[train_idx]), val, len(paths)


def _store_image_data(
    cfg: dict[str, Any], store: Store2D, seed: int, normalization: dict[str, Any]
) -> tuple[Dataset, Dataset | None, int]:
    """2D images read from a ``prepare-2d --store`` store when a batch needs them (nothing is
    decoded up front): the split and the tensors of ``_image_data`` on the corpus folder the
    store was built from (its order is that folder's), so a run gives the same weights."""
    store.warn_constant()
    train_idx, val_idx = _split(len(store), float(cfg["data"].get("val_fraction", 0.05)), seed)

    def images(indices: torch.Tensor) -> Store2DDataset:
        size, channels = int(cfg["data"]["load_size"]), int(cfg["backbone"]["in_channels"])
        return Store2DDataset(store, size, channels, normalization, indices.tolist())

    val = images(val_idx) if len(val_idx) else None
    return images(train_idx), val, len(store)


def _store2d_path(data: Sequence[str | Path]) -> Path | None:
    """The 2D store among `--data` (a folder holding ``store2d.json``), or None for image
    folders and files; a store is read alone."""
    stores = [Path(d) for d in data if is_store2d(d)]
    if not stores:
        return None
    if len(data) != 1:
        raise MedfoundryError(
            f"{stores[0]}: a 2D store is read alone, got {len(data)} --data entries; build one "
            "corpus of all the sources (prepare-2d takes several --source)"
        )
    return stores[0]


def _volume_data(
    cfg: dict[str, Any], data: Sequence[str | Path], seed: int
) -> tuple[Dataset, Dataset | None, int, dict[str, Any]]:
    """Random 3D crops from one `medfoundry prepare` store, cases split into train/validation;
    returns the sets, the case count and the store's preprocessing (for the checkpoint)."""
    if len(data) != 1:
        raise MedfoundryError(
            f"{cfg['method']} reads one 3D store (made by `medfoundry prepare`), got {len(data)}"
        )
    store = open_store(data[0])
    train_idx, val_idx = _split(len(store), float(cfg["data"].get("val_fraction", 0.05)), seed)
    size = cfg["data"]["crop_size"]
    per_volume = int(cfg["data"].get("crops_per_volume", 1))
    warn_if_mostly_padding(store, size, cfg["method"])

    def crops(indices: torch.Tensor, crop_seed: int) -> StoreCropDataset:
        ds = StoreCropDataset(store, size, per_volume, seed=crop_seed, indices=indices.tolist())
        ds.with_labels = False  # self-supervised: images only
        return ds

    val = crops(val_idx, seed + 1) if len(val_idx) else None  # fixed crops every epoch
    return crops(train_idx, seed), val, len(store), dict(store.preprocessing)


MIN_DATA_FRACTION = 0.7  # below this median share of real voxels per crop, warn


def crop_data_fraction(shapes: np.ndarray, size: Sequence[int]) -> float:
    """Median share of a ``size`` crop's voxels that lie inside the volume (the rest is padding)
    over volumes of ``shapes`` (N, 3)."""
    crop = np.asarray([int(v) for v in size], dtype=np.int64)
    inside = np.minimum(np.asarray(shapes, dtype=np.int64), crop).prod(axis=1)
    return float(np.median(inside / crop.prod()))


def warn_if_mostly_padding(store: Store, size: Sequence[int], method: str) -> None:
    """Warn when crops of ``size`` are mostly zero padding on this store's volumes: a VoCo grid
    larger than the volumes gives base crops of padding, and the pretext does not learn."""
    shapes = np.asarray([c["shape"] for c in store.cases], dtype=np.int64).reshape(-1, 3)
    if not len(shapes):
        return
    fraction = crop_data_fraction(shapes, size)
    if fraction < MIN_DATA_FRACTION:
        median = "x".join(str(int(v)) for v in np.median(shapes, axis=0))
        warnings.warn(
            f"{store.root}: {method} crops of {'x'.join(map(str, size))} voxels are "
            f"{100 * (1 - fraction):.0f}% zero padding on the median volume ({median}); "
            "choose data.crop_size within the volumes (a VoCo grid of padded base crops "
            "does not learn)",
            stacklevel=2,
        )


class NewCropsEachEpoch(Callback):
    """Tell a crop dataset which epoch starts, so every epoch draws new (reproducible) crops."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


def _decoder_config(method: torch.nn.Module) -> dict[str, Any] | None:
    """What rebuilds the method's pretrained decoder downstream (MAE: Swin; Volume Fusion: the
    ResNet-UNet decoder, or PCT-Net's own ``decoder.config`` with ``type: pctnet``), or None for
    encoder-only methods."""
    decoder = getattr(method, "decoder", None)
    if decoder is not None and hasattr(decoder, "config"):
        return dict(decoder.config)
    segmenter = getattr(method, "segmenter", None)
    if segmenter is not None:
        seg_decoder = getattr(segmenter, "decoder", None)
        if hasattr(seg_decoder, "config"):  # PCT-Net
            return dict(seg_decoder.config)
        return {"type": "resnet_unet", "decoder_channels": segmenter.config["decoder_channels"]}
    return None


def _load_module_weights(module: PretrainModule, ckpt: Path) -> dict[str, Any]:
    """Load the weights of a stage checkpoint, read safely (``engine.read_checkpoint``);
    returns the checkpoint (its epoch and step say what was loaded)."""
    state = read_checkpoint(ckpt)
    module.load_state_dict(state["state_dict"])
    return state


def _record_selection(ckpt: Path, state: dict[str, Any], monitor: str | None) -> None:
    """The stage's `selection.json`: which checkpoint and epoch it carried forward, by what
    rule (the export itself does not say)."""
    chosen = {
        "checkpoint": ckpt.name,
        "epoch": int(state.get("epoch", -1)),
        "global_step": int(state.get("global_step", -1)),
        "monitor": monitor,
    }
    atomic_write_json(ckpt.parent.parent / "selection.json", chosen)


def _relative_files(data: Sequence[str | Path], files: Sequence[Path]) -> list[tuple[str, int]]:
    """(path relative to the `--data` entry that holds it, size in bytes) of each file, sorted:
    what identifies the training data, wherever its folder was moved."""
    roots = [Path(d) for d in data]
    out = []
    for f in files:
        root = next((r for r in roots if r.is_dir() and f.is_relative_to(r)), None)
        rel = f.relative_to(root).as_posix() if root is not None else f.name
        out.append((rel, f.stat().st_size))
    return sorted(out)


def data_fingerprint(data: Sequence[str | Path], files: Sequence[Path]) -> dict[str, Any]:
    """{files, sha256} of the training data (relative paths and sizes, see `_relative_files`):
    a resume with other data is refused (`check_resume`)."""
    entries = _relative_files(data, files)
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return {"files": len(entries), "sha256": digest}


def _store_files(root: str | Path) -> list[Path]:
    """Every file of a 3D or 2D store (not the temporary files of a write in progress)."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and not is_temp_file(p))


#: Keys a resume may change: where and how the run executes, not what it computes.
RESUME_FREE = (
    "data_sources",
    "data.num_workers",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.loggers",
    "trainer.checkpoint_every_n_steps",
)


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: value} (lists are values)."""
    if isinstance(obj, dict) and (obj or not prefix):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key old -> new` for each config key that differs, outside `RESUME_FREE`."""
    a, b = _flat(old), _flat(new)
    free = tuple(RESUME_FREE)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in free or key.startswith(tuple(f"{f}." for f in free)):
            continue
        if key.startswith("data_fingerprint."):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(
                f"{key} {json.dumps(a.get(key, '<unset>'))} -> {json.dumps(b.get(key, '<unset>'))}"
            )
    return out


def check_resume(path: Path, record: dict[str, Any]) -> None:
    """Refuse (one line naming what differs) to resume the run whose `config.json` is `path`
    with another resolved config or other training data (`data_fingerprint`)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedfoundryError(f"{path}: unreadable run record ({exc})") from exc
    if not isinstance(old, dict):
        raise MedfoundryError(f"{path}: not a run record (a JSON object)")
    new = json.loads(json.dumps(record, default=str))
    before, after = old.get("data_fingerprint"), new.get("data_fingerprint")
    if before is not None and before != after:
        raise MedfoundryError(
            f"{path}: --resume with other training data than the run's "
            f"({before.get('files')} files -> {after.get('files')} files, or their names or "
            "sizes differ); pass the run's --data or choose a new --out"
        )
    diffs = _differences(old, new)
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise MedfoundryError(
            f"{path}: --resume with a changed config: {diffs[0]}{more}; rerun with the run's "
            "settings or choose a new --out"
        )


def _read_timings(path: Path) -> dict[str, float]:
    """The seconds per stage a run recorded (`timings.json`), {} when absent or unreadable."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in obj.items()} if isinstance(obj, dict) else {}


def checkpoint_metadata(
    cfg: dict[str, Any],
    backbone_cfg: dict[str, Any],
    levels: list[int],
    n_images: int,
    sources: Sequence[str],
    decoder_cfg: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """What a downstream user needs to rebuild and feed the backbone (and its decoder, for a
    method that pretrains one), with the spec's ``checkpoint_extra`` fields."""
    spec = method_spec(cfg["method"])
    extra = spec.checkpoint_extra(cfg, backbone_cfg) if spec.checkpoint_extra else {}
    volume = spec.volumetric
    size = input_size(cfg)
    return CheckpointMeta(
        method=spec.name,
        backbone=BackboneSpec.from_config(backbone_cfg),
        in_channels=int(backbone_cfg["in_channels"]),
        spatial_dims=3 if volume else 2,
        axis_order=AXIS_ORDER_3D if volume else AXIS_ORDER_2D,
        input_size=size if isinstance(size, int) else tuple(int(s) for s in size),
        decoder=decoder_cfg or None,
        normalization=dict(cfg.get("normalization", XRAY_NORMALIZATION)),
        levels_trained=tuple(int(v) for v in levels),
        training_data={
            "n_images": n_images,
            "sources": [str(s) for s in sources],
            "load_size": cfg["data"].get("load_size"),
            "crop_size": cfg["data"].get("crop_size"),
        },
        extra={**extra, "config": cfg},
    )


@torch.no_grad()
def _plot_mae(method: torch.nn.Module, images: torch.Tensor, out: Path, seed: int) -> None:
    """Validation images, their masked input and the MAE's reconstruction, side by side."""
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    images = images.to(device)
    recon, mask = method.reconstruct(images, torch.Generator(device=device).manual_seed(seed))
    masked = torch.where(mask.bool(), images.amin(dim=(1, 2, 3), keepdim=True), images)
    plot_reconstructions(
        images.cpu(), masked.cpu(), recon.cpu(), out, title=f"{out.parent.name}: validation"
    )
    method.train(was_training)


def pretrain(
    cfg: dict[str, Any],
    data: Sequence[str | Path],
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Pretrain a backbone with `cfg["method"]` on the images under `data`; returns the run folder.

    The exported backbone lands in `out_dir/checkpoint/` once every stage has finished. SIGTERM
    or Ctrl-C stops at the next batch with a resumable `last.ckpt` and raises ``Interrupted``
    (the CLI exits 143 / 130); `resume` continues from each stage's `last.ckpt`, refusing a
    changed config or other data (`check_resume`).
    """
    with stop_signals(), _naming_run(Path(out_dir)):
        return _pretrain(cfg, data, Path(out_dir), resume, progress)


@contextmanager
def _naming_run(out_dir: Path) -> Iterator[None]:
    """An ``Interrupted`` leaving the block names the run folder that `--resume` continues."""
    try:
        yield
    except Interrupted as exc:
        if exc.run_dir is not None:
            raise
        raise Interrupted(exc.signum, out_dir) from exc


def _run_record(
    cfg: dict[str, Any], data: Sequence[str | Path], n_items: int, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """What `config.json` stores: the resolved config, the data and its fingerprint."""
    return {
        **cfg,
        "data_sources": [str(d) for d in data],
        "n_images": n_items,
        "data_fingerprint": fingerprint,
    }


def check_out_dir(out_dir: Path, data: Sequence[str | Path]) -> None:
    """Refuse (one line) an `--out` that is a file, or that is or lies inside a `--data` folder
    (resolved paths): the run's own PNGs (curves.png) would be scanned as training images."""
    check_run_dir(out_dir, (), overwrite=False)  # a file, not a folder: one line
    target = out_dir.resolve()
    for entry in data:
        src = Path(entry)
        if src.is_dir() and target.is_relative_to(src.resolve()):
            raise MedfoundryError(
                f"{out_dir}: --out is inside --data {src} (the run's own images would be read "
                "as training data); choose a folder outside it"
            )


def check_trainable(
    train_set: Dataset, batch_size: int, data: Sequence[str | Path], n_items: int, unit: str
) -> None:
    """Refuse (one line naming the data) fewer than 2 training items or a batch of 1: batch
    normalisation cannot train on one sample, and Lightning's error would not say why."""
    n_train = len(train_set)
    if n_train < 2:
        names = ", ".join(str(d) for d in data)
        raise MedfoundryError(
            f"{names}: {n_train} training item(s) from {n_items} {unit} (after the validation "
            "split); pretraining needs at least 2"
        )
    if batch_size < 2:
        raise MedfoundryError(
            f"config key optim.batch_size: {batch_size}; pretraining needs batches of at least 2"
        )


def _save_progress(
    out_dir: Path, timings_path: Path, timings: dict[str, float], failing: bool, method: str
) -> None:
    """Write `timings.json` and `curves.png` of the stages so far. While another error ends
    the stage (``failing``), a failure here (the same full disk) is dropped, so the error
    reported is the first one."""
    try:
        atomic_write_json(timings_path, timings)
        plot_pretrain_curves(out_dir, method=method)
    except Exception:
        if not failing:
            raise


def _pretrain(
    cfg: dict[str, Any],
    data: Sequence[str | Path],
    out_dir: Path,
    resume: bool,
    progress: bool,
) -> Path:
    """`pretrain` inside its signal handling."""
    spec = method_spec(cfg["method"])
    for key, value in spec.forced_options:  # MoCo-v2 never prunes, whichever preset it borrows
        cfg.setdefault(spec.section, {})[key] = value
    stages = training_stages(cfg)
    check_out_dir(out_dir, data)
    if not resume and out_dir.exists() and any(out_dir.glob("stage*/checkpoints/*.ckpt")):
        raise MedfoundryError(
            f"{out_dir}: already holds a run; pass --resume or choose a new --out"
        )
    seed = int(cfg.get("seed", 0))
    seed_everything(seed)

    # a resumed run must match its stored record (nothing is rewritten, so a refused resume
    # leaves the run as it was); a new run stores it only once its inputs are loaded and
    # checked, so a run refused on its input leaves nothing in --out
    stored = out_dir / "config.json"
    check_stored = resume and stored.is_file()
    if spec.volumetric:
        train_set, val_set, n_items, preprocessing = _volume_data(cfg, data, seed)
        cfg["normalization"] = {"name": "store", **preprocessing}  # what the store applied
        fingerprint = data_fingerprint(data, _store_files(data[0]))
        record = copy.deepcopy(_run_record(cfg, data, n_items, fingerprint))
        if check_stored:
            check_resume(stored, record)
    else:
        normalization = cfg.setdefault("normalization", dict(XRAY_NORMALIZATION))
        store_dir = _store2d_path(data)
        if store_dir is not None:  # a 2D store: images read on demand from its memory maps
            store2d = open_store2d(store_dir)
            files, n_listed = _store_files(store_dir), len(store2d)
        else:  # image folders and files: decoded into memory below
            paths = collect_images(data)
            files, n_listed = paths, len(paths)
        fingerprint = data_fingerprint(data, files)
        record = copy.deepcopy(_run_record(cfg, data, n_listed, fingerprint))
        if check_stored:  # before the images are decoded: a refusal is quick
            check_resume(stored, record)
        if store_dir is not None:
            train_set, val_set, n_items = _store_image_data(cfg, store2d, seed, normalization)
        else:
            train_set, val_set, n_items = _image_data(cfg, paths, seed, normalization, progress)
    probe = _probe_set(cfg, progress)

    batch_size = min(int(cfg["optim"]["batch_size"]), len(train_set))
    unit = "3D case(s)" if spec.volumetric else "image(s)"
    check_trainable(train_set, batch_size, data, n_items, unit)
    workers = int(cfg["data"].get("num_workers", 0))
    # the order of each epoch from (seed, epoch), and a loader seed of its own (ResumeState),
    # so that the global random stream (views, masks) is only the model's and a resume repeats it
    train_loader = DataLoader(
        train_set,
        batch_size=batch_size,
        sampler=EpochShuffle(len(train_set), seed),
        drop_last=True,
        num_workers=workers,
    )
    min_batch = spec.min_batch  # Volume Fusion pairs the crops of a batch
    val_loader = (
        DataLoader(
            val_set,
            batch_size=min(batch_size, len(val_set)),
            shuffle=False,
            drop_last=min_batch > 1,
            num_workers=workers,
        )
        if val_set is not None and len(val_set) >= min_batch
        else None
    )

    method = _build(cfg, stages[0].levels[0])
    backbone_cfg = dict(method.backbone.config)
    decoder_cfg = _decoder_config(method)
    if not check_stored:
        record_run(out_dir, record)

    def export(done: Sequence[Stage]) -> tuple[dict, CheckpointMeta, dict | None]:
        done_levels = [lv for stage in done for lv in stage.distinct_levels()]
        meta = checkpoint_metadata(
            cfg, backbone_cfg, done_levels, n_items, [str(d) for d in data], decoder_cfg
        )
        dec = method.export_decoder() if hasattr(method, "export_decoder") else None
        return method.export_backbone(), meta, dec

    tcfg = cfg.get("trainer", {})
    monitor, mode = selection_rule(cfg, val_loader is not None, probe is not None)
    prev_stage: Path | None = None
    timings_path = out_dir / "timings.json"
    timings = _read_timings(timings_path) if resume else {}
    for i, stage in enumerate(stages):
        stage_dir = out_dir / f"stage{i}_{stage.name}"
        level, n_epochs = stage.levels[0], stage.epochs
        steps_per_epoch = max(1, len(train_loader))
        optim = {**cfg["optim"], "batch_size": batch_size}  # warm-up epochs: see PretrainModule
        module = PretrainModule(method, optim, n_epochs * steps_per_epoch, seed=seed)
        if hasattr(method, "set_level"):
            method.set_level(level)
        if stage.mode is not None:
            method.set_mode(stage.mode)
        per_epoch = [LevelEachEpoch(stage.levels)] if len(set(stage.levels)) > 1 else []
        done = (stage_dir / FINAL_DIR / "medfoundry.json").is_file()
        if not done:
            if prev_stage is not None:
                _load_module_weights(module, _selected_ckpt(prev_stage))
                if hasattr(method, "reset_queue"):
                    method.reset_queue()
            seed_everything(seed + i)  # each stage's stream its own: a resumed stage repeats it
            ckpt = resume_path(stage_dir) if resume else None
            # read safely first: a crafted or damaged file is refused here, naming it
            ckpt_step = int(read_checkpoint(ckpt).get("global_step", 0)) if ckpt else None
            trainer = make_trainer(
                stage_dir,
                max_epochs=n_epochs,
                precision=str(tcfg.get("precision", "32-true")),
                accelerator=str(tcfg.get("accelerator", "auto")),
                devices=tcfg.get("devices", "auto"),
                num_nodes=int(tcfg.get("num_nodes", 1)),
                strategy=str(tcfg.get("strategy", "auto")),
                progress=progress,
                monitor=monitor,
                log_every_n_steps=max(1, min(10, steps_per_epoch)),
                mode=mode,
                callbacks=[
                    *([OnlineProbe(probe)] if probe is not None else []),
                    *_guards(cfg, max(stage.levels), stage_dir),
                    NewCropsEachEpoch(),
                    ResumeState(train_loader, seed),
                    *per_epoch,
                ],
                loggers=list(tcfg.get("loggers", ["csv"])),
                checkpoint_every_n_steps=int(tcfg.get("checkpoint_every_n_steps", 0)),
                keep_log_before=ckpt_step,
            )
            # under DDP a rank takes ceil(n / world) items an epoch (EpochShuffle's share): log
            # at least once an epoch on multi-device / multi-node runs too
            world = max(1, int(trainer.world_size))
            rank_steps = (len(train_set) + world - 1) // world // batch_size
            trainer.log_every_n_steps = max(1, min(10, rank_steps))
            start = time.time()
            try:
                with stop_at_batch_end(trainer, out_dir):
                    trainer.fit(
                        module,
                        train_dataloaders=train_loader,
                        val_dataloaders=val_loader,
                        ckpt_path=ckpt,
                        weights_only=True,
                    )
            except BaseException:  # curves of every stage so far, also when a stage stops
                timings[stage_dir.name] = timings.get(stage_dir.name, 0.0) + time.time() - start
                if trainer.is_global_zero:
                    _save_progress(out_dir, timings_path, timings, failing=True, method=spec.name)
                raise
            timings[stage_dir.name] = timings.get(stage_dir.name, 0.0) + time.time() - start
            if trainer.is_global_zero:
                _save_progress(out_dir, timings_path, timings, failing=False, method=spec.name)
            selected = _selected_ckpt(stage_dir)
            state = _load_module_weights(module, selected)
            if trainer.is_global_zero:
                _record_selection(selected, state, monitor)
                weights, meta, dec = export(stages[: i + 1])
                save_checkpoint(stage_dir / FINAL_DIR, weights, meta, decoder=dec)
        prev_stage = stage_dir
    # the final stage's export is the run's checkpoint
    final = out_dir / FINAL_DIR
    if prev_stage is not None and rank_zero_only.rank == 0:  # one writer under DDP
        _load_module_weights(
            PretrainModule(method, dict(cfg["optim"]), 1), _selected_ckpt(prev_stage)
        )
        weights, meta, dec = export(stages)
        save_checkpoint(final, weights, meta, decoder=dec)
        atomic_write_json(timings_path, timings)
        if hasattr(method, "reconstruct"):
            shown_set = val_set if val_set is not None and len(val_set) else train_set
            shown = torch.stack([shown_set[j] for j in range(min(4, len(shown_set)))])
            _plot_mae(method, shown, out_dir / "reconstructions.png", seed)
    return out_dir
