"""`medfoundry benchmark eve`: what Eve (Eden's crop embeddings) knows about anatomy, on JSRT.

For every checkpoint and a random initialisation of each distinct network, on the test folder
only (the training folder gives reference images and the kNN memory, never a choice on test):

* landmark matching across patients: each reference landmark's Eve against a dense grid of
  crops of every test image; the best-matching centre (peak refined to sub-grid precision)
  against the test image's own landmark, in pixels of the stored (512²) image;
* locality: kNN accuracy of landmark-crop Eve predicting the landmark's name, memory from the
  training folder's images, queries from the test images; t-SNE map of the test crops;
* compositionality: cosine of Eve(whole) with the mean Eve of its 1x2, 3x1 and 2x2 parts
  (Eden's protocol), raw, centred (the arm's mean Eve removed: ReLU features share a large
  common direction that makes any two crops similar) and for a control that pairs a whole
  with another image's parts.

Rules and their reasons: docs/eve.md. The benchmark command (resumable per arm): `medfoundry.benchmarks.eve`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from medfoundry.embed.crops import centred_boxes, dense_centres, random_boxes, sub_grid
from medfoundry.embed.encoder import EveModel, embed_boxes, load_eve_model, load_images
from medfoundry.embed.maps import plot_embedding_map
from medfoundry.errors import MedfoundryError
from medfoundry.evaluate.arms import checkpoint_arm_name, is_scratch_entry, slug
from medfoundry.evaluate.jsrt_landmarks import ImageLandmarks
from medfoundry.methods.signals import mean_length, spread
from medfoundry.runtime import atomic_save
from medfoundry.zoo import resolve_checkpoint

RESUME_FREE = ("batch_size",)  # keys that do not change any number
GRIDS: dict[str, tuple[int, int]] = {"1x2": (1, 2), "3x1": (3, 1), "2x2": (2, 2)}  # rows x cols


def resolve_eve_arms(pretrained: Sequence[str | Path | None]) -> list[dict[str, Any]]:
    """One arm per checkpoint, then a random arm per distinct network (its first checkpoint
    gives the architecture, input and working sizes and normalisation)."""
    arms: list[dict[str, Any]] = []
    names: set[str] = set()
    networks: dict[str, str] = {}
    for p in pretrained:
        if is_scratch_entry(p):
            continue
        meta = resolve_checkpoint(p).meta
        if meta.backbone is None:
            raise MedfoundryError(f"{p}: checkpoint metadata has no 'backbone' entry")
        arms.append({"name": checkpoint_arm_name(meta, p, names), "checkpoint": str(p)})
        sig = json.dumps(
            [meta.backbone.config, meta.input_size, meta.training_data, meta.normalization],
            sort_keys=True,
            default=str,
        )
        networks.setdefault(sig, str(p))
    if not arms:
        raise MedfoundryError(
            "benchmark eve needs at least one checkpoint (--pretrained): the random arm "
            "takes its network from a checkpoint"
        )
    for i, like in enumerate(networks.values()):
        name = "random" if i == 0 else f"random-{slug(Path(like).name)}"
        arms.append({"name": name, "checkpoint": None, "like": like})
    return arms


def _subset(records: list[ImageLandmarks], n: int | None, seed: int) -> list[ImageLandmarks]:
    """``n`` records chosen by a seeded permutation (all when n is None or larger)."""
    if n is None or n >= len(records):
        return records
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    return [records[i] for i in sorted(order[:n].tolist())]


def _points(records: Sequence[ImageLandmarks], names: Sequence[str]) -> Tensor:
    """Landmark positions (N, L, 2) as (x, y)."""
    return torch.tensor([[r.points[n] for n in names] for r in records], dtype=torch.float32)


def _landmark_eve(
    model: EveModel, images: Tensor, sizes: Tensor, points: Tensor, crop: float, batch: int
) -> Tensor:
    """Eve (N, L, D) of crops of side ``crop`` centred on each image's landmarks (N, L, 2)."""
    n, n_lm, _ = points.shape
    index = torch.arange(n).repeat_interleave(n_lm)
    boxes = centred_boxes(points.reshape(-1, 2), crop)
    return embed_boxes(model, images, sizes, index, boxes, batch).reshape(n, n_lm, -1)


