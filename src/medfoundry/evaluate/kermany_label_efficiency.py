"""Kermany label-efficiency benchmark: pneumonia vs normal with 8 labels up to all of them.

For every arm (each pretrained checkpoint, plus training from scratch with each checkpoint's
network: `medfoundry.evaluate.arms.resolve_arms`), every mode (`finetune`: the whole network
trained; `linear_probe`: a linear head on frozen, precomputed features, random features for
scratch), every label budget and every repeat, a classifier is trained on a labeled subset of
the TRAIN folder, model-selected (best validation AUC among `val_checks` evaluations) on
validation patients of the TRAIN folder, and scored (AUC, accuracy) on every image of the TEST
folder. The rules:

- Budgets (`medfoundry.data.label_budgets`): `8`, `16`, `32` images, balanced over the classes
  and from distinct patients; `1%`, `10%`, `100%` of the labeled pool's patients per class,
  whole patients with all their images, at least one patient per class.
- Validation: per repeat, `val_fraction` of each class's patients (at most
  `val_max_patients`, at least 1), drawn once and removed from the labeled pool of every budget.
- Seeds: the subset of (budget, repeat) and the run's seed (initialisation, batches,
  augmentation) come from `subset_seed(base_seed, repeat, budget)`; every arm and mode sees the
  same subsets with the same seed. A scratch probe's random network is drawn per repeat.
- Steps of a run: `clamp(ceil(epochs * n_labeled / batch_size), steps, max_steps)` rounded up to
  a multiple of the validation interval `ceil(steps / val_checks)`; identical for every arm and
  mode at a budget. Learning rate, warm-up, weight decay, augmentation: identical for all arms.
- Learning rate: with `tune`, per arm and mode the grid value with the best mean validation AUC
  on repeat 0 at the smallest and the largest budget (by labeled images); else `lr[mode]`.
- Linear probe features are standardised with the mean / sd of the whole train folder's
  features (no labels used).

Outputs in `out_dir`: `results.json` (config, splits with file names, per-run metrics,
summaries, tuning), `results.md`, `label_efficiency.png`. `results.partial.json` is rewritten
after every run; a restart with the same configuration skips finished runs and a different
configuration is refused.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medfoundry.data.label_budgets import (
    Budget,
    draw_budget,
    parse_budget,
    split_validation,
    subset_seed,
)
from medfoundry.data.manifest import ClassificationItem, scan_class_folders
from medfoundry.data.pretrain import load_images
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.evaluate import resume
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
from medfoundry.runtime import atomic_write_text, record_run, seed_everything
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


def scan_labeled(
    folder: str | Path, classes: Sequence[str], reference: Sequence[str] | None = None
) -> list[ClassificationItem]:
    """Items of `folder/<CLASS>/`, labels indexing `classes`; checks the class folders."""
    items, found = scan_class_folders(folder)
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
    cfg = resolve_config(config)
    budgets = [parse_budget(b) for b in cfg["budgets"]]
    classes = list(cfg["classes"])
    train_root, test_root = Path(train_data), Path(test_data)
    out_dir = Path(out_dir)

    train_items = scan_labeled(train_root, classes)
    test_items = scan_labeled(test_root, classes, reference=classes)
    arms = resolve_arms(pretrained, cfg, benchmark="Kermany")
    reports = load_reports(arms)  # fails early on a checkpoint that does not fit its network
    validation, splits = draw_splits(train_items, budgets, cfg, train_root)
    train_files = _relative(train_items, train_root)
    test_files = _relative(test_items, test_root)
    shared_patients = sorted({it.group for it in train_items} & {it.group for it in test_items})

    out_dir.mkdir(parents=True, exist_ok=True)
    state = resume.load_state(out_dir, cfg, _RESUME_FREE)
    if state.get("runs") and (
        state.get("train_digest") != _digest(train_files)
        or state.get("test_digest") != _digest(test_files)
    ):
        raise MedfoundryError(
            f"{out_dir}: holds results for other train/test folders; use another output folder"
        )
    state.update(
        {
            "benchmark": "kermany_label_efficiency",
            "title": "Kermany pneumonia vs normal: label efficiency",
            "config": cfg,
            "train_data": str(train_root),
            "test_data": str(test_root),
            "classes": classes,
            "positive_class": classes[1],
            "n_train": len(train_items),
            "n_test": len(test_items),
            "train_digest": _digest(train_files),
            "test_digest": _digest(test_files),
            "test_files": test_files,
            "patients_in_train_and_test": shared_patients,
            "budgets": cfg["budgets"],
            "validation": validation,
            "splits": splits,
            "complete": False,
        }
    )
    for key in ("runs", "tuning", "arms"):
        state.setdefault(key, {})
    record_run(out_dir, cfg)
    for arm in arms:
        state["arms"].setdefault(arm["name"], {}).update(arm_info(arm, reports.get(arm["name"])))
        state["arms"][arm["name"]].setdefault("lr", {})

    train_y = torch.tensor([it.label for it in train_items])
    test_y = torch.tensor([it.label for it in test_items])
    pos = {name: i for i, name in enumerate(train_files)}

    def indices(files: Sequence[str]) -> torch.Tensor:
        return torch.tensor([pos[f] for f in files], dtype=torch.long)

    images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def images_for(arm: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) images at the arm's size / normalisation / channels, loaded once."""
        key = data_key(arm)
        if key not in images:
            load = dict(
                size=arm["image_size"],
                channels=int(arm["backbone"]["in_channels"]),
                normalization=arm["normalization"],
                progress=progress,
            )
            images[key] = (
                load_images([it.path for it in train_items], desc="train images", **load),
                load_images([it.path for it in test_items], desc="test images", **load),
            )
        return images[key]

    device = _eval_device(cfg)
    features: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor]] = {}

    def features_for(arm: dict[str, Any], repeat: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised (train, test) features; a scratch arm's random network per repeat."""
        key = (arm["name"], None if arm["checkpoint"] else repeat)
        if key not in features:
            if arm["checkpoint"] is None:
                seed_everything(subset_seed(cfg["base_seed"], repeat, "random-init"))
            backbone, _ = build_classifier_backbone(arm["backbone"], arm_checkpoint(arm))
            bs = int(cfg["eval_batch_size"])
            tx, sx = images_for(arm)
            ftr = extract_features(backbone, tx, batch_size=bs, device=device)
            fte = extract_features(backbone, sx, batch_size=bs, device=device)
            features[key] = (standardize(ftr, ftr), standardize(fte, ftr))
        return features[key]

    tune_grid = cfg["tune"] or {}
    by_size = sorted(budgets, key=lambda b: splits[b.label]["0"]["n_images"])
    tune_budgets = list(dict.fromkeys([by_size[0].label, by_size[-1].label]))
    jobs: list[tuple[str, dict[str, Any], str, str, int, float | None]] = []
    for arm in arms:
        for mode in cfg["modes"]:
            for lr in tune_grid.get(mode) or []:
                for b in tune_budgets:
                    jobs.append(("tune", arm, mode, b, 0, float(lr)))
            for b in cfg["budgets"]:
                for r in range(cfg["repeats"]):
                    jobs.append(("run", arm, mode, b, r, None))

    def is_done(job: tuple) -> bool:
        kind, arm, mode, b, r, lr = job
        if kind == "tune":
            scores = state["tuning"].get(arm["name"], {}).get(mode, {}).get("val_auc", {})
            return b in scores.get(repr(lr), {})
        return str(r) in state["runs"].get(arm["name"], {}).get(mode, {}).get(b, {})

    def chosen_lr(arm: dict[str, Any], mode: str) -> float:
        grid = [float(v) for v in tune_grid.get(mode) or []]
        if not grid:
            return float(cfg["lr"][mode])
        tuning = state["tuning"].setdefault(arm["name"], {}).setdefault(mode, {"val_auc": {}})
        means = {}
        for lr in grid:
            vals = [tuning["val_auc"][repr(lr)][b] for b in tune_budgets]
            vals = [v if v is not None and v == v else -math.inf for v in vals]
            means[lr] = sum(vals) / len(vals)
        best = max(grid, key=lambda lr: means[lr])  # ties: the first in the grid
        tuning.update(
            {"budgets": tune_budgets, "mean_val_auc": {repr(k): v for k, v in means.items()}}
        )
        tuning["chosen_lr"] = best
        return best

    def write_partial() -> None:
        state["summary"] = summarize_runs(state["runs"], cfg["budgets"], cfg["repeats"])
        resume.write_partial(out_dir, state)

    inner = bool(progress and cfg.get("inner_progress"))
    todo = [j for j in jobs if not is_done(j)]
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="label efficiency",
        disable=not progress,
    )
    for job in todo:
        kind, arm, mode, b, r, lr = job
        name = arm["name"]
        run_lr = lr if kind == "tune" else chosen_lr(arm, mode)
        if kind == "run":
            state["arms"][name]["lr"][mode] = run_lr
        bar.set_description(
            f"{name} {mode} {b} r={r}" + (f" tune lr={lr:g}" if kind == "tune" else "")
        )
        seed = splits[b][str(r)]["seed"]
        tr = indices(splits[b][str(r)]["files"])
        va = indices(validation[str(r)]["files"])
        steps, val_every = run_steps(cfg, len(tr))
        run_cfg = {
            **cfg,
            "lr": run_lr,
            "steps": steps,
            "val_every": val_every,
            "warmup_steps": int(round(float(cfg["warmup_fraction"]) * steps)),
        }
        start = time.perf_counter()
        metrics: dict[str, float] = {}
        if mode == "finetune":
            tx, sx = images_for(arm)
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
                progress=inner,
            )
            if kind == "run":
                metrics = evaluate_classifier(
                    model, sx, test_y, batch_size=int(cfg["eval_batch_size"]), device=device
                )
            del model
        else:
            ftr, fte = features_for(arm, r)
            head, info = train_linear_probe(
                ftr[tr], train_y[tr], ftr[va], train_y[va], cfg=run_cfg, seed=seed
            )
            if kind == "run":
                metrics = evaluate_probe(head, fte, test_y)
        if kind == "tune":
            tuning = state["tuning"].setdefault(name, {}).setdefault(mode, {"val_auc": {}})
            tuning["val_auc"].setdefault(repr(lr), {})[b] = info.get("best_val_score")
        else:
            record = {
                "auc": metrics["auc"],
                "accuracy": metrics["accuracy"],
                "lr": run_lr,
                "seed": seed,
                "steps": steps,
                "n_train": len(tr),
                "best_val_auc": info.get("best_val_score"),
                "best_step": info.get("best_step"),
                "seconds": round(time.perf_counter() - start, 2),
            }
            state["runs"].setdefault(name, {}).setdefault(mode, {}).setdefault(b, {})[str(r)] = (
                record
            )
            bar.write(
                f"{name} {mode} {b} repeat={r}: AUC {record['auc']:.3f}, accuracy "
                f"{record['accuracy']:.3f} ({record['seconds']:.0f} s)"
            )
        write_partial()
        bar.update(1)
    bar.close()

    names = [a["name"] for a in arms]
    for arm in arms:
        for mode in cfg["modes"]:
            state["arms"][arm["name"]]["lr"][mode] = chosen_lr(arm, mode)
    state["summary"] = summarize_runs(state["runs"], cfg["budgets"], cfg["repeats"])
    state["budget_summary"] = summarize_budgets(splits, cfg["budgets"], cfg["repeats"])
    state["complete"] = all(is_done(j) for j in jobs)
    resume.write_final(out_dir, state)
    atomic_write_text(out_dir / "results.md", markdown_report(state, names, cfg["modes"]))
    plot_label_efficiency(
        state,
        names,
        cfg["modes"],
        out_dir / PLOT,
        title="Pneumonia vs normal (test set, mean ± sd over repeats)",
    )
    return state
