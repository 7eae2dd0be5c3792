"""`medfoundry demo`: Adam pretraining on the bundled chest X-rays, then few-label pneumonia
classification from those weights and from scratch, with a table and a plot."""

from __future__ import annotations

import random
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medfoundry.config import load_config, merge
from medfoundry.data.manifest import ClassificationItem, scan_class_folders
from medfoundry.data.unlabeled2d import load_images
from medfoundry.metrics.summary import mean_sd
from medfoundry.runtime import (
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    record_run,
    seed_everything,
)
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
from medfoundry.tasks.pretrain import pretrain
from medfoundry.zoo import Checkpoint, resolve_checkpoint


def demo_data_dir() -> Path:
    """The Kermany subset shipped in the package (CC BY 4.0, see its ATTRIBUTION.md)."""
    return Path(str(resources.files("medfoundry") / "assets" / "kermany_demo"))


def split_by_patient(
    items: list[ClassificationItem], cfg: dict[str, Any], seed: int
) -> dict[str, list[ClassificationItem]]:
    """Patient-level split per class: test patients first, the rest is the training pool."""
    rng = random.Random(seed)
    out: dict[str, list[ClassificationItem]] = {"test": [], "pool": []}
    for label in sorted({it.label for it in items}):
        groups = sorted({it.group for it in items if it.label == label})
        rng.shuffle(groups)
        test_groups = set(groups[: int(cfg["test_per_class"])])
        for it in items:
            if it.label == label:
                out["test" if it.group in test_groups else "pool"].append(it)
    return out


def sample_labeled(
    pool: list[ClassificationItem], n_train: int, n_val: int, seed: int
) -> tuple[list[int], list[int]]:
    """Indices into `pool`: n_train and n_val per class, disjoint, drawn with a fixed seed."""
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted({it.label for it in pool}):
        idx = [i for i, it in enumerate(pool) if it.label == label]
        rng.shuffle(idx)
        train += idx[:n_train]
        val += idx[n_train : n_train + n_val]
    return train, val


def _plot(results: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results)
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B2"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.6 * len(arms) + 1.6), sharey=True)
    for ax, metric in zip(axes, ("auc", "accuracy"), strict=True):
        stats = [mean_sd(results[a][metric]) for a in arms]
        ys = list(range(len(arms)))
        ax.barh(
            ys,
            [m for m, _ in stats],
            xerr=[sd for _, sd in stats],
            capsize=5,
            color=[colors[i % len(colors)] for i in ys],
        )
        for i, a in enumerate(arms):
            ax.scatter(results[a][metric], [i] * len(results[a][metric]), color="k", s=12, zorder=3)
        ax.set_yticks(ys, arms)
        ax.invert_yaxis()
        ax.set_xlim(0.4, 1.0)
        ax.set_title(metric.upper() if metric == "auc" else "Accuracy")
    fig.suptitle("Pneumonia vs normal, few labels: pretrained vs scratch")
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".") or "png"  # the temporary name ends in .tmp
    atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    plt.close(fig)


def _linear_probe_arm(
    backbone_cfg: dict[str, Any],
    ckpt: Checkpoint | None,
    pool_x: torch.Tensor,
    pool_y: torch.Tensor,
    tr: list[int],
    va: list[int],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ccfg: dict[str, Any],
    seed: int,
) -> tuple[dict[str, float], str]:
    """Test AUC/accuracy of a linear head on frozen, standardised features (the Kermany
    benchmark's probe), its lr chosen per arm and repeat on validation AUC from
    `probe_lr_grid`: without standardisation and tuning the head's lr, not the features,
    decides the comparison of two backbones whose feature scales differ."""
    seed_everything(seed)
    backbone, load = build_classifier_backbone(backbone_cfg, ckpt)
    feats, test_f = extract_features(backbone, pool_x), extract_features(backbone, test_x)
    ref = feats[tr]
    f_tr, f_va, f_te = (standardize(f, ref) for f in (feats[tr], feats[va], test_f))
    best = None
    for lr in ccfg.get("probe_lr_grid", [ccfg["lr"]]):
        head, info = train_linear_probe(
            f_tr, pool_y[tr], f_va, pool_y[va], cfg={**ccfg, "lr": float(lr)}, seed=seed
        )
        if best is None or info["best_val_score"] > best[1]:
            best = (head, info["best_val_score"])
    return evaluate_probe(best[0], f_te, test_y), load


def _verdict(results: dict[str, dict[str, list[float]]]) -> str:
    """One line per pretrained-vs-reference pair: the paired AUC differences and whether they
    exceed the spread of the repeats (the table alone invites reading noise as a gain)."""
    pairs = [("adam fine-tune", "scratch"), ("adam linear probe", "random linear probe")]
    lines = []
    for arm, ref in pairs:
        if arm not in results or ref not in results:
            continue
        diffs = [a - b for a, b in zip(results[arm]["auc"], results[ref]["auc"], strict=True)]
        mean, sd = mean_sd(diffs)
        if len(diffs) > 1 and abs(mean) <= sd:
            word = "within the noise of the repeats"
        else:
            word = "better" if mean > 0 else "worse"
        paired = ", ".join(f"{d:+.3f}" for d in diffs)
        lines.append(f"{arm} − {ref}: AUC {mean:+.3f} (per repeat {paired}): {word}.")
    note = (
        "At the demo's scale (a few hundred images, minutes of CPU) the demo shows the pipeline, "
        "not what pretraining buys; docs/results.md has the measured benchmarks."
    )
    return "\n" + "\n".join(lines + [note]) + "\n" if lines else ""


