"""Hippocampus few-shot 3D segmentation benchmark (MSD Task04: anterior / posterior), resumable.

Per arm (each pretrained 3D checkpoint, plus scratch), label budget (``budgets``: 5, 10, 20,
"all" labeled training cases) and repeat, a 3D segmenter (``tasks.segmentation3d``) is trained
on cases of the TRAIN folder and scored (Dice, HD95 per class) on every case of the TEST folder.
``run_hippocampus_fewshot`` is the entry point, ``HippocampusFewshot`` / ``SPEC`` the engine's
spec, ``DEFAULT_CONFIG`` the keys.

Rules (stores, networks, subsets and seeds, learning rate, outputs):
docs/rules/benchmarks.md, "Hippocampus few-shot".
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medfoundry.benchmarks import engine
from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Flag, Job
from medfoundry.benchmarks.state import PARTIAL, RESULTS
from medfoundry.config import merge
from medfoundry.data.store.build import prepare_store
from medfoundry.data.store.checks import label_classes
from medfoundry.data.store.reader import Store, open_store
from medfoundry.data.store.settings import prepare_kwargs
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.evaluate.arms import checkpoint_arm_name, is_scratch_entry, slug
from medfoundry.evaluate.report import markdown_table, plot_metric_vs_k
from medfoundry.metrics.summary import describe
from medfoundry.nets.segmenters3d import check_patch, create_segmenter3d
from medfoundry.runtime import atomic_write_text
from medfoundry.tasks import segmentation3d as seg3d
from medfoundry.tasks.segmentation3d import evaluate_cases, train_segmenter3d
from medfoundry.zoo import resolve_checkpoint
from medfoundry.zoo.adapt3d import (
    build_segmenter3d,
    check_preprocessing,
    network_setup,
    network_size_multiple,
    prepare_settings,
)

__all__ = [
    "PARTIAL",
    "RESULTS",
    "SPEC",
    "parse_budgets",
    "resolve_arms3d",
    "run_hippocampus_fewshot",
]

# The fine-tuning recipe (`tasks.segmentation3d.TRAIN_DEFAULTS`) at the full-scale preset's
# network and step budget (configs/hippocampus_fewshot.yaml), plus the protocol keys.
DEFAULT_CONFIG: dict[str, Any] = merge(
    {k: v for k, v in seg3d.TRAIN_DEFAULTS.items() if k not in ("val_fraction", "seed")},
    {
        "budgets": [5, 10, 20, "all"],
        "repeats": 3,
        "base_seed": 0,
        "val_size": 10,
        "resnet_unet": {
            "backbone": {"name": "resnet18", "width": 1.0},
            "decoder_channels": [256, 128, 64, 32, 16],
        },
        "batch_size": 4,
        "steps": 3000,
        "val_every": 250,
        "tune": None,  # e.g. {"lr": [3e-4, 1e-3, 3e-3]}
        "inner_progress": False,
        "keep_logs": False,
    },
)

# Keys that do not change any finished run's numbers: a restart may differ in them.
_RESUME_FREE = {"budgets", "repeats", "inner_progress", "keep_logs", "num_workers"}


def parse_budgets(values: Sequence[Any]) -> list[int | str]:
    """Budgets as positive ints and/or "all", de-duplicated in the given order."""
    out: list[int | str] = []
    for v in values:
        text = str(v).strip().lower()
        if text == "all":
            budget: int | str = "all"
        elif text.isdigit() and int(text) >= 1:
            budget = int(text)
        else:
            raise MedfoundryError(f"budget {v!r}: expected a positive number of cases or 'all'")
        if budget not in out:
            out.append(budget)
    if not out:
        raise MedfoundryError("config: budgets is empty")
    return out


def resolve_arms3d(
    pretrained: Sequence[str | Path | None], config: dict[str, Any]
) -> list[dict[str, Any]]:
    """One arm per 3D checkpoint (method + folder name), then one scratch arm per distinct
    network among them ("scratch", then "scratch-<network>"); without checkpoints a single
    "scratch" arm with ``config["network"]``."""
    arms: list[dict[str, Any]] = []
    names: set[str] = {"scratch"}
    for p in pretrained:
        if is_scratch_entry(p):
            continue
        setup = network_setup(config, p)  # reads the checkpoint once, for every step
        meta = setup["meta"]
        name = checkpoint_arm_name(meta, p, names)
        arms.append(
            {
                "name": name,
                "checkpoint": str(p),
                "resolved": setup["resolved"],
                "method": meta.method if meta is not None else None,
                "network": setup["network"],
                "options": setup["options"],
            }
        )
    names.discard("scratch")
    scratch: list[dict[str, Any]] = []
    seen: list[tuple[str, str]] = []
    sources = arms or [{**network_setup(config, None), "name": "scratch"}]
    for arm in sources:
        signature = (arm["network"], repr(sorted(arm["options"].items())))
        if signature in seen:
            continue
        seen.append(signature)
        name = "scratch" if not scratch else f"scratch-{slug(arm['network'])}"
        while name in names:
            name += "+"
        names.add(name)
        scratch.append(
            {
                "name": name,
                "checkpoint": None,
                "method": "scratch",
                "network": arm["network"],
                "options": copy.deepcopy(arm["options"]),
            }
        )
    return arms + scratch


def same_arm_network(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two arms' entries (``network``, ``options``) build the same network: equal
    parameter names and shapes (options may spell defaults out or leave them implicit)."""
    if a.get("network") != b.get("network"):
        return False

    def shapes(arm: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        net = create_segmenter3d(arm["network"], 1, 3, **copy.deepcopy(arm.get("options") or {}))
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}

    return shapes(a) == shapes(b)


