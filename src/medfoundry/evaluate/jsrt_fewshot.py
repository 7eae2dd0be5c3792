"""JSRT few-shot segmentation benchmark (the Adam paper's protocol), resumable.

For every arm (each pretrained checkpoint, plus training from scratch with the same network
and recipe), every k in `shots` and every repeat, a ResNet-UNet is trained on k images drawn
from the TRAIN folder, model-selected on `val_size` other images of the train folder, and
scored on every image of the TEST folder (Dice per image for heart, clavicles (left+right)
and lungs). The k training images and the validation images of a (k, repeat) pair are drawn
with seed `base_seed + 1000 * repeat + k`, so every arm sees the same subsets.

Outputs in `out_dir`: `results.json` (config, splits, per-run per-image Dice, summaries, load
reports), `results.md` (mean ± sd table), `results.png` (Dice vs k). While running,
`results.partial.json` is rewritten atomically after every run; a restart skips finished runs.

The summary and table also hold a `mean mask` reference row (`evaluate.baselines`): for every
(k, repeat) the pixel-wise mean of the k training masks thresholded at 0.5, predicted for every
test image (no training; the first arm's image size). It is recomputed on every call (cheap and
deterministic) and kept in `summary` only, so older result files load and resume unchanged.

Swin-UNet arms train with the config's `swin:` section merged over the general training keys
(`medfoundry.tasks.segmentation.segmentation_recipe`; its `tune` grid included); ResNet arms
ignore it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medfoundry.data.segmentation import load_segmentation_set, structure_groups
from medfoundry.errors import MedfoundryError
from medfoundry.evaluate import resume
from medfoundry.evaluate.arms import arm_checkpoint, arm_info, arm_table_row, load_reports
from medfoundry.evaluate.arms import data_key as _data_key
from medfoundry.evaluate.arms import resolve_arms as _resolve_arms
from medfoundry.evaluate.arms import slug as _slug
from medfoundry.evaluate.baselines import MEAN_MASK, mean_mask_dice
from medfoundry.evaluate.report import markdown_table, plot_metric_vs_k
from medfoundry.evaluate.resume import PARTIAL, RESULTS, load_state, write_final
from medfoundry.evaluate.summary import describe
from medfoundry.runtime import atomic_write_text, record_run
from medfoundry.tasks.segmentation import (
    SWIN_RECIPE_KEY,
    evaluate,
    is_swin,
    segmentation_recipe,
    train_segmenter,
)

__all__ = ["PARTIAL", "RESULTS", "resolve_arms", "run_jsrt_fewshot", "split_ids"]

DEFAULT_CONFIG: dict[str, Any] = {
    "shots": [3, 6, 12, 24],
    "repeats": 3,
    "base_seed": 0,
    "val_size": 10,
    "structures": ["heart", "clavicle", "lungs"],
    "image_size": None,  # None: the checkpoint's input_size, else default_image_size
    "default_image_size": 256,
    "normalization": None,  # None: the checkpoint's, else the X-ray default
    "backbone": {"name": "resnet50", "in_channels": 1, "width": 1.0, "spatial_dims": 2},
    "decoder_channels": [256, 128, 64, 32, 16],
    "steps": 600,
    "batch_size": 4,
    "val_every": 50,
    "eval_batch_size": 16,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "warmup_steps": None,
    "warmup_fraction": None,  # None: 5 % (used when warmup_steps is None)
    "encoder_lr_mult": 1.0,
    "grad_clip": None,  # gradient-norm clipping (None: off)
    "layer_decay": None,  # layer-wise lr decay of a Swin encoder (None: off)
    "augment": {"max_shift": 0.1, "max_scale": 0.1, "max_rotate_deg": 10.0, "intensity": 0.2},
    "precision": "32-true",
    "accelerator": "auto",
    "tune": None,  # e.g. {"lr": [3e-4, 1e-3, 3e-3]}
    "inner_progress": False,  # Lightning's per-run bars (only when progress=True)
    "keep_logs": False,  # write each run's CSV logs under out_dir/logs/
    "swin": None,  # training keys (tune included) that replace the above for Swin-UNet arms
}

# Keys that do not change any finished run's numbers: a restart may differ in them.
_RESUME_FREE = {"shots", "repeats", "inner_progress", "keep_logs", "eval_batch_size"}
# Keys added after results were first stored, with the value that reproduces the older runs:
# a stored config without the key resumes when the new config holds that value.
_ADDED_KEYS: dict[str, Any] = {"warmup_fraction": None, "grad_clip": None, "layer_decay": None}
# Protocol keys that a `swin:` section must not change (every arm sees the same protocol);
# the data keys are refused by `segmentation_recipe` itself.
_PROTOCOL_KEYS = {"shots", "repeats", "base_seed", "val_size"}


def split_ids(pool_ids: Sequence[str], k: int, val_size: int, seed: int) -> tuple[list, list]:
    """Draw k training ids and `val_size` validation ids (disjoint) from the pool with `seed`."""
    n = len(pool_ids)
    if k < 1 or k + val_size > n:
        raise MedfoundryError(
            f"train folder has {n} images; k={k} training + {val_size} validation images "
            "do not fit (lower val_size or the shots)"
        )
    perm = np.random.default_rng(seed).permutation(n)
    ordered = sorted(pool_ids)
    return [ordered[i] for i in perm[:k]], [ordered[i] for i in perm[k : k + val_size]]


def run_seed(config: dict[str, Any], k: int, repeat: int) -> int:
    return int(config["base_seed"]) + 1000 * int(repeat) + int(k)


def resolve_arms(
    pretrained: Sequence[str | Path | None], config: dict[str, Any]
) -> list[dict[str, Any]]:
    """The benchmark's arms (`medfoundry.evaluate.arms.resolve_arms`, named "JSRT" in errors)."""
    return _resolve_arms(pretrained, config, benchmark="JSRT")


