"""`medfoundry finetune`: adapt a pretrained backbone to a labeled folder and save the result."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from medfoundry.data.manifest import ClassificationItem, scan_class_folders
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.unlabeled2d import load_images
from medfoundry.errors import InputError
from medfoundry.runtime import atomic_write_json, clear_outputs, record_run
from medfoundry.tasks.classification import evaluate_classifier, train_classifier
from medfoundry.tasks.finetune_out import RUN_OUTPUTS, check_finetune_out
from medfoundry.tasks.segmentation3d import is_3d_segmentation
from medfoundry.zoo import (
    BackboneSpec,
    CheckpointLike,
    CheckpointMeta,
    resolve_checkpoint,
    save_checkpoint,
)
from medfoundry.zoo.meta import AXIS_ORDER_2D, require_2d_backbone


def _finetuned_meta_2d(
    backbone_cfg: dict[str, Any],
    size: int,
    norm: dict[str, Any],
    pretrained: Any,
    **task_fields: Any,
) -> CheckpointMeta:
    """The metadata every 2D fine-tuned checkpoint records, plus its task's own fields."""
    return CheckpointMeta(
        backbone=BackboneSpec.from_config(backbone_cfg),
        input_size=size,
        in_channels=int(backbone_cfg["in_channels"]),
        spatial_dims=2,
        axis_order=AXIS_ORDER_2D,
        normalization=norm,
        method="finetune",
        pretrained_from=str(pretrained),
        **task_fields,
    )


def backbone_setup(
    pretrained: CheckpointLike | None, cfg: dict[str, Any]
) -> tuple[dict[str, Any], int, dict[str, Any]]:
    """Backbone config, input size and normalisation: from the checkpoint when given, else cfg.

    A 3D checkpoint (or one without a backbone) is a ``CheckpointError`` naming it: the 2D
    tasks cannot start from it (``require_2d_backbone``)."""
    default = int(cfg.get("default_image_size") or 224)
    if pretrained is not None:
        checkpoint = resolve_checkpoint(pretrained)
        backbone, side = require_2d_backbone(checkpoint, "2D fine-tuning")
        size = int(cfg.get("image_size") or side or default)
        norm = dict(checkpoint.meta.normalization or XRAY_NORMALIZATION)
        return backbone.config, size, norm
    return dict(cfg["backbone"]), int(cfg.get("image_size") or default), dict(XRAY_NORMALIZATION)


def patient_split(
    items: list[ClassificationItem], val_fraction: float, seed: int
) -> tuple[list[ClassificationItem], list[ClassificationItem]]:
    """Split by patient group so no patient is in both parts."""
    groups = sorted({it.group for it in items})
    random.Random(seed).shuffle(groups)
    val_groups = set(groups[: max(1, int(round(len(groups) * val_fraction)))])
    return [it for it in items if it.group not in val_groups], [
        it for it in items if it.group in val_groups
    ]


def limit_per_class(
    items: list[ClassificationItem], n: int | None, seed: int
) -> list[ClassificationItem]:
    """Keep `n` items per class (seeded), or all when n is None."""
    if n is None:
        return items
    rng = random.Random(seed)
    out: list[ClassificationItem] = []
    for label in sorted({it.label for it in items}):
        members = [it for it in items if it.label == label]
        rng.shuffle(members)
        out += members[:n]
    return out


def check_test_classes(
    data: Path, classes: list[str], test_data: Path, test_classes: list[str]
) -> None:
    """Stop (one line naming both folders and the differing names) when the test folder's
    classes are not the training folder's: label indices follow the sorted class names."""
    if test_classes == classes:
        return
    only_test = sorted(set(test_classes) - set(classes))
    only_train = sorted(set(classes) - set(test_classes))
    raise InputError(
        test_data,
        f"test classes differ from the training folder {data}: only in the test folder: "
        f"{', '.join(only_test) or 'none'}; only in the training folder: "
        f"{', '.join(only_train) or 'none'}",
    )