def refine_peak(sim: Tensor) -> tuple[Tensor, Tensor]:
    """Sub-grid peak of maps (Q, rows, cols): (row, col) floats, a parabola through the argmax
    and its two neighbours along each axis (offset clipped to half a cell)."""
    q, rows, cols = sim.shape
    flat = sim.reshape(q, -1).argmax(dim=1)
    r, c = flat // cols, flat % cols
    ar = torch.arange(q)

    def offset(prev: Tensor, mid: Tensor, nxt: Tensor, ok: Tensor) -> Tensor:
        den = prev - 2 * mid + nxt
        off = torch.where(
            den < 0, 0.5 * (prev - nxt) / den.clamp(max=-1e-12), torch.zeros_like(den)
        )
        return torch.where(ok, off.clamp(-0.5, 0.5), torch.zeros_like(off))

    ok_r = (r > 0) & (r < rows - 1)
    ok_c = (c > 0) & (c < cols - 1)
    rm, rp = (r - 1).clamp(min=0), (r + 1).clamp(max=rows - 1)
    cm, cp = (c - 1).clamp(min=0), (c + 1).clamp(max=cols - 1)
    mid = sim[ar, r, c]
    dr = offset(sim[ar, rm, c], mid, sim[ar, rp, c], ok_r)
    dc = offset(sim[ar, r, cm], mid, sim[ar, r, cp], ok_c)
    return r.float() + dr, c.float() + dc


def match_landmarks(
    model: EveModel,
    ref_eve: Tensor,
    images: Tensor,
    sizes: Tensor,
    truth: Tensor,
    crop: float,
    stride: float,
    batch: int,
    progress: bool,
) -> Tensor:
    """Matching errors (R, T, L) in stored pixels: each reference landmark's Eve (R, L, D)
    against dense crops of each test image, best centre vs the test image's landmark."""
    n_ref, n_lm, _ = ref_eve.shape
    queries = F.normalize(ref_eve.reshape(-1, ref_eve.shape[-1]), dim=1)  # (R*L, D)
    errors = torch.empty(n_ref, len(images), n_lm)
    for t in tqdm(range(len(images)), desc="matching", disable=not progress, leave=False):
        h, w = sizes[t].tolist()
        centres = dense_centres(int(h), int(w), stride)
        cols = int(torch.unique(centres[:, 0]).numel())
        boxes = centred_boxes(centres, crop)
        dense = embed_boxes(model, images, sizes, torch.full((len(boxes),), t), boxes, batch)
        sim = (queries @ F.normalize(dense, dim=1).T).reshape(len(queries), -1, cols)
        row, col = refine_peak(sim)
        x = centres[0, 0] + col * stride
        y = centres[0, 1] + row * stride
        pred = torch.stack([x, y], dim=1).reshape(n_ref, n_lm, 2)
        errors[:, t] = (pred - truth[t][None]).norm(dim=-1)
    return errors


def knn_accuracy(
    memory: Tensor, memory_labels: Tensor, queries: Tensor, labels: Tensor, k: int
) -> Tensor:
    """Per-query correctness (Q,) of a cosine kNN majority vote (ties: the nearest's label)."""
    sim = F.normalize(queries, dim=1) @ F.normalize(memory, dim=1).T
    top = sim.topk(min(k, len(memory)), dim=1).indices  # (Q, k)
    votes = F.one_hot(memory_labels[top], int(memory_labels.max()) + 1).sum(dim=1).float()
    votes[torch.arange(len(top)), memory_labels[top[:, 0]]] += 0.5  # nearest breaks ties
    return (votes.argmax(dim=1) == labels).float()


def identity_vs_location(eve: Tensor) -> dict[str, float]:
    """What landmark-crop Eve (N images, L landmarks, D) encodes: the mean centred cosine of
    two landmarks of one image (patient identity) and of one landmark in two images
    (location); matching across patients needs the second above the first."""
    n, n_lm, _ = eve.shape
    z = F.normalize(eve - eve.reshape(-1, eve.shape[-1]).mean(dim=0), dim=-1)
    sim = torch.einsum("ild,jmd->iljm", z, z)  # (N, L, N, L)
    same_img = torch.eye(n, dtype=torch.bool)[:, None, :, None].expand(n, n_lm, n, n_lm)
    same_lm = torch.eye(n_lm, dtype=torch.bool)[None, :, None, :].expand(n, n_lm, n, n_lm)
    return {
        "same_image_other_landmark": float(sim[same_img & ~same_lm].mean()),
        "same_landmark_other_image": float(sim[~same_img & same_lm].mean()),
    }


def composition(
    model: EveModel,
    images: Tensor,
    sizes: Tensor,
    cfg: dict[str, Any],
    seed: int,
    batch: int,
) -> dict[str, dict[str, float]]:
    """Cosine of Eve(whole) with the mean Eve of its parts per grid: raw, centred, and the
    control (another image's parts at the same box position), medians and means."""
    ccfg = cfg["composition"]
    gen = torch.Generator().manual_seed(seed)
    index, wholes = [], []
    for i, (h, w) in enumerate(sizes.tolist()):
        boxes = [torch.tensor([[0.0, 0.0, float(w), float(h)]])]
        for scale in ccfg["scales"]:
            if float(scale) < 1:
                boxes.append(
                    random_boxes(int(h), int(w), int(ccfg["wholes_per_scale"]), scale, gen)
                )
        b = torch.cat(boxes)
        wholes.append(b)
        index.append(torch.full((len(b),), i))
    wholes_t, index_t = torch.cat(wholes), torch.cat(index)
    per_image = len(wholes[0])
    e_whole = embed_boxes(model, images, sizes, index_t, wholes_t, batch)  # (W, D)
    parts_eve = {}
    for name, (rows, cols) in GRIDS.items():
        parts = sub_grid(wholes_t, rows, cols)  # (W, P, 4)
        pidx = index_t.repeat_interleave(rows * cols)
        e = embed_boxes(model, images, sizes, pidx, parts.reshape(-1, 4), batch)
        parts_eve[name] = e.reshape(len(wholes_t), rows * cols, -1)
    centre = torch.cat([e_whole, *(p.reshape(-1, p.shape[-1]) for p in parts_eve.values())]).mean(0)
    # control: whole j of image i paired with the parts of whole j of image i + 1
    n_img = len(sizes)
    shift = (torch.arange(len(wholes_t)) + per_image) % (n_img * per_image)
    out: dict[str, dict[str, float]] = {}
    for name, parts in parts_eve.items():
        mean_parts = parts.mean(dim=1)
        stats = {
            "raw": F.cosine_similarity(e_whole, mean_parts, dim=1),
            "centred": F.cosine_similarity(e_whole - centre, mean_parts - centre, dim=1),
            "control_raw": F.cosine_similarity(e_whole, mean_parts[shift], dim=1),
            "control_centred": F.cosine_similarity(
                e_whole - centre, mean_parts[shift] - centre, dim=1
            ),
        }
        out[name] = {f"{k}_median": float(v.median()) for k, v in stats.items()}
        out[name].update({f"{k}_mean": float(v.mean()) for k, v in stats.items()})
        out[name]["n"] = len(e_whole)
    return out


def evaluate_arm(
    arm: dict[str, Any],
    refs: list[ImageLandmarks],
    memory: list[ImageLandmarks],
    tests: list[ImageLandmarks],
    names: Sequence[str],
    cfg: dict[str, Any],
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """All Eve measures of one arm (and its t-SNE map of the test landmark crops)."""
    start = time.time()
    seed = int(cfg["seed"])
    model = load_eve_model(arm["checkpoint"], like=arm.get("like"), seed=seed)
    batch, crop = int(cfg["batch_size"]), float(cfg["crop_size"])
    mem_imgs, mem_sizes = load_images([r.image for r in memory], model, progress)
    test_imgs, test_sizes = load_images([r.image for r in tests], model, progress)
    mem_eve = _landmark_eve(model, mem_imgs, mem_sizes, _points(memory, names), crop, batch)
    test_truth = _points(tests, names)
    test_eve = _landmark_eve(model, test_imgs, test_sizes, test_truth, crop, batch)
    ref_ids = {r.id for r in refs}
    ref_eve = mem_eve[[i for i, r in enumerate(memory) if r.id in ref_ids]]
    errors = match_landmarks(
        model, ref_eve, test_imgs, test_sizes, test_truth, crop, float(cfg["stride"]), batch,
        progress,
    )  # fmt: skip
    n_lm = len(names)
    lab = torch.arange(n_lm)
    correct = knn_accuracy(
        mem_eve.reshape(-1, mem_eve.shape[-1]), lab.repeat(len(memory)),
        test_eve.reshape(-1, test_eve.shape[-1]), lab.repeat(len(tests)), int(cfg["knn_k"]),
    ).reshape(len(tests), n_lm)  # fmt: skip
    comp = composition(model, test_imgs, test_sizes, cfg, seed, batch)
    flat = test_eve.reshape(-1, test_eve.shape[-1])
    plot_embedding_map(
        flat, [names[i] for i in lab.repeat(len(tests)).tolist()],
        out_dir / f"tsne_{slug(arm['name'])}.png", f"Eve of test landmark crops, {arm['name']}",
        seed,
    )  # fmt: skip
    e = errors.flatten()
    return {
        "arm": {k: v for k, v in arm.items()},
        "load": model.load_summary,
        "matching": {
            "median_px": float(e.median()),
            "mean_px": float(e.mean()),
            "within_10px": float((e <= 10).float().mean()),
            "within_20px": float((e <= 20).float().mean()),
            "n": int(e.numel()),
            "per_landmark_median_px": {
                n: float(errors[:, :, i].median()) for i, n in enumerate(names)
            },
        },
        "locality": {
            "knn_accuracy": float(correct.mean()),
            "per_landmark": {n: float(correct[:, i].mean()) for i, n in enumerate(names)},
            "n": int(correct.numel()),
        },
        "composition": comp,
        "signals": {"mean_length": float(mean_length(flat)), "spread": float(spread(flat))},
        "identity_vs_location": identity_vs_location(test_eve),
        "seconds": round(time.time() - start, 1),
    }


def report_table(results: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The Markdown table of every finished arm."""
    head = (
        "| arm | match median px | mean px | ≤ 10 px | ≤ 20 px | locality kNN | "
        "comp 1x2 raw / centred | 3x1 | 2x2 | control 2x2 | mean length | "
        "cos same image / same landmark |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for name, r in results.items():
        m, c, iv = r["matching"], r["composition"], r["identity_vs_location"]

        def rc(g: str, c: dict = c) -> str:
            return f"{c[g]['raw_median']:.3f} / {c[g]['centred_median']:.3f}"

        control = f"{c['2x2']['control_raw_median']:.3f} / {c['2x2']['control_centred_median']:.3f}"
        rows.append(
            f"| {name} | {m['median_px']:.1f} | {m['mean_px']:.1f} | {100 * m['within_10px']:.1f} % "
            f"| {100 * m['within_20px']:.1f} % | {100 * r['locality']['knn_accuracy']:.1f} % "
            f"| {rc('1x2')} | {rc('3x1')} | {rc('2x2')} | {control} "
            f"| {r['signals']['mean_length']:.3f} "
            f"| {iv['same_image_other_landmark']:.3f} / {iv['same_landmark_other_image']:.3f} |"
        )
    note = (
        f"\nCrops {cfg['crop_size']} px centred on landmarks, dense grid every {cfg['stride']} px "
        f"(peak refined), kNN k = {cfg['knn_k']}; composition: median cosine, raw / centred "
        "(arm's mean Eve removed); control: a whole with another image's parts.\n"
    )
    return head + "\n".join(rows) + "\n" + note


def plot_results(results: dict[str, Any], out: Path) -> None:
    """Bars per arm: matching error (median, mean), locality accuracy, centred composition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    med = [results[n]["matching"]["median_px"] for n in names]
    mean = [results[n]["matching"]["mean_px"] for n in names]
    axes[0].bar(x - 0.2, med, 0.4, label="median")
    axes[0].bar(x + 0.2, mean, 0.4, label="mean")
    axes[0].set_ylabel("landmark matching error (px of the stored image)")
    axes[0].legend()
    axes[1].bar(x, [100 * results[n]["locality"]["knn_accuracy"] for n in names])
    axes[1].set_ylabel("locality: kNN accuracy of the landmark name (%)")
    for j, g in enumerate(GRIDS):
        vals = [results[n]["composition"][g]["centred_median"] for n in names]
        axes[2].bar(x + (j - 1) * 0.25, vals, 0.25, label=g)
    ctrl = [results[n]["composition"]["2x2"]["control_centred_median"] for n in names]
    axes[2].scatter(x + 0.25, ctrl, color="k", marker="_", s=200, label="control 2x2", zorder=3)
    axes[2].set_ylabel("composition: centred cosine (median)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    fig.tight_layout()
    atomic_save(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