def run_demo(
    out_dir: str | Path, quick: bool = False, progress: bool = True, seed: int = 0
) -> dict[str, Any]:
    """Run the whole demo into `out_dir`; returns the results dict (also written as JSON)."""
    start = time.time()
    out_dir = Path(out_dir)
    cfg = load_config("demo")
    pre_cfg = merge(load_config(cfg["pretrain_preset"]), cfg["pretrain"])
    ccfg = dict(cfg["classify"])
    if quick:  # a smoke-test scale for the test suite
        pre_cfg["epochs"] = [1, 1, 1]
        ccfg.update(steps=6, val_every=3, repeats=1)
    pre_cfg["seed"] = seed
    items, classes = scan_class_folders(demo_data_dir())
    split = split_by_patient(items, ccfg, seed)
    record_run(out_dir, {"demo": cfg, "pretrain": pre_cfg, "classify": ccfg, "quick": quick})

    print(
        f"[1/3] Adam pretraining on {len(split['pool'])} unlabeled chest X-rays (levels {pre_cfg['levels']})"
    )
    pool_dir = out_dir / "pretrain"
    pretrain(pre_cfg, [it.path for it in split["pool"]], pool_dir, resume=True, progress=progress)
    pretrained = resolve_checkpoint(pool_dir)  # once: every arm below reuses it
    meta = pretrained.meta
    assert meta.backbone is not None and meta.normalization is not None
    backbone_cfg = meta.backbone.config
    size = int(meta.input_size)  # type: ignore[arg-type]
    norm = meta.normalization

    print(f"[2/3] Loading labeled images at {size}²")
    pool_x = load_images(
        [it.path for it in split["pool"]], size, normalization=norm, progress=progress
    )
    pool_y = torch.tensor([it.label for it in split["pool"]])
    test_x = load_images(
        [it.path for it in split["test"]], size, normalization=norm, progress=progress
    )
    test_y = torch.tensor([it.label for it in split["test"]])

    # (checkpoint, linear probe): fine-tuning from Adam vs from scratch, and a linear probe on
    # frozen Adam features vs on frozen random features (what the representation alone buys)
    arms: dict[str, tuple[Checkpoint | None, bool]] = {
        "adam fine-tune": (pretrained, False),
        "scratch": (None, False),
        "adam linear probe": (pretrained, True),
        "random linear probe": (None, True),
    }
    if not ccfg.get("linear_probe_arms", True):
        arms = {k: v for k, v in arms.items() if not v[1]}
    results: dict[str, dict[str, list[float]]] = {a: {"auc": [], "accuracy": []} for a in arms}
    loads: dict[str, str] = {}
    n_runs = len(arms) * int(ccfg["repeats"])
    print(f"[3/3] Training classifiers: {ccfg['labels_per_class']} labels per class, {n_runs} runs")
    bar = tqdm(total=n_runs, desc="classifiers", disable=not progress)
    for rep in range(int(ccfg["repeats"])):
        tr, va = sample_labeled(
            split["pool"], int(ccfg["labels_per_class"]), int(ccfg["val_per_class"]), seed + rep
        )
        for arm, (ckpt, linear) in arms.items():
            if linear:
                metrics, loads[arm] = _linear_probe_arm(
                    backbone_cfg, ckpt, pool_x, pool_y, tr, va, test_x, test_y, ccfg, seed + rep
                )
                for key, value in metrics.items():
                    results[arm][key].append(value)
                bar.update(1)
                continue
            model, info = train_classifier(
                pool_x[tr],
                pool_y[tr],
                pool_x[va],
                pool_y[va],
                backbone_cfg=backbone_cfg,
                pretrained=ckpt,
                cfg=ccfg,
                seed=seed + rep,
                linear_probe=linear,
                progress=False,
            )
            loads[arm] = info["load"]
            metrics = evaluate_classifier(model, test_x, test_y)
            for key, value in metrics.items():
                results[arm][key].append(value)
            bar.update(1)
    bar.close()

    table = ["| arm | AUC | accuracy | backbone load |", "|---|---|---|---|"]
    for arm in arms:
        auc_m, auc_s = mean_sd(results[arm]["auc"])
        acc_m, acc_s = mean_sd(results[arm]["accuracy"])
        table.append(
            f"| {arm} | {auc_m:.3f} ± {auc_s:.3f} | {acc_m:.3f} ± {acc_s:.3f} | {loads[arm]} |"
        )
    header = (
        f"Kermany demo subset: {len(split['pool'])} pretraining images, "
        f"{ccfg['labels_per_class']} labels/class, {len(split['test'])} test images, "
        f"{ccfg['repeats']} repeats (mean ± sd)"
    )
    md = header + "\n\n" + "\n".join(table) + "\n" + _verdict(results)
    summary = {
        "classes": classes,
        "results": results,
        "backbone_load": loads,
        "n_pool": len(split["pool"]),
        "n_test": len(split["test"]),
        "seconds": round(time.time() - start, 1),
    }
    atomic_write_json(out_dir / "results.json", summary)
    atomic_write_text(out_dir / "results.md", md)
    _plot(results, out_dir / "results.png")
    print("\n" + md)
    print(f"Plot: {out_dir / 'results.png'}   ({summary['seconds']:.0f} s)")
    return summary
