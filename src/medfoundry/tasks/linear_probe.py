"""Linear probe on frozen, precomputed features: what a representation alone buys.

The backbone runs once over every image (eval mode, no augmentation); a linear head is then
trained on the stored features with the same schedule as fine-tuning (AdamW, warm-up + cosine,
random batches drawn with replacement, the best weights by validation AUC). Training the head is
cheap, so a probe costs about one forward pass over the data, whatever the number of runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.metrics.classification import accuracy, roc_auc
from medfoundry.train.schedules import cosine_lambda


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    x: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Backbone outputs (N, D) float32 on the CPU, in eval mode (frozen BN statistics)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    was_training = backbone.training
    backbone.eval().to(device)
    out = [
        backbone(x[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, x.shape[0], batch_size)
    ]
    backbone.train(was_training)
    return torch.cat(out) if out else torch.empty((0, 0))


def standardize(features: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Features scaled to zero mean / unit sd per dimension, with statistics of `reference`."""
    mean = reference.mean(0, keepdim=True)
    sd = reference.std(0, keepdim=True).nan_to_num(0.0)
    return (features - mean) / (sd + eps)


def _score(head: nn.Module, f: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        probs = head(f).float().softmax(-1)
    auc = roc_auc(probs[:, 1], y == 1) if probs.shape[1] == 2 else float("nan")
    return {"auc": auc, "accuracy": accuracy(probs.argmax(-1), y)}


def train_linear_probe(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    *,
    cfg: dict[str, Any],
    seed: int,
    num_classes: int = 2,
) -> tuple[nn.Linear, dict[str, Any]]:
    """Train a linear head for `cfg["steps"]` steps; return it with the best validation weights.

    cfg keys: steps, batch_size, lr, weight_decay, val_every, warmup_steps, label_smoothing.
    The validation score is AUC (binary) or accuracy; info holds best_val_score, best_step and
    val_history [(step, score)].
    """
    torch.manual_seed(seed)
    steps = int(cfg["steps"])
    batch = int(cfg["batch_size"])
    val_every = max(1, int(cfg.get("val_every") or max(1, steps // 10)))
    head = nn.Linear(train_f.shape[1], num_classes)
    opt = torch.optim.AdamW(
        head.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg.get("weight_decay", 1e-4))
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_lambda(steps, int(cfg.get("warmup_steps") or 0))
    )
    gen = torch.Generator().manual_seed(seed)
    batches = torch.randint(len(train_f), (steps, batch), generator=gen)  # (steps, B) indices
    smoothing = float(cfg.get("label_smoothing", 0.0))
    best: dict[str, Any] = {"score": None, "step": None, "state": None}
    history: list[tuple[int, float]] = []
    for step in range(1, steps + 1):
        idx = batches[step - 1]
        loss = F.cross_entropy(head(train_f[idx]), train_y[idx], label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % val_every == 0 or step == steps:
            scores = _score(head, val_f, val_y)
            score = scores["auc"] if scores["auc"] == scores["auc"] else scores["accuracy"]
            history.append((step, score))
            if best["score"] is None or score > best["score"]:
                best = {"score": score, "step": step, "state": copy.deepcopy(head.state_dict())}
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    info = {"best_val_score": best["score"], "best_step": best["step"], "val_history": history}
    return head, info


def evaluate_probe(head: nn.Module, features: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """AUC (binary: positive class 1) and accuracy of a probe on labeled features."""
    return _score(head, features, y)