def _items(data: Any, members: list[str]) -> list[Any]:
    if isinstance(data, (str, Path)):
        from medfoundry.data.manifest import scan_segmentation_folder

        return scan_segmentation_folder(Path(data), structures=members)
    return list(data)


def _load_state(out_dir: Path, config: dict[str, Any], arms: list[dict[str, Any]]) -> dict:
    """The stored state (see `resume.load_state`); keys that cannot have changed any stored run
    are free: the `swin:` section when no arm is a Swin, and `_ADDED_KEYS` the stored config
    lacks while the new one holds their neutral value."""
    free = set(_RESUME_FREE)
    if not any(is_swin(a["backbone"]) for a in arms):
        free.add(SWIN_RECIPE_KEY)
    found = resume.stored_state(out_dir)
    old = found[1].get("config", {}) if found else {}
    free |= {k for k, v in _ADDED_KEYS.items() if k not in old and config.get(k) == v}
    return load_state(out_dir, config, free)


def arm_configs(cfg: dict[str, Any], arms: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each arm's training config (`segmentation_recipe`: the `swin:` section for Swin arms).
    Raises MedfoundryError when the section would change the protocol (shots, splits, data)."""
    section = cfg.get(SWIN_RECIPE_KEY) or {}
    bad = sorted(set(section) & _PROTOCOL_KEYS) if isinstance(section, dict) else []
    if bad:
        raise MedfoundryError(
            f"config: the {SWIN_RECIPE_KEY!r} section may hold training keys only, not {bad}"
        )
    return {a["name"]: segmentation_recipe(cfg, a["backbone"]) for a in arms}


def _summaries(
    runs: dict[str, Any], structures: list[str], shots: list[int], repeats: int
) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for arm, per_k in runs.items():
        summary[arm] = {}
        for k in shots:
            reps = [per_k.get(str(k), {}).get(str(r)) for r in range(repeats)]
            reps = [r for r in reps if r is not None]
            if not reps:
                continue
            summary[arm][str(k)] = {
                s: describe([r["dice_mean"][s] for r in reps]) for s in structures
            }
            summary[arm][str(k)]["mean"] = describe(
                [float(np.mean([r["dice_mean"][s] for s in structures])) for r in reps]
            )
    return summary


def _mean_mask_runs(
    py: torch.Tensor,
    ty: torch.Tensor,
    splits: dict[tuple[int, int], tuple[list[str], list[str]]],
    pos: dict[str, int],
    structures: list[str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """`{k: {repeat: {"dice_mean": {structure: Dice}}}}` of the mean-mask reference on the test
    masks `ty`, from the training masks of each split (rows of the pool masks `py`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (k, r), (tr_ids, _) in splits.items():
        idx = torch.tensor([pos[i] for i in tr_ids], dtype=torch.long)
        dice = mean_mask_dice(py[idx], ty).numpy()
        out.setdefault(str(k), {})[str(r)] = {
            "dice_mean": {s: float(dice[:, j].mean()) for j, s in enumerate(structures)}
        }
    return out


def _markdown(state: dict[str, Any], arms: list[dict[str, Any]]) -> str:
    cfg = state["config"]
    structures, shots = cfg["structures"], cfg["shots"]
    names = [a["name"] for a in arms]
    if MEAN_MASK in state.get("summary", {}):
        names.append(MEAN_MASK)
    lines = [
        "# JSRT few-shot segmentation",
        "",
        f"Dice (%) on {len(state['test_ids'])} test images, mean ± sd over "
        f"{cfg['repeats']} repeats (different training images per repeat); k training "
        f"images from a pool of {state['pool_size']}, model selection on "
        f"{cfg['val_size']} validation images of the same pool; {cfg['steps']} steps, "
        f"batch {cfg['batch_size']}."
        + (
            f" Swin-UNet arms: {cfg[SWIN_RECIPE_KEY]}."
            if cfg.get(SWIN_RECIPE_KEY) and any(is_swin(a["backbone"]) for a in arms)
            else ""
        )
        + (
            f" `{MEAN_MASK}`: the mean of the k training masks > 0.5 for every test image "
            "(no training)."
            if MEAN_MASK in state.get("summary", {})
            else ""
        ),
        "",
        markdown_table(state["summary"], structures, [str(k) for k in shots], arms=names),
        "| arm | checkpoint | network | input | load report | lr |",
        "|---|---|---|---|---|---|",
    ]
    for a in arms:
        info = state["arms"][a["name"]]
        lines.append(arm_table_row(a["name"], info, str(info.get("lr"))))
    if not state.get("complete"):
        lines += ["", "**Incomplete**: some runs have not finished yet."]
    return "\n".join(lines) + "\n"


def run_jsrt_fewshot(
    train_data: str | Path | Sequence[Any],
    test_data: str | Path | Sequence[Any],
    pretrained: Sequence[str | Path | None],
    out_dir: str | Path,
    config: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark and return the results dict written to results.json.

    train_data / test_data: folders in the segmentation layout (images/<ID>.png,
    masks/<structure>/<ID>.png), or lists of items with `.id`, `.image`, `.masks`.
    pretrained: checkpoint paths; None / "none" entries mean no extra arm (scratch always runs).
    config: keys of `DEFAULT_CONFIG` (missing keys take those defaults).
    """
    cfg = {**copy.deepcopy(DEFAULT_CONFIG), **copy.deepcopy(config)}
    cfg["shots"] = [int(k) for k in cfg["shots"]]
    cfg["repeats"] = int(cfg["repeats"])
    structures = list(cfg["structures"])
    groups = structure_groups(structures)
    members = sorted({m for g in groups.values() for m in g})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    arms = resolve_arms(pretrained, cfg)
    reports = load_reports(arms)  # fails early on a checkpoint that does not fit its network

    train_items = _items(train_data, members)
    test_items = _items(test_data, members)
    if not train_items:
        raise MedfoundryError(f"{train_data}: no training images")
    if not test_items:
        raise MedfoundryError(f"{test_data}: no test images")
    pool_ids = sorted(str(it.id) for it in train_items)
    test_ids = sorted(str(it.id) for it in test_items)
    shared = sorted(set(pool_ids) & set(test_ids))
    if shared:
        raise MedfoundryError(
            f"{len(shared)} image ids are in both the train and the test folder "
            f"(e.g. {shared[:3]}); the test images must be held out"
        )
    by_id = {str(it.id): it for it in train_items}
    test_by_id = {str(it.id): it for it in test_items}

    state = _load_state(out_dir, cfg, arms)
    arm_cfg = arm_configs(cfg, arms)
    if state.get("runs") and (
        state.get("test_ids") != test_ids or state.get("pool_size") != len(pool_ids)
    ):
        raise MedfoundryError(
            f"{out_dir}: holds results for other train/test folders "
            f"({state.get('pool_size')} pool / {len(state.get('test_ids') or [])} test images); "
            "use another output folder"
        )
    state.update(
        {
            "benchmark": "jsrt_fewshot",
            "config": cfg,
            "train_data": str(train_data) if isinstance(train_data, (str, Path)) else None,
            "test_data": str(test_data) if isinstance(test_data, (str, Path)) else None,
            "pool_size": len(pool_ids),
            "test_ids": test_ids,
            "complete": False,
        }
    )
    state.setdefault("runs", {})
    state.setdefault("tuning", {})
    state.setdefault("splits", {})
    state.setdefault("arms", {})
    record_run(out_dir, cfg)

    splits: dict[tuple[int, int], tuple[list[str], list[str]]] = {}
    for k in cfg["shots"]:
        for r in range(cfg["repeats"]):
            seed = run_seed(cfg, k, r)
            tr, va = split_ids(pool_ids, k, int(cfg["val_size"]), seed)
            splits[(k, r)] = (tr, va)
            state["splits"].setdefault(str(k), {})[str(r)] = {
                "seed": seed,
                "train_ids": tr,
                "val_ids": va,
            }

    data_cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def data_for(arm: dict[str, Any]):
        key = _data_key(arm)
        if key not in data_cache:
            load = dict(
                size=arm["image_size"],
                structures=groups,
                channels=int(arm["backbone"]["in_channels"]),
                normalization=arm["normalization"],
            )
            px, py = load_segmentation_set([by_id[i] for i in pool_ids], **load)
            tx, ty = load_segmentation_set([test_by_id[i] for i in test_ids], **load)
            data_cache[key] = (px, py, tx, ty)
        return data_cache[key]

    pos = {i: n for n, i in enumerate(pool_ids)}
    _, ref_py, _, ref_ty = data_for(arms[0])
    mean_mask_runs = {MEAN_MASK: _mean_mask_runs(ref_py, ref_ty, splits, pos, structures)}

    def summaries() -> dict[str, Any]:
        """The arms' summaries plus the mean-mask reference row."""
        return {
            **_summaries(state["runs"], structures, cfg["shots"], cfg["repeats"]),
            **_summaries(mean_mask_runs, structures, cfg["shots"], cfg["repeats"]),
        }

    def subset(px: torch.Tensor, py: torch.Tensor, ids: list[str]):
        idx = torch.tensor([pos[i] for i in ids], dtype=torch.long)
        return px[idx], py[idx]

    def tune_lrs(arm: dict[str, Any]) -> list[float]:
        tune = arm_cfg[arm["name"]].get("tune") or {}
        return [float(v) for v in tune.get("lr", [])]

    tune_ks = sorted({min(cfg["shots"]), max(cfg["shots"])})
    if any(tune_lrs(a) for a in arms) and int(cfg["val_size"]) < 1:
        raise MedfoundryError("config: tuning needs validation images (val_size >= 1)")
    jobs: list[tuple[str, dict[str, Any], int, int, float | None]] = []
    for arm in arms:
        for lr in tune_lrs(arm):
            for k in tune_ks:
                jobs.append(("tune", arm, k, 0, lr))
        for k in cfg["shots"]:
            for r in range(cfg["repeats"]):
                jobs.append(("run", arm, k, r, None))

    def is_done(job) -> bool:
        kind, arm, k, r, lr = job
        if kind == "tune":
            return str(k) in state["tuning"].get(arm["name"], {}).get("val_dice", {}).get(
                repr(lr), {}
            )
        return str(r) in state["runs"].get(arm["name"], {}).get(str(k), {})

    def chosen_lr(arm: dict[str, Any]) -> float:
        lrs = tune_lrs(arm)
        if not lrs:
            return float(arm_cfg[arm["name"]]["lr"])
        tuning = state["tuning"].setdefault(arm["name"], {"val_dice": {}})
        scores = {
            lr: float(np.mean([tuning["val_dice"][repr(lr)][str(k)] for k in tune_ks]))
            for lr in lrs
        }
        best = max(lrs, key=lambda lr: scores[lr])
        tuning["mean_val_dice"] = {repr(lr): scores[lr] for lr in lrs}
        tuning["chosen_lr"] = best
        return best

    def write_partial() -> None:
        state["summary"] = summaries()
        resume.write_partial(out_dir, state)

    inner = bool(progress and cfg.get("inner_progress"))
    device = "cpu" if str(cfg.get("accelerator")) == "cpu" else None
    todo = [j for j in jobs if not is_done(j)]
    bar = tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), desc="jsrt few-shot", disable=not progress
    )
    for arm in arms:
        info_arm = arm_info(arm, reports.get(arm["name"]))
        if is_swin(arm["backbone"]) and cfg.get(SWIN_RECIPE_KEY):
            info_arm["recipe"] = cfg[SWIN_RECIPE_KEY]
        state["arms"].setdefault(arm["name"], {}).update(info_arm)
    for job in jobs:
        kind, arm, k, r, lr = job
        name = arm["name"]
        if is_done(job):
            continue
        run_lr = lr if kind == "tune" else chosen_lr(arm)
        if kind == "run":
            state["arms"][name]["lr"] = run_lr
        bar.set_description(f"{name} k={k} r={r}" + (f" tune lr={lr:g}" if kind == "tune" else ""))
        px, py, tx, ty = data_for(arm)
        tr_ids, va_ids = splits[(k, r)]
        trx, try_ = subset(px, py, tr_ids)
        vax, vay = subset(px, py, va_ids)
        run_cfg = {**arm_cfg[name], "lr": run_lr}
        logs = None
        if cfg.get("keep_logs"):
            tag = f"k{k}_r{r}" + (f"_lr{lr:g}" if kind == "tune" else "")
            logs = out_dir / "logs" / _slug(name) / tag
        start = time.perf_counter()
        model, info = train_segmenter(
            trx,
            try_,
            vax,
            vay,
            backbone_cfg=arm["backbone"],
            pretrained=arm_checkpoint(arm),
            cfg=run_cfg,
            out_dir=logs,
            seed=run_seed(cfg, k, r),
            progress=inner,
            structures=structures,
        )
        if kind == "tune":
            tuning = state["tuning"].setdefault(name, {"val_dice": {}})
            tuning["val_dice"].setdefault(repr(lr), {})[str(k)] = info.get("best_val_dice")
        else:
            dice = evaluate(
                model, tx, ty, batch_size=int(cfg["eval_batch_size"]), device=device
            ).numpy()
            record = {
                "seed": run_seed(cfg, k, r),
                "lr": run_lr,
                "train_ids": tr_ids,
                "val_ids": va_ids,
                "dice_mean": {s: float(dice[:, j].mean()) for j, s in enumerate(structures)},
                "dice": {
                    s: [round(float(v), 5) for v in dice[:, j]] for j, s in enumerate(structures)
                },
                "best_val_dice": info.get("best_val_dice"),
                "best_step": info.get("best_step"),
                "val_history": info.get("val_history"),
                "train_seconds": info.get("train_seconds"),
                "seconds": round(time.perf_counter() - start, 2),
            }
            state["runs"].setdefault(name, {}).setdefault(str(k), {})[str(r)] = record
            bar.write(
                f"{name} k={k} repeat={r}: "
                + ", ".join(f"{s} {100 * v:.1f}" for s, v in record["dice_mean"].items())
                + f" ({record['seconds']:.0f} s)"
            )
        write_partial()
        bar.update(1)
    bar.close()
    for arm in arms:
        state["arms"][arm["name"]]["lr"] = chosen_lr(arm)
    state["summary"] = summaries()
    state["complete"] = all(is_done(j) for j in jobs)
    write_final(out_dir, state)
    atomic_write_text(out_dir / "results.md", _markdown(state, arms))
    plot_metric_vs_k(
        {n: state["summary"].get(n, {}) for n in [a["name"] for a in arms] + [MEAN_MASK]},
        structures,
        [str(k) for k in cfg["shots"]],
        out_dir / "results.png",
        metric="Dice",
        title="JSRT few-shot segmentation (test Dice, mean ± sd over repeats)",
    )
    return state