def _setup(arm: dict[str, Any]) -> dict[str, Any]:
    """The ``network_setup`` dict an arm trains with."""
    resolved = arm.get("resolved")
    return {k: arm[k] for k in ("network", "options", "checkpoint")} | {
        "meta": None if resolved is None else resolved.meta,
        "resolved": resolved,
    }


def _prepare(
    train_data: Path, test_data: Path, out_dir: Path, cfg: dict[str, Any], arms: list[dict]
) -> tuple[Store, Store]:
    """The train and test stores under ``out_dir/stores`` (same preprocessing settings)."""
    meta = None
    for arm in arms:
        if arm["checkpoint"] is not None:
            meta = resolve_checkpoint(arm.get("resolved") or arm["checkpoint"]).meta
            break
    settings = prepare_settings(cfg, meta)
    prepare_store(train_data, out_dir / "stores" / "train", progress=False, **settings)
    train = open_store(out_dir / "stores" / "train")
    prepare_store(
        test_data,
        out_dir / "stores" / "test",
        progress=False,
        **prepare_kwargs(train.preprocessing),
    )
    return train, open_store(out_dir / "stores" / "test")


def _pool(store: Store) -> tuple[list[str], list[str]]:
    """(labeled training ids with a non-empty label, ids excluded for an empty label)."""
    ids = [c["id"] for c in store.cases if c.get("label_file") and c.get("split") != "test"]
    empty = [c["id"] for c in store.cases if c.get("label_file") and c.get("empty_label")]
    return sorted(set(ids) - set(empty)), sorted(empty)


def draw_splits(
    pool_ids: Sequence[str],
    budgets: Sequence[int | str],
    val_size: int,
    repeats: int,
    base_seed: int,
    source: str | Path | None = None,
) -> dict[int, dict[str, Any]]:
    """Per repeat: the validation ids and the training ids of every budget (nested subsets)."""
    n = len(pool_ids)
    counts = [b for b in budgets if b != "all"]
    need = max([int(b) for b in counts] + [1]) + int(val_size)
    if val_size < 1 or need > n:
        largest = max(counts) if counts else "all (at least 1)"
        raise InputError(
            source,
            f"{n} labeled training cases (empty labels excluded) do not fit budget {largest} + "
            f"{val_size} validation cases ({need} needed); lower val_size or the budgets",
        )
    ordered = sorted(pool_ids)
    splits: dict[int, dict[str, Any]] = {}
    for r in range(int(repeats)):
        perm = np.random.default_rng([int(base_seed), r]).permutation(n)
        order = [ordered[i] for i in perm]
        rest = order[val_size:]
        splits[r] = {
            "val_ids": order[:val_size],
            "train_ids": {str(b): rest if b == "all" else rest[: int(b)] for b in budgets},
        }
    return splits


def run_seed(config: dict[str, Any], n_train: int, repeat: int) -> int:
    """Training seed of a run: ``base_seed + 1000 * repeat + n_train``."""
    return int(config["base_seed"]) + 1000 * int(repeat) + int(n_train)


def _summaries(
    runs: dict[str, Any], classes: list[str], budgets: list[str], metric: str
) -> dict[str, Any]:
    """summary[arm][budget][class or "mean"] = mean/sd/n over repeats of the run means."""
    out: dict[str, Any] = {}
    for arm, per_budget in runs.items():
        out[arm] = {}
        for b in budgets:
            reps = list(per_budget.get(b, {}).values())
            if reps:
                out[arm][b] = {
                    c: describe([r[f"{metric}_mean"][c] for r in reps]) for c in [*classes, "mean"]
                }
    return out


