"""Kermany label-efficiency benchmark: pneumonia vs normal with 8 labels up to all of them.

Per arm (each pretrained checkpoint, plus scratch), mode (`finetune` or `linear_probe`), label
budget and repeat, a classifier is trained on a labeled subset of the TRAIN folder, selected on
validation patients of it and scored (AUC, accuracy) on every image of the TEST folder.
`run_kermany_label_efficiency` is the entry point, `KermanyLabelEfficiency` / `SPEC` the
engine's spec, `DEFAULT_CONFIG` the keys.

Rules (budgets, validation, seeds, steps, learning rate, probe features, outputs):
docs/rules/benchmarks.md, "Kermany label efficiency".
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from medfoundry.benchmarks import engine
from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Flag, Job
from medfoundry.data.label_budgets import (
    Budget,
    draw_budget,
    parse_budget,
    split_validation,
    subset_seed,
)
from medfoundry.data.manifest import ClassificationItem, patient_id_from_name, scan_class_folders
from medfoundry.data.unlabeled2d import load_images
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.evaluate.arms import (
    arm_checkpoint,
    arm_info,
    data_key,
    load_reports,
    resolve_arms,
)
from medfoundry.evaluate.label_efficiency_report import (
    markdown_report,
    plot_label_efficiency,
    summarize_budgets,
    summarize_runs,
)
from medfoundry.runtime import atomic_write_text, seed_everything
from medfoundry.tasks.classification import (
    build_classifier_backbone,
    evaluate_classifier,
    train_classifier,
)
from medfoundry.tasks.linear_probe import (
    evaluate_probe,
    extract_features,
    standardize,
    train_linear_probe,
)

PLOT = "label_efficiency.png"
MODES = ("finetune", "linear_probe")

DEFAULT_CONFIG: dict[str, Any] = {
    "budgets": [8, 16, 32, "1%", "10%", "100%"],
    "repeats": 3,
    "base_seed": 0,
    "classes": ["NORMAL", "PNEUMONIA"],
    "val_fraction": 0.1,
    "val_max_patients": 50,
    "modes": list(MODES),
    "image_size": None,
    "default_image_size": 224,
    "normalization": None,
    "backbone": {"name": "resnet50", "in_channels": 1, "width": 1.0, "spatial_dims": 2},
    "steps": 300,
    "epochs": 20,
    "max_steps": 3000,
    "val_checks": 10,
    "batch_size": 32,
    "lr": {"finetune": 1e-3, "linear_probe": 1e-2},
    "tune": {"finetune": [3e-4, 1e-3, 3e-3], "linear_probe": [1e-3, 1e-2, 1e-1]},
    "weight_decay": 1e-4,
    "warmup_fraction": 0.05,
    "label_smoothing": 0.0,
    "augment": True,
    "eval_batch_size": 64,
    "precision": "32-true",
    "accelerator": "auto",
    "inner_progress": False,
}

# Keys that do not change any finished run's numbers: a restart may differ in them.
_RESUME_FREE = {"repeats", "inner_progress", "eval_batch_size"}


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` over `DEFAULT_CONFIG`, checked; budgets normalised to their labels."""
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), **copy.deepcopy(config)}
    cfg["budgets"] = [parse_budget(b).label for b in cfg["budgets"]]
    if len(set(cfg["budgets"])) != len(cfg["budgets"]) or not cfg["budgets"]:
        raise MedfoundryError(f"config: budgets {cfg['budgets']} must be distinct, at least one")
    cfg["repeats"] = int(cfg["repeats"])
    if cfg["repeats"] < 1:
        raise MedfoundryError("config: repeats must be >= 1")
    cfg["modes"] = list(cfg["modes"])
    if not cfg["modes"] or any(m not in MODES for m in cfg["modes"]):
        raise MedfoundryError(f"config: modes {cfg['modes']} must be some of {list(MODES)}")
    if len(cfg["classes"]) != 2:
        raise MedfoundryError(f"config: classes {cfg['classes']} must name 2 class folders")
    if not 0 < float(cfg["val_fraction"]) < 1:
        raise MedfoundryError("config: val_fraction must be between 0 and 1")
    if not isinstance(cfg["lr"], dict):  # one value for every mode
        cfg["lr"] = {m: cfg["lr"] for m in MODES}
    if isinstance(cfg["tune"], list):  # one grid for every mode
        cfg["tune"] = {m: cfg["tune"] for m in MODES}
    for key in ("lr", "tune"):
        missing = [m for m in cfg["modes"] if cfg[key] is not None and m not in cfg[key]]
        if missing:
            raise MedfoundryError(f"config: {key} has no entry for the modes {missing}")
    return cfg


