"""Hippocampus few-shot 3D segmentation benchmark (MSD Task04: anterior / posterior), resumable.

For every arm (each pretrained 3D checkpoint, plus training from scratch with the same network
and recipe), every label budget (``budgets``: 5, 10, 20 and "all" labeled training cases) and
every repeat, a 3D segmenter (``tasks.segmentation3d``) is trained on that many cases of the
TRAIN folder, model-selected on ``val_size`` other cases of the train folder, and scored on
EVERY case of the TEST folder (Dice and HD95 per class; the test folder is used for nothing
else).

- **Stores**: both folders (nnU-Net/MSD layout) are prepared under ``<out>/stores/{train,test}``
  with the same settings: the first checkpoint's recorded preprocessing (``prepare.
  match_checkpoint``), else the ``prepare`` config; the test store always takes the train
  store's resolved settings (its target spacing included). A rerun reuses both stores.
- **Networks**: each checkpoint decides its arm's network (``resnet_unet``; ``pctnet`` for a
  ``volume_fusion_pctnet`` checkpoint, fine-tuned with deep supervision unless
  ``pctnet.deep_supervision`` is false); ``patch_size`` must suit every arm's network (checked
  before any store is prepared).
- **Subsets**: per repeat ``r`` the sorted pool ids are permuted with seed ``[base_seed, r]``;
  the first ``val_size`` are the validation cases, the next ``n`` the training cases of budget
  ``n`` ("all": every other case), so budgets are nested and every arm sees the same cases.
  Training cases with an empty label are excluded from the pool (a budget counts annotated
  cases), with a warning; too few cases for the largest budget plus validation is an error.
- **Learning rate**: with ``tune: {lr: [...]}`` each arm trains every lr on repeat 0 at the
  smallest and the largest budget and keeps the one with the best mean validation Dice (test
  cases never take part), as ``jsrt_fewshot`` does.

Outputs in ``out_dir``: ``results.json`` (config, arms and load reports, splits, per-run
per-case Dice and HD95, a flat ``rows`` list with one row per (arm, budget, repeat),
summaries), ``results.md`` (mean ± sd over repeats per budget and class), ``results.png``
(Dice vs labeled cases, one line per arm). While running, ``results.partial.json`` is rewritten
atomically after every run; a restart skips finished runs.
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

from medfoundry.config import merge
from medfoundry.data.store3d import prepare_store
from medfoundry.data.store3d_reader import Store, open_store
from medfoundry.data.store3d_settings import prepare_kwargs
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.evaluate import resume
from medfoundry.evaluate.arms import checkpoint_arm_name, is_scratch_entry, slug
from medfoundry.evaluate.report import markdown_table, plot_metric_vs_k
from medfoundry.evaluate.resume import PARTIAL, RESULTS, load_state, write_final
from medfoundry.evaluate.summary import describe
from medfoundry.nets.segmenters3d import check_patch, create_segmenter3d
from medfoundry.runtime import atomic_write_text, record_run
from medfoundry.tasks import segmentation3d as seg3d
from medfoundry.tasks.segmentation3d import evaluate_cases, train_segmenter3d

__all__ = ["PARTIAL", "RESULTS", "parse_budgets", "resolve_arms3d", "run_hippocampus_fewshot"]

DEFAULT_CONFIG: dict[str, Any] = merge(
    {k: v for k, v in seg3d.TRAIN_DEFAULTS.items() if k not in ("val_fraction", "seed")},
    {
        "budgets": [5, 10, 20, "all"],
        "repeats": 3,
        "base_seed": 0,
        "val_size": 10,
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
        setup = seg3d.network_setup(config, p)  # reads the checkpoint once, for every step
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
    sources = arms or [{**seg3d.network_setup(config, None), "name": "scratch"}]
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
            meta = seg3d.resolve_checkpoint(arm.get("resolved") or arm["checkpoint"]).meta
            break
    settings = seg3d.prepare_settings(cfg, meta)
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
    cfg = merge(DEFAULT_CONFIG, config)
    cfg["budgets"] = parse_budgets(cfg["budgets"])
    cfg["repeats"] = int(cfg["repeats"])
    budgets = [str(b) for b in cfg["budgets"]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    arms = resolve_arms3d(pretrained, cfg)  # fails early on a 2D or misfitting checkpoint
    for arm in arms:  # and on a patch size that some arm's network cannot take
        try:
            check_patch(arm["network"], cfg["patch_size"], arm["options"])
        except ValueError as e:
            raise MedfoundryError(f"config patch_size, arm {arm['name']}: {e}") from e
    train_store, test_store = _prepare(Path(train_data), Path(test_data), out_dir, cfg, arms)
    classes_values, classes = seg3d.label_classes(train_store)
    test_classes = seg3d.label_classes(test_store)
    if test_classes != (classes_values, classes):
        raise InputError(test_data, f"labels {test_classes} differ from training labels {classes}")
    for arm in arms:
        if arm["checkpoint"] is not None:
            seg3d.check_preprocessing(
                seg3d.resolve_checkpoint(arm.get("resolved") or arm["checkpoint"]).meta,
                arm["checkpoint"],
                train_store,
                bool(cfg["check_preprocessing"]),
            )
    reports = {
        a["name"]: seg3d.build_segmenter3d(
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
            f"{len(excluded)} training case(s) with an empty label left out of the labeled pool "
            f"({', '.join(excluded[:10])})",
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

    state = load_state(out_dir, cfg, _RESUME_FREE)
    if state.get("runs") and (
        state.get("test_ids") != test_ids or state.get("pool_ids") != pool_ids
    ):
        raise MedfoundryError(
            f"{out_dir}: holds results for other train/test folders; use another output folder"
        )
    state.update(
        {
            "benchmark": "hippocampus_fewshot",
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
            "complete": False,
        }
    )
    for key in ("runs", "tuning", "arms"):
        state.setdefault(key, {})
    for arm in arms:
        state["arms"].setdefault(arm["name"], {}).update(
            {
                "checkpoint": arm["checkpoint"],
                "method": arm["method"],
                "network": arm["network"],
                "options": arm["options"],
                "load_report": reports[arm["name"]],
            }
        )
    record_run(out_dir, cfg)

    index = {cid: i for i, cid in enumerate(train_store.case_ids)}
    test_pos = {cid: i for i, cid in enumerate(test_store.case_ids)}
    test_index = [test_pos[t] for t in test_ids]
    tune_lrs = [float(v) for v in (cfg.get("tune") or {}).get("lr", [])]
    by_count = sorted(cfg["budgets"], key=lambda b: n_all if b == "all" else int(b))
    tune_budgets = list(dict.fromkeys([str(by_count[0]), str(by_count[-1])])) if tune_lrs else []
    jobs: list[tuple[str, dict[str, Any], str, int, float | None]] = []
    for arm in arms:
        jobs += [("tune", arm, b, 0, lr) for lr in tune_lrs for b in tune_budgets]
        jobs += [("run", arm, b, r, None) for b in budgets for r in range(cfg["repeats"])]

    def is_done(job: tuple) -> bool:
        kind, arm, b, r, lr = job
        if kind == "tune":
            scores = state["tuning"].get(arm["name"], {}).get("val_dice", {})
            return b in scores.get(repr(lr), {})
        return str(r) in state["runs"].get(arm["name"], {}).get(b, {})

    def chosen_lr(arm: dict[str, Any]) -> float:
        if not tune_lrs:
            return float(cfg["lr"])
        tuning = state["tuning"].setdefault(arm["name"], {"val_dice": {}})
        scores = {
            lr: float(np.mean([tuning["val_dice"][repr(lr)][b] or 0.0 for b in tune_budgets]))
            for lr in tune_lrs
        }
        best = max(tune_lrs, key=lambda lr: scores[lr])
        tuning["mean_val_dice"] = {repr(lr): scores[lr] for lr in tune_lrs}
        tuning["chosen_lr"] = best
        return best

    def summarise() -> None:
        state["summary"] = _summaries(state["runs"], classes, budgets, "dice")
        if cfg["hd95"]:
            state["summary_hd95"] = _summaries(state["runs"], classes, budgets, "hd95")

    def write_partial() -> None:
        summarise()
        resume.write_partial(out_dir, state)

    inner = bool(progress and cfg.get("inner_progress"))
    todo = [j for j in jobs if not is_done(j)]
    bar = tqdm(
        total=len(jobs), initial=len(jobs) - len(todo), desc="hippocampus", disable=not progress
    )
    for job in todo:
        kind, arm, b, r, lr = job
        name = arm["name"]
        run_lr = lr if kind == "tune" else chosen_lr(arm)
        bar.set_description(f"{name} n={b} r={r}" + (f" tune lr={lr:g}" if kind == "tune" else ""))
        split = splits[r]
        train_ids, val_ids = split["train_ids"][b], split["val_ids"]
        seed = run_seed(cfg, len(train_ids), r)
        logs = None
        if cfg.get("keep_logs"):
            tag = f"n{b}_r{r}" + (f"_lr{lr:g}" if kind == "tune" else "")
            logs = out_dir / "logs" / slug(name) / tag
        start = time.perf_counter()
        model, info = train_segmenter3d(
            train_store,
            [index[i] for i in train_ids],
            [index[i] for i in val_ids],
            setup=_setup(arm),
            cfg={**cfg, "lr": run_lr},
            seed=seed,
            out_dir=logs,
            progress=inner,
        )
        if kind == "tune":
            tuning = state["tuning"].setdefault(name, {"val_dice": {}})
            tuning["val_dice"].setdefault(repr(lr), {})[b] = info.get("best_val_dice")
        else:
            cases = evaluate_cases(
                model, test_store, test_index, cfg, size_multiple=seg3d.network_size_multiple(arm)
            )
            record: dict[str, Any] = {
                "seed": seed,
                "lr": run_lr,
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
            state["runs"].setdefault(name, {}).setdefault(b, {})[str(r)] = record
            state["arms"][name]["lr"] = run_lr
            bar.write(
                f"{name} n={b} repeat={r}: "
                + ", ".join(f"{c} {100 * record['dice_mean'][c]:.1f}" for c in classes)
                + f" ({record['seconds']:.0f} s)"
            )
        write_partial()
        bar.update(1)
    bar.close()
    for arm in arms:
        state["arms"][arm["name"]]["lr"] = chosen_lr(arm)
    summarise()
    state["rows"] = _rows(state["runs"], classes)
    state["complete"] = all(is_done(j) for j in jobs)
    write_final(out_dir, state)
    atomic_write_text(out_dir / "results.md", _markdown(state, arms))
    counts = {b: str(n_all if b == "all" else int(b)) for b in budgets}
    plot_metric_vs_k(
        {
            a["name"]: {counts[b]: v for b, v in state["summary"].get(a["name"], {}).items()}
            for a in arms
        },
        [*classes, "mean"],
        list(dict.fromkeys(counts.values())),
        out_dir / "results.png",
        metric="Dice",
        k_label=f"labeled training cases (all = {n_all})",
        title="Hippocampus few-shot segmentation (test Dice, mean ± sd over repeats)",
    )
    return state