def _rows(runs: dict[str, Any], classes: list[str]) -> list[dict[str, Any]]:
    """One flat row per (arm, budget, repeat): run means per class."""
    rows = []
    for arm, per_budget in runs.items():
        for b, reps in per_budget.items():
            for r, rec in sorted(reps.items(), key=lambda kv: int(kv[0])):
                row = {"arm": arm, "budget": b, "repeat": int(r), "n_train": len(rec["train_ids"])}
                for metric in ("dice", "hd95"):
                    for c in [*classes, "mean"]:
                        if c in rec.get(f"{metric}_mean", {}):
                            row[f"{metric}_{c}"] = rec[f"{metric}_mean"][c]
                rows.append(row)
    return rows


def _markdown(state: dict[str, Any], arms: list[dict[str, Any]]) -> str:
    """results.md: Dice and HD95 tables (mean ± sd over repeats) and the arms."""
    cfg, classes = state["config"], state["classes"]
    budgets = [str(b) for b in cfg["budgets"]]
    names = [a["name"] for a in arms]
    cols = [*classes, "mean"]
    lines = [
        "# Hippocampus few-shot 3D segmentation",
        "",
        f"Dice (%) on every one of the {len(state['test_ids'])} test cases, mean ± sd over "
        f"{cfg['repeats']} repeats (different training cases per repeat, the same for every "
        f"arm); n labeled training cases from a pool of {state['pool_size']} (all = "
        f"{state['n_all']}), model selection on {cfg['val_size']} validation cases of the same "
        f"pool; {cfg['steps']} steps of {cfg['batch_size']} patches "
        f"{'×'.join(map(str, cfg['patch_size']))}.",
        "",
        markdown_table(state["summary"], cols, budgets, arms=names, k_label="n"),
    ]
    if "summary_hd95" in state:
        lines += [
            "HD95 (mm), mean ± sd over repeats:",
            "",
            markdown_table(
                state["summary_hd95"], cols, budgets, arms=names, scale=1.0, digits=2, k_label="n"
            ),
        ]
    lines += [
        "| arm | checkpoint | network | initialisation | lr |",
        "|---|---|---|---|---|",
    ]
    for a in arms:
        info = state["arms"][a["name"]]
        net = info["network"]
        bb = (info.get("options") or {}).get("backbone")
        if bb:
            net += f" ({bb.get('name', net)} ×{bb.get('width', 1.0)})"
        lines.append(
            f"| {a['name']} | {info['checkpoint'] or '–'} | {net} | {info['load_report']} | "
            f"{info.get('lr')} |"
        )
    if not state.get("complete"):
        lines += ["", "**Incomplete**: some runs have not finished yet."]
    return "\n".join(lines) + "\n"