def run_steps(cfg: dict[str, Any], n_labeled: int) -> tuple[int, int]:
    """(steps, validation interval) of a run on `n_labeled` images (rule in the docstring)."""
    want = math.ceil(float(cfg["epochs"]) * n_labeled / int(cfg["batch_size"]))
    steps = max(int(cfg["steps"]), want)
    if cfg.get("max_steps") is not None:
        steps = min(steps, int(cfg["max_steps"]))
    val_every = max(1, math.ceil(steps / max(1, int(cfg["val_checks"]))))
    return val_every * math.ceil(steps / val_every), val_every


#: An image file's Kermany patient, the unit of the percent budgets and of validation:
#: ``person1000_bacteria_2931.jpeg`` -> ``person1000``, ``IM-0115-0001.jpeg`` -> ``IM-0115``.
#: The data layer's default file-name rule (the demo and ``finetune`` use it too), named here
#: as the protocol's.
KERMANY_PATIENT_ID: Callable[[Path], str] = patient_id_from_name


def scan_labeled(
    folder: str | Path, classes: Sequence[str], reference: Sequence[str] | None = None
) -> list[ClassificationItem]:
    """Items of `folder/<CLASS>/`, labels indexing `classes`, grouped by Kermany patient
    (`KERMANY_PATIENT_ID`); checks the class folders."""
    items, found = scan_class_folders(folder, patient_id=KERMANY_PATIENT_ID)
    if reference is not None and sorted(found) != sorted(reference):
        raise InputError(
            folder,
            f"class folders {found} differ from the train folder's {sorted(reference)}",
        )
    if sorted(found) != sorted(classes):
        raise InputError(
            folder,
            f"expected the class folders {', '.join(c + '/' for c in classes)} (config key "
            f"classes), found {', '.join(c + '/' for c in found)}",
        )
    remap = {found.index(c): i for i, c in enumerate(classes)}
    return [ClassificationItem(path=it.path, label=remap[it.label], group=it.group) for it in items]


def _relative(items: Sequence[ClassificationItem], root: Path) -> list[str]:
    return [it.path.relative_to(root).as_posix() for it in items]


def _subset_record(
    items: Sequence[ClassificationItem], root: Path, seed: int, classes: Sequence[str]
) -> dict[str, Any]:
    return {
        "seed": seed,
        "n_images": len(items),
        "n_patients": len({it.group for it in items}),
        "per_class": {c: sum(it.label == i for it in items) for i, c in enumerate(classes)},
        "files": _relative(items, root),
    }


