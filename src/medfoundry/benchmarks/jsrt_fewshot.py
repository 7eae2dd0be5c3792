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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfoundry.benchmarks import engine
from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Flag, Job
from medfoundry.benchmarks.state import PARTIAL, RESULTS
from medfoundry.data.segmentation import load_segmentation_set, structure_groups
from medfoundry.errors import MedfoundryError
from medfoundry.evaluate.arms import arm_checkpoint, arm_info, arm_table_row, load_reports
from medfoundry.evaluate.arms import data_key as _data_key
from medfoundry.evaluate.arms import resolve_arms as _resolve_arms
from medfoundry.evaluate.arms import slug as _slug
from medfoundry.evaluate.baselines import MEAN_MASK, mean_mask_dice
from medfoundry.evaluate.report import markdown_table, plot_metric_vs_k
from medfoundry.metrics.summary import describe
from medfoundry.runtime import atomic_write_text
from medfoundry.tasks.segmentation import (
    SWIN_RECIPE_KEY,
    evaluate,
    is_swin,
    segmentation_recipe,
    train_segmenter,
)

__all__ = [
    "JSRT_STRUCTURES",
    "PARTIAL",
    "RESULTS",
    "SPEC",
    "resolve_arms",
    "run_jsrt_fewshot",
    "split_ids",
]

#: The JSRT / SCR structures the benchmark reports and the mask folders whose union each is
#: (a `structures` name outside it is the mask of that name).
JSRT_STRUCTURES: dict[str, tuple[str, ...]] = {
    "heart": ("heart",),
    "clavicle": ("left_clavicle", "right_clavicle"),
    "lungs": ("left_lung", "right_lung"),
}