class HippocampusFewshot(BenchmarkSpec):
    """The Hippocampus few-shot 3D protocol (docs/rules/benchmarks.md) for the engine."""

    name = "hippocampus_fewshot"
    command = "hippocampus-fewshot"
    help = (
        "3D few-shot segmentation of the hippocampus (anterior, posterior Dice and HD95) "
        "with 5, 10, 20 and all labeled cases, each checkpoint against an equally tuned scratch arm"
    )
    description = (
        "Prepares both MSD folders into 3D stores under --out (same preprocessing), "
        "trains every arm on the same seeded subsets, scores every test case, and writes "
        "results.json, results.md and results.png; a rerun resumes "
        "(protocol: medfoundry.benchmarks.hippocampus_fewshot)."
    )
    preset = "hippocampus_fewshot"
    defaults = DEFAULT_CONFIG
    resume_free = _RESUME_FREE
    score = "val_dice"
    size_flag = "patch-size"
    flags = (Flag("--budgets", "budgets", "[budgets] labeled case counts and/or 'all'", nargs="+"),)
    train_help = (
        "MSD-layout training pool (imagesTr/, labelsTr/, dataset.json); validation cases "
        "come from here"
    )
    test_help = "MSD-layout test folder (evaluation only)"
    pretrained_help = (
        "3D run folder(s)/checkpoint(s) (volume_fusion, voco), or 'none' for scratch only"
    )

    def resolve_config(self, config: dict[str, Any]) -> dict[str, Any]:
        cfg = merge(DEFAULT_CONFIG, config)
        cfg["budgets"] = parse_budgets(cfg["budgets"])
        cfg["repeats"] = int(cfg["repeats"])
        return cfg

    def prepare(self, cfg, train_data, test_data, pretrained, out_dir, progress) -> Context:
        arms = resolve_arms3d(pretrained, cfg)  # fails early on a 2D or misfitting checkpoint
        for arm in arms:  # and on a patch size that some arm's network cannot take
            try:
                check_patch(arm["network"], cfg["patch_size"], arm["options"])
            except ValueError as e:
                raise MedfoundryError(f"config patch_size, arm {arm['name']}: {e}") from e
        train_store, test_store = _prepare(Path(train_data), Path(test_data), out_dir, cfg, arms)
        classes_values, classes = label_classes(train_store)
        test_classes = label_classes(test_store)
        if test_classes != (classes_values, classes):
            raise InputError(
                test_data, f"labels {test_classes} differ from training labels {classes}"
            )
        for arm in arms:
            if arm["checkpoint"] is not None:
                check_preprocessing(
                    resolve_checkpoint(arm.get("resolved") or arm["checkpoint"]).meta,
                    arm["checkpoint"],
                    train_store,
                    bool(cfg["check_preprocessing"]),
                )
        reports = {
            a["name"]: build_segmenter3d(
                _setup(a), max(classes_values) + 1, float(cfg["min_fraction"])
            )[1]["summary"]
            for a in arms
        }
        if progress:
            for name, report in reports.items():
                tqdm.write(f"{name}: {report}")
        pool_ids, excluded = _pool(train_store)
        if excluded:
            warnings.warn(
                f"{len(excluded)} training case(s) with an empty label left out of the labeled "
                f"pool ({', '.join(excluded[:10])})",
                stacklevel=2,
            )
        test_ids = [c["id"] for c in test_store.cases if c.get("label_file")]
        if not test_ids:
            raise InputError(test_data, "no labeled test case")
        shared = sorted(set(pool_ids) & set(test_ids))
        if shared:
            raise MedfoundryError(
                f"{len(shared)} case ids are in both the train and the test folder (e.g. "
                f"{shared[:3]}); the test cases must be held out"
            )
        splits = draw_splits(
            pool_ids,
            cfg["budgets"],
            int(cfg["val_size"]),
            cfg["repeats"],
            int(cfg["base_seed"]),
            train_data,
        )
        n_all = len(pool_ids) - int(cfg["val_size"])
        header = {
            "config": cfg,
            "train_data": str(train_data),
            "test_data": str(test_data),
            "stores": {"train": str(train_store.root), "test": str(test_store.root)},
            "preprocessing": train_store.preprocessing,
            "classes": classes,
            "pool_ids": pool_ids,
            "pool_size": len(pool_ids),
            "n_all": n_all,
            "excluded_empty_labels": excluded,
            "test_ids": test_ids,
            "splits": {str(r): s for r, s in splits.items()},
        }
        test_pos = {cid: i for i, cid in enumerate(test_store.case_ids)}
        by_count = sorted(cfg["budgets"], key=lambda b: n_all if b == "all" else int(b))
        data = {
            "cfg": cfg,
            "reports": reports,
            "classes": classes,
            "splits": splits,
            "n_all": n_all,
            "train_store": train_store,
            "test_store": test_store,
            "index": {cid: i for i, cid in enumerate(train_store.case_ids)},
            "test_index": [test_pos[t] for t in test_ids],
            "tune_budgets": list(dict.fromkeys([str(by_count[0]), str(by_count[-1])])),
        }
        identity = {"test_ids": test_ids, "pool_ids": pool_ids}
        return Context(arms=arms, header=header, identity=identity, data=data)

    def arm_record(self, ctx: Context, arm: dict[str, Any]) -> dict[str, Any]:
        return {
            "checkpoint": arm["checkpoint"],
            "method": arm["method"],
            "network": arm["network"],
            "options": arm["options"],
            "load_report": ctx.data["reports"][arm["name"]],
        }

    def cells(self, cfg: dict[str, Any], group: tuple[str, ...]) -> list[str]:
        return [str(b) for b in cfg["budgets"]]

    def lr_grid(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> list[float]:
        return [float(v) for v in (ctx.data["cfg"].get("tune") or {}).get("lr", [])]

    def default_lr(self, ctx: Context, arm: dict[str, Any], group: tuple[str, ...]) -> float:
        return float(ctx.data["cfg"]["lr"])

    def tune_cells(self, ctx: Context, group: tuple[str, ...]) -> list[str]:
        return ctx.data["tune_budgets"]

    def run_job(self, ctx: Context, job: Job, lr: float) -> tuple[float | None, dict | None]:
        d, cfg, name, b, r = ctx.data, ctx.data["cfg"], job.arm_name, job.cell, job.repeat
        classes = d["classes"]
        split = d["splits"][r]
        train_ids, val_ids = split["train_ids"][b], split["val_ids"]
        seed = run_seed(cfg, len(train_ids), r)
        logs = None
        if cfg.get("keep_logs"):
            tag = f"n{b}_r{r}" + (f"_lr{job.lr:g}" if job.kind == "tune" else "")
            logs = ctx.out_dir / "logs" / slug(name) / tag
        start = time.perf_counter()
        model, info = train_segmenter3d(
            d["train_store"],
            [d["index"][i] for i in train_ids],
            [d["index"][i] for i in val_ids],
            setup=_setup(job.arm),
            cfg={**cfg, "lr": lr},
            seed=seed,
            out_dir=logs,
            progress=bool(ctx.progress and cfg.get("inner_progress")),
        )
        if job.kind == "tune":
            return info.get("best_val_dice"), None
        cases = evaluate_cases(
            model,
            d["test_store"],
            d["test_index"],
            cfg,
            size_multiple=network_size_multiple(job.arm),
        )
        record: dict[str, Any] = {
            "seed": seed,
            "lr": lr,
            "train_ids": train_ids,
            "val_ids": val_ids,
            "dice": {c: [x[f"dice_{c}"] for x in cases] for c in classes},
            "dice_mean": {c: float(np.mean([x[f"dice_{c}"] for x in cases])) for c in classes},
            "best_val_dice": info.get("best_val_dice"),
            "best_step": info.get("best_step"),
            "val_history": info.get("val_history"),
            "train_seconds": info.get("train_seconds"),
        }
        record["dice_mean"]["mean"] = float(np.mean([x["dice_mean"] for x in cases]))
        if cfg["hd95"]:
            record["hd95"] = {c: [x[f"hd95_{c}"] for x in cases] for c in classes}
            record["hd95_mean"] = {c: float(np.mean(record["hd95"][c])) for c in classes}
            record["hd95_mean"]["mean"] = float(np.mean(list(record["hd95_mean"].values())))
        record["seconds"] = round(time.perf_counter() - start, 2)
        return info.get("best_val_dice"), record

    def log_line(self, job: Job, record: dict[str, Any]) -> str:
        return (
            f"{job.arm_name} n={job.cell} repeat={job.repeat}: "
            + ", ".join(f"{c} {100 * record['dice_mean'][c]:.1f}" for c in record["dice"])
            + f" ({record['seconds']:.0f} s)"
        )

    def summarize(self, state: dict[str, Any], ctx: Context) -> None:
        cfg, classes = ctx.data["cfg"], ctx.data["classes"]
        budgets = [str(b) for b in cfg["budgets"]]
        state["summary"] = _summaries(state["runs"], classes, budgets, "dice")
        if cfg["hd95"]:
            state["summary_hd95"] = _summaries(state["runs"], classes, budgets, "hd95")

    def finalize(self, state: dict[str, Any], ctx: Context) -> None:
        state["rows"] = _rows(state["runs"], ctx.data["classes"])

    def report(self, state: dict[str, Any], ctx: Context, out_dir: Path) -> None:
        arms, n_all = ctx.arms, ctx.data["n_all"]
        atomic_write_text(out_dir / "results.md", _markdown(state, arms))
        budgets = [str(b) for b in ctx.data["cfg"]["budgets"]]
        counts = {b: str(n_all if b == "all" else int(b)) for b in budgets}
        plot_metric_vs_k(
            {
                a["name"]: {counts[b]: v for b, v in state["summary"].get(a["name"], {}).items()}
                for a in arms
            },
            [*ctx.data["classes"], "mean"],
            list(dict.fromkeys(counts.values())),
            out_dir / "results.png",
            metric="Dice",
            k_label=f"labeled training cases (all = {n_all})",
            title="Hippocampus few-shot segmentation (test Dice, mean ± sd over repeats)",
        )

    def same_network(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        return same_arm_network(a, b)


SPEC = HippocampusFewshot()


def run_hippocampus_fewshot(
    train_data: str | Path,
    test_data: str | Path,
    pretrained: Sequence[str | Path | None],
    out_dir: str | Path,
    config: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the benchmark and return the results dict written to results.json.

    train_data / test_data: nnU-Net/MSD-layout folders (imagesTr/, labelsTr/, dataset.json).
    pretrained: 3D checkpoint paths; None / "none" entries add no arm (scratch always runs).
    config: keys of ``DEFAULT_CONFIG`` (missing keys take those defaults).
    """
    return engine.run_benchmark(SPEC, train_data, test_data, pretrained, out_dir, config, progress)