def draw_splits(
    items: Sequence[ClassificationItem],
    budgets: Sequence[Budget],
    cfg: dict[str, Any],
    root: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(validation[repeat], splits[budget][repeat]) records with file names, for every repeat."""
    classes = cfg["classes"]
    validation: dict[str, Any] = {}
    splits: dict[str, Any] = {b.label: {} for b in budgets}
    for r in range(cfg["repeats"]):
        seed = subset_seed(cfg["base_seed"], r, "validation")
        pool, val = split_validation(
            items, float(cfg["val_fraction"]), cfg["val_max_patients"], seed, classes, root
        )
        validation[str(r)] = {**_subset_record(val, root, seed, classes), "pool_images": len(pool)}
        for b in budgets:
            bseed = subset_seed(cfg["base_seed"], r, b.label)
            chosen = draw_budget(pool, b, bseed, classes, root)
            rec = _subset_record(chosen, root, bseed, classes)
            splits[b.label][str(r)] = {**rec, "fraction": len(chosen) / len(pool)}
    return validation, splits


def _digest(names: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:16]


def _eval_device(cfg: dict[str, Any]) -> str:
    if str(cfg.get("accelerator")) == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


class KermanyLabelEfficiency(BenchmarkSpec):
    """The Kermany label-efficiency protocol (docs/rules/benchmarks.md) for the engine."""

    name = "kermany_label_efficiency"
    command = "kermany-label-efficiency"
    help = (
        "pneumonia vs normal AUC/accuracy with 8, 16, 32 labels and 1/10/100%% of them, "
        "fine-tuned and linear probe"
    )
    preset = "kermany_label_efficiency"
    defaults = DEFAULT_CONFIG
    resume_free = _RESUME_FREE
    group_levels = ("mode",)
    score = "val_auc"
    flags = (
        Flag("--budgets", "budgets", "[budgets] image counts and/or percents (10%%)", nargs="+"),
    )
    train_help = "training folder: NORMAL/ and PNEUMONIA/"
    test_help = "test folder, same classes"

    def resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return resolve_config(config)

    def prepare(self, cfg, train_data, test_data, pretrained, out_dir, progress) -> Context:
        budgets = [parse_budget(b) for b in cfg["budgets"]]
        classes = list(cfg["classes"])
        train_root, test_root = Path(train_data), Path(test_data)
        train_items = scan_labeled(train_root, classes)
        test_items = scan_labeled(test_root, classes, reference=classes)
        arms = resolve_arms(pretrained, cfg, benchmark="Kermany")
        reports = load_reports(arms)  # fails early on a checkpoint that does not fit its network
        validation, splits = draw_splits(train_items, budgets, cfg, train_root)
        train_files = _relative(train_items, train_root)
        test_files = _relative(test_items, test_root)
        shared = sorted({it.group for it in train_items} & {it.group for it in test_items})
        identity = {"train_digest": _digest(train_files), "test_digest": _digest(test_files)}
        header = {
            "title": "Kermany pneumonia vs normal: label efficiency",
            "config": cfg,
            "train_data": str(train_root),
            "test_data": str(test_root),
            "classes": classes,
            "positive_class": classes[1],
            "n_train": len(train_items),
            "n_test": len(test_items),
            **identity,
            "test_files": test_files,
            "patients_in_train_and_test": shared,
            "budgets": cfg["budgets"],
            "validation": validation,
            "splits": splits,
        }
        by_size = sorted(budgets, key=lambda b: splits[b.label]["0"]["n_images"])
        data = {
            "cfg": cfg,
            "reports": reports,
            "train_items": train_items,
            "test_items": test_items,
            "validation": validation,
            "splits": splits,
            "train_y": torch.tensor([it.label for it in train_items]),
            "test_y": torch.tensor([it.label for it in test_items]),
            "pos": {name: i for i, name in enumerate(train_files)},
            "tune_budgets": list(dict.fromkeys([by_size[0].label, by_size[-1].label])),
            "images": {},
            "features": {},
            "device": _eval_device(cfg),
        }
        return Context(arms=arms, header=header, identity=identity, data=data)

    def arm_record(self, ctx: Context, arm: dict[str, Any]) -> dict[str, Any]:
        return arm_info(arm, ctx.data["reports"].get(arm["name"]))

    def groups(self, cfg: dict[str, Any]) -> list[tuple[str, ...]]:
        return [(m,) for m in cfg["modes"]]

    def cells(self, cfg: dict[str, Any], group: tuple[str, ...]) -> list[str]:
        return list(cfg["budgets"])

    def lr_grid(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> list[float]:
        return [float(v) for v in (ctx.data["cfg"]["tune"] or {}).get(group[0]) or []]

    def default_lr(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> float:
        return float(ctx.data["cfg"]["lr"][group[0]])

    def tune_cells(self, ctx: Context, group: tuple[str, ...]) -> list[str]:
        return ctx.data["tune_budgets"]

    def run_job(self, ctx: Context, job: Job, lr: float) -> tuple[float | None, dict | None]:
        d, cfg, arm, (mode,), b, r = (
            ctx.data,
            ctx.data["cfg"],
            job.arm,
            job.group,
            job.cell,
            job.repeat,
        )
        split = d["splits"][b][str(r)]
        seed = split["seed"]
        tr = _indices(d["pos"], split["files"])
        va = _indices(d["pos"], d["validation"][str(r)]["files"])
        train_y, test_y = d["train_y"], d["test_y"]
        steps, val_every = run_steps(cfg, len(tr))
        run_cfg = {
            **cfg,
            "lr": lr,
            "steps": steps,
            "val_every": val_every,
            "warmup_steps": int(round(float(cfg["warmup_fraction"]) * steps)),
        }
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if mode == "finetune":
            tx, sx = _images_for(ctx, arm)
            model, info = train_classifier(
                tx[tr],
                train_y[tr],
                tx[va],
                train_y[va],
                backbone_cfg=arm["backbone"],
                pretrained=arm_checkpoint(arm),
                cfg=run_cfg,
                seed=seed,
                linear_probe=False,
                progress=bool(ctx.progress and cfg.get("inner_progress")),
            )
            if job.kind == "run":
                metrics = evaluate_classifier(
                    model, sx, test_y, batch_size=int(cfg["eval_batch_size"]), device=d["device"]
                )
            del model
        else:
            ftr, fte = _features_for(ctx, arm, r)
            head, info = train_linear_probe(
                ftr[tr], train_y[tr], ftr[va], train_y[va], cfg=run_cfg, seed=seed
            )
            if job.kind == "run":
                metrics = evaluate_probe(head, fte, test_y)
        if job.kind == "tune":
            return info.get("best_val_score"), None
        record = {
            "auc": metrics["auc"],
            "accuracy": metrics["accuracy"],
            "lr": lr,
            "seed": seed,
            "steps": steps,
            "n_train": len(tr),
            "best_val_auc": info.get("best_val_score"),
            "best_step": info.get("best_step"),
            "seconds": round(time.perf_counter() - start, 2),
        }
        return info.get("best_val_score"), record

    def log_line(self, job: Job, record: dict[str, Any]) -> str:
        return (
            f"{job.arm_name} {job.group[0]} {job.cell} repeat={job.repeat}: AUC "
            f"{record['auc']:.3f}, accuracy {record['accuracy']:.3f} ({record['seconds']:.0f} s)"
        )

    def summarize(self, state: dict[str, Any], ctx: Context) -> None:
        cfg = ctx.data["cfg"]
        state["summary"] = summarize_runs(state["runs"], cfg["budgets"], cfg["repeats"])

    def finalize(self, state: dict[str, Any], ctx: Context) -> None:
        cfg = ctx.data["cfg"]
        state["budget_summary"] = summarize_budgets(
            ctx.data["splits"], cfg["budgets"], cfg["repeats"]
        )

    def report(self, state: dict[str, Any], ctx: Context, out_dir: Path) -> None:
        names, modes = [a["name"] for a in ctx.arms], ctx.data["cfg"]["modes"]
        atomic_write_text(out_dir / "results.md", markdown_report(state, names, modes))
        plot_label_efficiency(
            state,
            names,
            modes,
            out_dir / PLOT,
            title="Pneumonia vs normal (test set, mean ± sd over repeats)",
        )


def _indices(pos: dict[str, int], files: Sequence[str]) -> torch.Tensor:
    return torch.tensor([pos[f] for f in files], dtype=torch.long)


def _images_for(ctx: Context, arm: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) images at the arm's size / normalisation / channels, loaded once."""
    d = ctx.data
    key = data_key(arm)
    if key not in d["images"]:
        load = dict(
            size=arm["image_size"],
            channels=int(arm["backbone"]["in_channels"]),
            normalization=arm["normalization"],
            progress=ctx.progress,
        )
        d["images"][key] = (
            load_images([it.path for it in d["train_items"]], desc="train images", **load),
            load_images([it.path for it in d["test_items"]], desc="test images", **load),
        )
    return d["images"][key]


def _features_for(ctx: Context, arm: dict[str, Any], repeat: int) -> tuple[torch.Tensor, ...]:
    """Standardised (train, test) features; a scratch arm's random network per repeat."""
    d, cfg = ctx.data, ctx.data["cfg"]
    key = (arm["name"], None if arm["checkpoint"] else repeat)
    if key not in d["features"]:
        if arm["checkpoint"] is None:
            seed_everything(subset_seed(cfg["base_seed"], repeat, "random-init"))
        backbone, _ = build_classifier_backbone(arm["backbone"], arm_checkpoint(arm))
        bs = int(cfg["eval_batch_size"])
        tx, sx = _images_for(ctx, arm)
        ftr = extract_features(backbone, tx, batch_size=bs, device=d["device"])
        fte = extract_features(backbone, sx, batch_size=bs, device=d["device"])
        d["features"][key] = (standardize(ftr, ftr), standardize(fte, ftr))
    return d["features"][key]


SPEC = KermanyLabelEfficiency()


def run_kermany_label_efficiency(
    train_data: str | Path,
    test_data: str | Path,
    pretrained: Sequence[str | Path | None],
    out_dir: str | Path,
    config: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark and return the results dict written to results.json.

    train_data / test_data: class folders (`<CLASS>/<images>`, classes as config["classes"]).
    pretrained: checkpoint paths; None / "none" entries add no arm (scratch always runs).
    config: keys of `DEFAULT_CONFIG` (missing keys take those defaults; the presets
    kermany_label_efficiency[_cpu].yaml document each).
    """
    return engine.run_benchmark(SPEC, train_data, test_data, pretrained, out_dir, config, progress)