def finetune_classification(
    data: Path,
    pretrained: CheckpointLike | None,
    out_dir: Path,
    cfg: dict[str, Any],
    test_data: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tune (or linear-probe) a classifier on class folders; writes checkpoint + metrics.

    Every input (out folder, training and test images, checkpoint) is checked before training;
    a finished run in ``out_dir`` is refused unless ``overwrite``."""
    seed = int(cfg.get("seed", 0))
    if pretrained is not None:
        pretrained = resolve_checkpoint(pretrained)  # once: everything below reads this value
    finished = check_finetune_out(out_dir, pretrained, overwrite)
    items, classes = scan_class_folders(data)
    test_items: list[ClassificationItem] = []
    if test_data is not None:
        test_items, test_classes = scan_class_folders(test_data)
        check_test_classes(data, classes, test_data, test_classes)
    train_items, val_items = patient_split(items, float(cfg["val_fraction"]), seed)
    train_items = limit_per_class(train_items, cfg.get("labels_per_class"), seed)
    backbone_cfg, size, norm = backbone_setup(pretrained, cfg)

    def load(its: list[ClassificationItem]) -> tuple[torch.Tensor, torch.Tensor]:
        x = load_images(
            [it.path for it in its],
            size,
            channels=backbone_cfg["in_channels"],
            normalization=norm,
            progress=progress,
        )
        return x, torch.tensor([it.label for it in its])

    tx, ty = load(train_items)
    vx, vy = load(val_items)
    sx, sy = load(test_items) if test_data is not None else (None, None)  # read before training
    if finished:
        clear_outputs(out_dir, RUN_OUTPUTS)
    record_run(
        out_dir, {**cfg, "data": str(data), "pretrained": str(pretrained), "classes": classes}
    )
    model, info = train_classifier(
        tx,
        ty,
        vx,
        vy,
        backbone_cfg=backbone_cfg,
        pretrained=pretrained,
        cfg=cfg,
        seed=seed,
        num_classes=len(classes),
        linear_probe=bool(cfg.get("linear_probe")),
        progress=progress,
    )
    print(f"backbone: {info['load']}")
    metrics: dict[str, Any] = {
        "load": info["load"],
        "val_best_score": info["best_val_score"],
        "n_train": len(train_items),
        "n_val": len(val_items),
    }
    if sx is not None and sy is not None:
        metrics["test"] = evaluate_classifier(model, sx, sy)
        print(f"test: {metrics['test']}")
    meta = _finetuned_meta_2d(
        backbone_cfg, size, norm, pretrained, task="classification", classes=tuple(classes)
    )
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    save_checkpoint(out_dir / "checkpoint", state, meta)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def finetune_segmentation(
    data: Path,
    pretrained: CheckpointLike | None,
    out_dir: Path,
    cfg: dict[str, Any],
    test_data: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a U-Net (pretrained encoder) on an images/ + masks/<structure>/ folder; save it.

    A Swin backbone trains with the config's `swin:` section over the general keys
    (`segmentation_recipe`; the resolved config is recorded). A 3D store or nnU-Net/MSD
    folder, or a 3D checkpoint, goes to
    `medfoundry.tasks.segmentation3d.finetune_segmentation3d` instead. Every input (out
    folder, training and test images and masks of the same structures, checkpoint) is checked
    before training; a finished run in ``out_dir`` is refused unless ``overwrite``.
    """
    if pretrained is not None:
        pretrained = resolve_checkpoint(pretrained)  # once: everything below reads this value
    if is_3d_segmentation(data, pretrained):
        from medfoundry.tasks.segmentation3d import finetune_segmentation3d

        return finetune_segmentation3d(
            data, pretrained, out_dir, cfg, test_data, progress, overwrite=overwrite
        )
    from medfoundry.data.manifest import scan_segmentation_folder
    from medfoundry.data.segmentation import load_segmentation_set, structure_groups
    from medfoundry.metrics.summary import mean_sd
    from medfoundry.tasks.segmentation import evaluate, segmentation_recipe, train_segmenter

    seed = int(cfg.get("seed", 0))
    finished = check_finetune_out(out_dir, pretrained, overwrite)
    items = scan_segmentation_folder(data)
    # names without a mask folder of their own: their left_ / right_ masks (structure_groups)
    groups = structure_groups(cfg.get("structures") or None, available=items[0].masks)
    mask_names = list({m for ms in groups.values() for m in ms})
    # the test folder must hold every training structure's masks (named when one is missing)
    test_items = None if test_data is None else scan_segmentation_folder(test_data, mask_names)
    cfg = {**cfg, "default_image_size": cfg.get("default_image_size", 256)}
    backbone_cfg, size, norm = backbone_setup(
        pretrained,
        {
            **cfg,
            "image_size": cfg.get("image_size")
            or (None if pretrained else cfg["default_image_size"]),
        },
    )
    cfg = segmentation_recipe(cfg, backbone_cfg)  # a Swin-UNet trains with the `swin:` keys
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(items) * float(cfg["val_fraction"])))) if len(items) > 1 else 0
    val_items = [items[i] for i in order[:n_val]]
    train_items = [items[i] for i in order[n_val:]]
    channels = backbone_cfg["in_channels"]
    tx, ty = load_segmentation_set(train_items, size, groups, channels, norm)
    vx, vy = (
        load_segmentation_set(val_items, size, groups, channels, norm)
        if val_items
        else (None, None)
    )
    sx, sy = (  # read before training: a bad test image or mask stops the run here
        load_segmentation_set(test_items, size, groups, channels, norm)
        if test_items is not None
        else (None, None)
    )
    if finished:
        clear_outputs(out_dir, RUN_OUTPUTS)
    record_run(
        out_dir, {**cfg, "data": str(data), "pretrained": str(pretrained), "structures": groups}
    )
    model, info = train_segmenter(
        tx,
        ty,
        vx,
        vy,
        backbone_cfg=backbone_cfg,
        pretrained=pretrained,
        cfg=cfg,
        out_dir=None,
        seed=seed,
        progress=progress,
        structures=list(groups),
    )
    print(f"backbone: {info.get('load_report', 'random initialisation')}")
    metrics: dict[str, Any] = {
        "load": info.get("load_report", "random initialisation"),
        "best_val_dice": info.get("best_val_dice"),
        "n_train": len(train_items),
        "n_val": len(val_items),
    }
    if sx is not None and sy is not None:
        dice = evaluate(model, sx, sy)
        metrics["test_dice"] = {name: mean_sd(dice[:, k].tolist()) for k, name in enumerate(groups)}
        print(f"test Dice (mean, sd): {metrics['test_dice']}")
    decoder_cfg = (getattr(model, "config", None) or {}).get("decoder")
    meta = _finetuned_meta_2d(
        backbone_cfg,
        size,
        norm,
        pretrained,
        task="segmentation",
        structures={k: list(v) for k, v in groups.items()},
        decoder_channels=tuple(int(c) for c in cfg["decoder_channels"]),
        # a Swin-UNet: its decoder is rebuilt from this (load_model)
        decoder=None if decoder_cfg is None else dict(decoder_cfg),
    )
    save_checkpoint(out_dir / "checkpoint", model.state_dict(), meta)
    atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics
