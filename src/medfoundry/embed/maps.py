"""Pictures of Eve: 2D maps of embeddings (PCA; t-SNE when scikit-learn is installed) coloured
by a label, and cosine-similarity heat maps of one point's Eve over other images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from medfoundry.runtime import atomic_save  # noqa: E402

MAX_LEGEND = 20  # more distinct labels than this: no legend


def pca_2d(x: Tensor) -> np.ndarray:
    """The first two principal components (N, 2) of embeddings (N, D)."""
    x = x.float() - x.float().mean(dim=0, keepdim=True)
    if len(x) < 2:
        return np.zeros((len(x), 2), dtype=np.float32)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[:2].T
    if proj.shape[1] < 2:
        proj = torch.cat([proj, torch.zeros(len(x), 2 - proj.shape[1])], dim=1)
    return proj.numpy()


def tsne_2d(x: Tensor, seed: int = 0) -> np.ndarray | None:
    """t-SNE (N, 2) of embeddings (N, D) on cosine distances, or None without scikit-learn
    (the optional extra ``medfoundry[eve]``) or with too few points."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    n = len(x)
    if n < 5:
        return None
    perplexity = float(min(30, max(2, (n - 1) // 3)))
    tsne = TSNE(
        n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed
    )
    return tsne.fit_transform(x.float().numpy()).astype(np.float32)


def _scatter(ax: plt.Axes, xy: np.ndarray, labels: Sequence[str], title: str) -> None:
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    lab = np.asarray(labels)
    for i, name in enumerate(names):
        sel = lab == name
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=cmap(i % cmap.N), label=name, alpha=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_embedding_map(
    emb: Tensor, labels: Sequence[str], out: Path, title: str, seed: int = 0
) -> bool:
    """PCA and t-SNE side by side, coloured by ``labels``; returns whether t-SNE was drawn."""
    tsne = tsne_2d(emb, seed)
    panels = [("PCA", pca_2d(emb))] + ([("t-SNE (cosine)", tsne)] if tsne is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (name, xy) in zip(axes[0], panels, strict=True):
        _scatter(ax, xy, labels, name)
    if len(set(labels)) <= MAX_LEGEND:
        axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title + ("" if tsne is not None else "  (t-SNE: pip install medfoundry[eve])"))
    fig.tight_layout()
    atomic_save(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return tsne is not None


def plot_similarity(
    query_image: np.ndarray,
    query_xy: tuple[float, float],
    targets: Sequence[tuple[str, np.ndarray, np.ndarray, tuple[int, int]]],
    out: Path,
    title: str,
) -> None:
    """The query image with its point, then each target image with its cosine map overlaid and
    the best match marked; a target is (name, image (H, W), map (h, w), (H, W) extent)."""
    n = 1 + len(targets)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(query_image, cmap="gray")
    ax.plot(*query_xy, marker="+", color="red", markersize=14, mew=2)
    ax.set_title("query", fontsize=9)
    for ax, (name, image, sim, (h, w)) in zip(axes[0, 1:], targets, strict=True):
        ax.imshow(image, cmap="gray", extent=(0, w, h, 0))
        im = ax.imshow(sim, cmap="magma", alpha=0.55, extent=(0, w, h, 0), interpolation="bilinear")
        iy, ix = np.unravel_index(int(np.argmax(sim)), sim.shape)
        ax.plot((ix + 0.5) * w / sim.shape[1], (iy + 0.5) * h / sim.shape[0], "c+", ms=12, mew=2)
        ax.set_title(f"{name}\nmax cos {sim.max():.2f}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes[0]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save(out, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