DEFAULT_CONFIG: dict[str, Any] = {
    "shots": [3, 6, 12, 24],
    "repeats": 3,
    "base_seed": 0,
    "val_size": 10,
    "structures": list(JSRT_STRUCTURES),
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


class JsrtFewshot(BenchmarkSpec):
    """The JSRT few-shot protocol (module docstring) for the engine."""

    name = "jsrt_fewshot"
    command = "jsrt-fewshot"
    help = "Adam paper few-shot SCR segmentation (heart, clavicle, lungs)"
    preset = "jsrt_fewshot"
    defaults = DEFAULT_CONFIG
    resume_free = _RESUME_FREE
    score = "val_dice"
    flags = (Flag("--shots", "shots", "[shots]", type=int, nargs="+"),)
    train_help = "JSRT-layout training pool"
    test_help = "JSRT-layout test folder"

    def resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        cfg = super().resolve_config(config)
        cfg["shots"] = [int(k) for k in cfg["shots"]]
        cfg["repeats"] = int(cfg["repeats"])
        return cfg

    def free_keys(self, cfg: dict[str, Any], ctx: Context, stored: dict[str, Any]) -> set[str]:
        """Also free: the `swin:` section when no arm is a Swin, and `_ADDED_KEYS` the stored
        config lacks while the new one holds their neutral value."""
        free = set(_RESUME_FREE)
        if not any(is_swin(a["backbone"]) for a in ctx.arms):
            free.add(SWIN_RECIPE_KEY)
        return free | {k for k, v in _ADDED_KEYS.items() if k not in stored and cfg.get(k) == v}

    def prepare(self, cfg, train_data, test_data, pretrained, out_dir, progress) -> Context:
        structures = list(cfg["structures"])
        groups = structure_groups(structures, named=JSRT_STRUCTURES)
        members = sorted({m for g in groups.values() for m in g})
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
        arm_cfg = arm_configs(cfg, arms)
        splits = {
            (k, r): split_ids(pool_ids, k, int(cfg["val_size"]), run_seed(cfg, k, r))
            for k in cfg["shots"]
            for r in range(cfg["repeats"])
        }
        if any(_tune_lrs(arm_cfg, a) for a in arms) and int(cfg["val_size"]) < 1:
            raise MedfoundryError("config: tuning needs validation images (val_size >= 1)")
        header = {
            "config": cfg,
            "train_data": str(train_data) if isinstance(train_data, (str, Path)) else None,
            "test_data": str(test_data) if isinstance(test_data, (str, Path)) else None,
            "pool_size": len(pool_ids),
            "test_ids": test_ids,
        }
        ctx = Context(
            arms=arms,
            header=header,
            identity={"test_ids": test_ids, "pool_size": len(pool_ids)},
            data={
                "cfg": cfg,
                "structures": structures,
                "groups": groups,
                "reports": reports,
                "arm_cfg": arm_cfg,
                "splits": splits,
                "pool_ids": pool_ids,
                "test_ids": test_ids,
                "by_id": {str(it.id): it for it in train_items},
                "test_by_id": {str(it.id): it for it in test_items},
                "pos": {i: n for n, i in enumerate(pool_ids)},
                "cache": {},
            },
        )
        _, ref_py, _, ref_ty = _data_for(ctx, arms[0])
        ctx.data["mean_mask_runs"] = {
            MEAN_MASK: _mean_mask_runs(ref_py, ref_ty, splits, ctx.data["pos"], structures)
        }
        return ctx

    def init_state(self, state: dict[str, Any], cfg: dict[str, Any], ctx: Context) -> None:
        state.update(ctx.header)
        stored = state.setdefault("splits", {})  # keeps the splits of shots no longer run
        for (k, r), (tr, va) in ctx.data["splits"].items():
            record = {"seed": run_seed(cfg, k, r), "train_ids": tr, "val_ids": va}
            stored.setdefault(str(k), {})[str(r)] = record

    def arm_record(self, ctx: Context, arm: dict[str, Any]) -> dict[str, Any]:
        info = arm_info(arm, ctx.data["reports"].get(arm["name"]))
        cfg = ctx.data["cfg"]
        if is_swin(arm["backbone"]) and cfg.get(SWIN_RECIPE_KEY):
            info["recipe"] = cfg[SWIN_RECIPE_KEY]
        return info

    def cells(self, cfg: dict[str, Any], group: tuple[str, ...]) -> list[str]:
        return [str(k) for k in cfg["shots"]]

    def lr_grid(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> list[float]:
        return _tune_lrs(ctx.data["arm_cfg"], arm)

    def default_lr(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> float:
        return float(ctx.data["arm_cfg"][arm["name"]]["lr"])

    def tune_cells(self, ctx: Context, group: tuple[str, ...]) -> list[str]:
        shots = ctx.data["cfg"]["shots"]
        return [str(k) for k in sorted({min(shots), max(shots)})]

    def run_job(self, ctx: Context, job: Job, lr: float) -> tuple[float | None, dict | None]:
        d, cfg, name = ctx.data, ctx.data["cfg"], job.arm_name
        k, r = int(job.cell), job.repeat
        px, py, tx, ty = _data_for(ctx, job.arm)
        tr_ids, va_ids = d["splits"][(k, r)]
        trx, try_ = _subset(d["pos"], px, py, tr_ids)
        vax, vay = _subset(d["pos"], px, py, va_ids)
        logs = None
        if cfg.get("keep_logs"):
            tag = f"k{k}_r{r}" + (f"_lr{job.lr:g}" if job.kind == "tune" else "")
            logs = ctx.out_dir / "logs" / _slug(name) / tag
        start = time.perf_counter()
        model, info = train_segmenter(
            trx,
            try_,
            vax,
            vay,
            backbone_cfg=job.arm["backbone"],
            pretrained=arm_checkpoint(job.arm),
            cfg={**d["arm_cfg"][name], "lr": lr},
            out_dir=logs,
            seed=run_seed(cfg, k, r),
            progress=bool(ctx.progress and cfg.get("inner_progress")),
            structures=d["structures"],
        )
        if job.kind == "tune":
            return info.get("best_val_dice"), None
        device = "cpu" if str(cfg.get("accelerator")) == "cpu" else None
        dice = evaluate(model, tx, ty, batch_size=int(cfg["eval_batch_size"]), device=device)
        dice = dice.numpy()
        structures = d["structures"]
        record = {
            "seed": run_seed(cfg, k, r),
            "lr": lr,
            "train_ids": tr_ids,
            "val_ids": va_ids,
            "dice_mean": {s: float(dice[:, j].mean()) for j, s in enumerate(structures)},
            "dice": {s: [round(float(v), 5) for v in dice[:, j]] for j, s in enumerate(structures)},
            "best_val_dice": info.get("best_val_dice"),
            "best_step": info.get("best_step"),
            "val_history": info.get("val_history"),
            "train_seconds": info.get("train_seconds"),
            "seconds": round(time.perf_counter() - start, 2),
        }
        return info.get("best_val_dice"), record

    def log_line(self, job: Job, record: dict[str, Any]) -> str:
        return (
            f"{job.arm_name} k={job.cell} repeat={job.repeat}: "
            + ", ".join(f"{s} {100 * v:.1f}" for s, v in record["dice_mean"].items())
            + f" ({record['seconds']:.0f} s)"
        )

    def summarize(self, state: dict[str, Any], ctx: Context) -> None:
        """The arms' summaries plus the mean-mask reference row."""
        cfg, structures = ctx.data["cfg"], ctx.data["structures"]
        state["summary"] = {
            **_summaries(state["runs"], structures, cfg["shots"], cfg["repeats"]),
            **_summaries(ctx.data["mean_mask_runs"], structures, cfg["shots"], cfg["repeats"]),
        }

    def report(self, state: dict[str, Any], ctx: Context, out_dir: Path) -> None:
        cfg, arms = ctx.data["cfg"], ctx.arms
        atomic_write_text(out_dir / "results.md", _markdown(state, arms))
        plot_metric_vs_k(
            {n: state["summary"].get(n, {}) for n in [a["name"] for a in arms] + [MEAN_MASK]},
            ctx.data["structures"],
            [str(k) for k in cfg["shots"]],
            out_dir / "results.png",
            metric="Dice",
            title="JSRT few-shot segmentation (test Dice, mean ± sd over repeats)",
        )


def _tune_lrs(arm_cfg: dict[str, dict[str, Any]], arm: dict[str, Any]) -> list[float]:
    tune = arm_cfg[arm["name"]].get("tune") or {}
    return [float(v) for v in tune.get("lr", [])]


def _data_for(ctx: Context, arm: dict[str, Any]):
    """(pool images, pool masks, test images, test masks) at the arm's size, loaded once."""
    d = ctx.data
    key = _data_key(arm)
    if key not in d["cache"]:
        load = dict(
            size=arm["image_size"],
            structures=d["groups"],
            channels=int(arm["backbone"]["in_channels"]),
            normalization=arm["normalization"],
        )
        px, py = load_segmentation_set([d["by_id"][i] for i in d["pool_ids"]], **load)
        tx, ty = load_segmentation_set([d["test_by_id"][i] for i in d["test_ids"]], **load)
        d["cache"][key] = (px, py, tx, ty)
    return d["cache"][key]


def _subset(pos: dict[str, int], px: torch.Tensor, py: torch.Tensor, ids: list[str]):
    idx = torch.tensor([pos[i] for i in ids], dtype=torch.long)
    return px[idx], py[idx]


SPEC = JsrtFewshot()


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
    return engine.run_benchmark(SPEC, train_data, test_data, pretrained, out_dir, config, progress)
