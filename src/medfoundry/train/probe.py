"""Frozen-feature probes during pretraining: does the backbone get better at telling classes apart?

A small labeled set (``--probe-data``: class folders) is split by patient into a reference half
and a query half. After every validation pass the backbone (eval mode, pooled features) embeds
both; a weighted kNN (cosine, k = 20, weights exp(cos / 0.07), as in InstDisc/DINO) and a linear
probe (logistic regression on standardised features, full-batch L-BFGS) classify the queries.
They log ``probe/knn_auc``, ``probe/knn_acc``, ``probe/linear_auc`` (AUC: binary sets only;
balanced accuracy otherwise), which checkpoint selection can monitor.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from medfoundry.data.manifest import scan_class_folders
from medfoundry.data.unlabeled2d import load_images
from medfoundry.errors import InputError
from medfoundry.metrics.classification import roc_auc


@dataclass
class ProbeSet:
    """Labeled images for a probe: (N, C, S, S) tensors and (N,) labels, reference and query."""

    ref_x: Tensor
    ref_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: list[str]
    ref_paths: list[Path]
    query_paths: list[Path]

    def __len__(self) -> int:
        return int(self.ref_x.shape[0] + self.query_x.shape[0])


def load_probe_set(
    root: str | Path,
    size: int,
    channels: int = 1,
    normalization: dict[str, Any] | None = None,
    per_class: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> ProbeSet:
    """Up to ``per_class`` images per class of a ``root/<CLASS>/`` tree, split half and half
    by patient into reference and query images (no patient in both)."""
    items, classes = scan_class_folders(root)
    rng = random.Random(seed)
    ref, query = [], []
    for label in range(len(classes)):
        mine = [it for it in items if it.label == label]
        groups = sorted({it.group for it in mine})
        rng.shuffle(groups)
        if len(groups) < 2:
            raise InputError(root, f"probe class {classes[label]!r} needs >= 2 patients")
        order = {g: i for i, g in enumerate(groups)}
        mine.sort(key=lambda it: (order[it.group], str(it.path)))
        mine = mine[:per_class]
        cut = len(mine) // 2
        while 0 < cut < len(mine) and mine[cut].group == mine[cut - 1].group:
            cut += 1  # keep a patient on one side
        if cut in (0, len(mine)):
            cut = max(1, len(mine) // 2)
        ref += mine[:cut]
        query += mine[cut:]

    def tensors(part: Sequence) -> tuple[Tensor, Tensor]:
        x = load_images(
            [it.path for it in part], size, channels, normalization, progress, "probe images"
        )
        return x, torch.tensor([it.label for it in part], dtype=torch.long)

    ref_x, ref_y = tensors(ref)
    query_x, query_y = tensors(query)
    return ProbeSet(
        ref_x, ref_y, query_x, query_y, classes, [it.path for it in ref], [it.path for it in query]
    )


@torch.no_grad()
def embed(backbone: nn.Module, x: Tensor, batch_size: int = 128) -> Tensor:
    """Pooled backbone features (N, D) in eval mode, float32, on the backbone's device."""
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    out = [backbone(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)]
    backbone.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def knn_probabilities(
    ref_f: Tensor,
    ref_y: Tensor,
    query_f: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> Tensor:
    """Weighted-kNN class probabilities (Nq, num_classes): cosine neighbours among ``ref_f``."""
    sims = F.normalize(query_f.float(), dim=1) @ F.normalize(ref_f.float(), dim=1).t()
    k = min(k, ref_f.shape[0])
    top, idx = sims.topk(k, dim=1)  # (Nq, k)
    weights = (top / temperature).exp()
    votes = torch.zeros(query_f.shape[0], num_classes, device=sims.device)
    votes.scatter_add_(1, ref_y.to(sims.device)[idx], weights)
    return votes / votes.sum(dim=1, keepdim=True)


def linear_probabilities(
    ref_f: Tensor, ref_y: Tensor, query_f: Tensor, num_classes: int, l2: float = 1e-3
) -> Tensor:
    """Class probabilities of an L2-regularised logistic regression fitted on ``ref_f``
    (standardised with its statistics) by full-batch L-BFGS: a deterministic linear probe."""
    mean, sd = ref_f.mean(0, keepdim=True), ref_f.std(0, keepdim=True).nan_to_num(0.0) + 1e-6
    xr, xq = (ref_f.float() - mean) / sd, (query_f.float() - mean) / sd
    with torch.enable_grad():
        head = nn.Linear(xr.shape[1], num_classes).to(xr.device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        opt = torch.optim.LBFGS(
            head.parameters(), lr=1.0, max_iter=100, line_search_fn="strong_wolfe"
        )
        y = ref_y.to(xr.device)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(xr), y) + l2 * head.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        return head(xq).softmax(dim=1)


def class_score(probs: Tensor, labels: Tensor) -> tuple[float, float]:
    """(AUC for binary sets, else balanced accuracy; balanced accuracy)."""
    labels = labels.to(probs.device)
    pred = probs.argmax(dim=1)
    recalls = [float((pred[labels == c] == c).float().mean()) for c in labels.unique().tolist()]
    balanced = sum(recalls) / len(recalls)
    if probs.shape[1] == 2:
        return roc_auc(probs[:, 1], labels == 1), balanced
    return balanced, balanced


def probe_scores(backbone: nn.Module, probe: ProbeSet) -> dict[str, float]:
    """kNN and linear-probe scores of ``backbone``'s frozen features on ``probe``."""
    n = len(probe.classes)
    ref_f, query_f = embed(backbone, probe.ref_x), embed(backbone, probe.query_x)
    knn_auc, knn_acc = class_score(knn_probabilities(ref_f, probe.ref_y, query_f, n), probe.query_y)
    lin_auc, lin_acc = class_score(
        linear_probabilities(ref_f.cpu(), probe.ref_y, query_f.cpu(), n), probe.query_y
    )
    return {"knn_auc": knn_auc, "knn_acc": knn_acc, "linear_auc": lin_auc, "linear_acc": lin_acc}


class OnlineProbe(Callback):
    """Score the method's backbone on a `ProbeSet` after every validation pass (or every
    training epoch when there is no validation) and log ``probe/<score>``."""

    def __init__(self, probe: ProbeSet) -> None:
        self.probe = probe
        self.history: list[tuple[int, dict[str, float]]] = []

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        scores = probe_scores(pl_module.method.backbone, self.probe)
        self.history.append((int(trainer.global_step), scores))
        for key, value in scores.items():
            pl_module.log(f"probe/{key}", value, on_step=False, on_epoch=True, sync_dist=False)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Score the starting weights once (not on resume): the baseline the probe must beat.
        Written straight to the loggers at step 0, so epoch metrics and selection ignore it."""
        if trainer.global_step != 0:
            return
        scores = probe_scores(pl_module.method.backbone, self.probe)
        self.history.append((0, scores))
        for logger in trainer.loggers:
            logger.log_metrics({f"probe/{k}": v for k, v in scores.items()}, step=0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.val_dataloaders:
            self._run(trainer, pl_module)
