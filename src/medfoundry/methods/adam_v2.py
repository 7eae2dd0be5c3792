"""Adam-v2 (CVPR 2024): localizability, composability and decomposability on a DINO student/teacher.

``AdamV2`` is the module (student, EMA teacher, compose/decompose heads; ``set_mode`` ``"L"`` or
``"LCD"``, ``set_level``, ``forward``, ``export_backbone``: the teacher backbone);
``adam_v2_stages`` its stage plan; ``dino_cross_entropy``, ``compose_loss``, ``decompose_loss``
the losses; ``SPEC`` registers the method.

Rules (the two modes and their losses, validation, the frozen last layer, the signals, the
arguments): docs/adam_v2.md, "The module"; recipe and deviations: the rest of docs/adam_v2.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfoundry.methods.distributed import (
    all_reduce_max_,
    all_reduce_sum_,
    concat_all_gather,
    world_size,
)
from medfoundry.methods.signals import mean_length, retrieval_top1, spread
from medfoundry.methods.spec import RETRIEVAL_PANEL, MethodSpec, Panel
from medfoundry.methods.stages import Stage
from medfoundry.methods.stateless import call_keeping_buffers
from medfoundry.nets.dino_head import LocalizabilityHead
from medfoundry.nets.heads import mlp_projector
from medfoundry.pretext.adam_v2 import AdamV2Augment, concentric_views, multicrop_views

MODES = ("L", "LCD")
CENTERINGS = ("ema", "sinkhorn")
N_PARTS = 4  # the 2 x 2 part grid of the whole (pretext.adam_v2.GRID ** 2)


# --- losses: pure functions ----------------------------------------------------------------------
def centred_targets(teacher: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """DINO's teacher targets ``softmax((teacher - center) / teacher_temp)`` of logits (..., K)."""
    return F.softmax((teacher.detach().float() - center.float()) / teacher_temp, dim=-1)


@torch.no_grad()
def sinkhorn_targets(teacher: Tensor, teacher_temp: float, iterations: int = 3) -> Tensor:
    """Teacher targets by Sinkhorn-Knopp (SwAV, DINOv2's ``sinkhorn_knopp_teacher``) of logits
    (N, K), N pooled over every rank: each row a distribution, every prototype given an equal
    share of the batch. Unlike the running centre it sharpens relative to how the images differ,
    so targets cannot go uniform while the embeddings still differ (docs/adam_v2.md)."""
    logits = teacher.detach().float() / teacher_temp
    q = torch.exp(logits - all_reduce_max_(logits.max().clone())).t()  # (K, N)
    k, n = q.shape
    n_all = n * world_size()
    q /= all_reduce_sum_(q.sum().clone())
    for _ in range(int(iterations)):
        q /= all_reduce_sum_(q.sum(dim=1, keepdim=True)) * k  # each prototype: 1 / K
        q /= q.sum(dim=0, keepdim=True) * n_all  # each sample: 1 / N
    return (q * n_all).t()


def dino_cross_entropy(
    student: Tensor, targets: Tensor, student_temp: float, skip_same: bool
) -> Tensor:
    """DINO's loss: mean over (teacher view i, student view j) pairs of the cross-entropy between
    the teacher's targets (``centred_targets`` or ``sinkhorn_targets``) and
    ``softmax(student_j / student_temp)``.

    Args:
        student: (Vs, B, K) logits; targets: (Vt, B, K) distributions (no gradient through them).
        skip_same: skip the pairs i == j (the teacher views are the student's first Vt views).
    """
    log_probs = F.log_softmax(student.float() / student_temp, dim=-1)
    ce = -torch.einsum("ibk,jbk->ij", targets.detach().float(), log_probs) / student.shape[1]
    if skip_same:  # ce: (Vt, Vs)
        vt, vs = ce.shape
        keep = ~torch.eye(vt, vs, dtype=torch.bool, device=ce.device)
        return ce[keep].mean()
    return ce.mean()


def compose_loss(pred: Tensor, target: Tensor) -> Tensor:
    """MSE (mean over batch and dimensions) between the L2-normalised composition ``pred`` (B, D)
    and the normalised teacher feature of the whole ``target`` (B, D), target stop-grad."""
    return F.mse_loss(
        F.normalize(pred.float(), dim=-1), F.normalize(target.detach().float(), dim=-1)
    )


def decompose_loss(pred: Tensor, targets: Tensor, norm: str = "chunk") -> Tensor:
    """MSE between the decomposition ``pred`` (B, P * D) and the normalised teacher features of
    the P parts ``targets`` (B, P, D), averaged over parts (stop-grad on the targets).

    ``norm="chunk"`` L2-normalises each part's chunk (each a unit vector like its target);
    ``"whole"`` normalises the concatenated vector (the reference: chunks of norm ~1/sqrt(P)).
    """
    b, p, d = targets.shape
    pred = pred.float()
    if norm == "whole":
        chunks = F.normalize(pred, dim=-1).view(b, p, d)
    elif norm == "chunk":
        chunks = F.normalize(pred.view(b, p, d), dim=-1)
    else:
        raise ValueError(f"decompose_norm must be 'chunk' or 'whole', got {norm!r}")
    return F.mse_loss(chunks, F.normalize(targets.detach().float(), dim=-1))


@torch.no_grad()
def target_entropies(probs: Tensor) -> tuple[Tensor, Tensor]:
    """(mean entropy of the teacher's target distributions (N, K), entropy of their batch mean),
    both over log K: DINO's two collapse modes (uniform: 1, 1; one prototype: 0, 0)."""
    probs = probs.float()
    log_k = math.log(probs.shape[-1])
    each = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
    mean = probs.mean(0)
    batch = -(mean * torch.log(mean.clamp_min(1e-12))).sum()
    return each / log_k, batch / log_k


# --- the method ----------------------------------------------------------------------------------
class AdamV2(nn.Module):
    """Adam-v2 student/teacher; ``forward(images) -> {"loss", "loss_l", ..., signals}``.

    Args (each one explained, with its reason: docs/adam_v2.md, "The module"):
        backbone: the student backbone, ``backbone(x) -> (N, D)`` with ``out_dim == D``.
        out_size: side of the global views, x0, x1 (and the parts unless ``augment.part_size``).
        level, mode: granularity g (``set_level``); ``"L"`` or ``"LCD"`` (``set_mode``).
        augment: view parameters (``AdamV2Augment`` or a dict of its fields).
        head_dim, head_hidden, head_bottleneck, head_bn, bottleneck_bn, head_norm_last_layer:
            the localizability head (65536, 2048, 256; no BatchNorm; gain frozen at 1).
        momentum, momentum_end, center_momentum, student_temp, teacher_temp: DINO's EMA,
            centre and temperatures; centering, sinkhorn_iterations: ``"ema"`` or
            ``"sinkhorn"`` targets.
        loss_weights: weights of (L, C, D); decompose_norm: ``"chunk"`` or ``"whole"``.
        freeze_last_layer_epochs, val_seed, val_level, squares_per_image: see the page.
    """

    def __init__(
        self,
        backbone: nn.Module,
        out_size: int = 224,
        level: int = 0,
        mode: str = "L",
        augment: AdamV2Augment | dict | None = None,
        head_dim: int = 65536,
        head_hidden: int = 2048,
        head_bottleneck: int = 256,
        head_bn: bool = False,
        bottleneck_bn: bool = False,
        head_norm_last_layer: bool = True,
        momentum: float = 0.996,
        momentum_end: float = 1.0,
        center_momentum: float = 0.9,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        centering: str = "ema",
        sinkhorn_iterations: int = 3,
        loss_weights: Sequence[float] = (1.0, 1.0, 1.0),
        decompose_norm: str = "chunk",
        freeze_last_layer_epochs: int = 1,
        val_seed: int = 0,
        val_level: int = 0,
        squares_per_image: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("momentum", momentum), ("momentum_end", momentum_end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        if student_temp <= 0 or teacher_temp <= 0:
            raise ValueError("temperatures must be > 0")
        if len(loss_weights) != 3:
            raise ValueError(f"loss_weights needs 3 values (L, C, D), got {loss_weights!r}")
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {centering!r}")
        if int(sinkhorn_iterations) < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations!r}")
        if int(squares_per_image) != squares_per_image or squares_per_image < 1:
            raise ValueError(
                f"squares_per_image must be an integer >= 1, got {squares_per_image!r}"
            )
        if decompose_norm not in ("chunk", "whole"):
            raise ValueError(f"decompose_norm must be 'chunk' or 'whole', got {decompose_norm!r}")
        self.out_size = int(out_size)
        self.augment = AdamV2Augment(**augment) if isinstance(augment, dict) else augment
        self.augment = self.augment or AdamV2Augment()
        self.base_momentum, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum = float(momentum)
        self.center_momentum = float(center_momentum)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.centering, self.sinkhorn_iterations = centering, int(sinkhorn_iterations)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self.decompose_norm = decompose_norm
        self.freeze_last_layer_epochs = int(freeze_last_layer_epochs)
        self.val_seed, self.val_level = int(val_seed), int(val_level)
        self.squares_per_image = int(squares_per_image)

        dim = int(backbone.out_dim)
        self.backbone = backbone
        self.head = LocalizabilityHead(
            dim,
            head_dim,
            head_hidden,
            head_bottleneck,
            norm_last_layer=bool(head_norm_last_layer),
            use_bn=bool(head_bn),
            bottleneck_bn=bool(bottleneck_bn),
        )
        self.compose = mlp_projector(N_PARTS * dim, dim, dim)  # 4D -> D -> D
        self.decompose = mlp_projector(dim, dim, N_PARTS * dim)  # D -> D -> 4D
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in self._teacher_params():
            p.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, head_dim))  # (1, K)
        self.level = 0
        self.mode = "L"
        self.set_level(level)
        self.set_mode(mode)

    # --- state ------------------------------------------------------------------------------
    def set_level(self, level: int) -> None:
        """Set the granularity g (whole or square of side 1 / 2^g of the image)."""
        if int(level) != level or level < 0:
            raise ValueError(f"level must be an integer >= 0, got {level!r}")
        self.level = int(level)

    def set_mode(self, mode: str) -> None:
        """``"L"`` (localizability warm-up) or ``"LCD"``; in ``L`` the compose/decompose heads
        get no gradient, so they are frozen (no optimiser state, no unused DDP parameters)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        for p in [*self.compose.parameters(), *self.decompose.parameters()]:
            p.requires_grad_(mode == "LCD")

    def set_progress(self, progress: float) -> None:
        """Where the stage is (0 at its start, 1 at its end): the EMA momentum's cosine."""
        p = min(1.0, max(0.0, float(progress)))
        cos = 0.5 * (1.0 + math.cos(math.pi * p))
        self.momentum = self.momentum_end - (self.momentum_end - self.base_momentum) * cos

    def export_backbone(self) -> dict[str, Tensor]:
        """The TEACHER backbone's weights (what downstream tasks fine-tune), detached copies."""
        return {k: v.detach().clone() for k, v in self.teacher_backbone.state_dict().items()}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The student's trainable parameters: weights decayed, biases and norms (1-D) not
        (DINO's rule); the teacher is not optimised."""
        decay, no_decay = [], []
        for module in (self.backbone, self.head, self.compose, self.decompose):
            for p in module.parameters():
                if p.requires_grad:
                    (no_decay if p.ndim <= 1 else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def before_optimizer_step(self, epoch: int) -> None:
        """Drop the last layer's gradients in the first ``freeze_last_layer_epochs`` epochs of a
        stage (DINO's ``cancel_gradients_last_layer``: AdamW then skips those weights)."""
        if epoch < self.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def _student_params(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.head.parameters()]

    def _teacher_params(self) -> list[Tensor]:
        return [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the teacher: ``teacher = m * teacher + (1 - m) * student`` (parameters)."""
        student = [p.detach() for p in self._student_params()]
        torch._foreach_lerp_(self._teacher_params(), student, 1.0 - self.momentum)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """``center = m center + (1 - m) mean(teacher logits)`` over the batch of every rank
        (only the running centre's targets read it: with Sinkhorn there is nothing to update)."""
        if self.centering != "ema":
            return
        batch = concat_all_gather(teacher_logits.float().mean(0, keepdim=True)).mean(0, True)
        self.center.mul_(self.center_momentum).add_(batch * (1.0 - self.center_momentum))

    # --- forward ------------------------------------------------------------------------------
    def forward(
        self, images: Tensor, update: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss, its parts and the signals for a batch of images (B, C, H, W).

        ``update=True`` (training) takes the EMA step before the teacher pass and updates the
        centre after the loss; ``update=False`` (validation) changes no state.
        """
        level = self.level
        if not update:
            level = self.val_level
            if generator is None:
                generator = torch.Generator(device=images.device).manual_seed(self.val_seed)
        if update:
            self.momentum_update()
            if level > 0 and self.squares_per_image > 1:  # each copy draws its own square
                images = images.repeat_interleave(self.squares_per_image, dim=0)
        if self.mode == "L":
            return self._forward_l(images, level, update, generator)
        return self._forward_lcd(images, level, update, generator)

    def _encode(self, net: nn.Module, views: list[Tensor], keep: bool) -> list[Tensor]:
        """Pooled features of each view batch (N_i, C, S_i, S_i) -> (N_i, D): one backbone call per
        view size (DINO's multi-crop wrapper: BatchNorm statistics per resolution); with
        ``keep`` in training mode the BatchNorm running statistics stay as they are."""
        sizes = list(dict.fromkeys(tuple(v.shape[-2:]) for v in views))
        feats: dict[int, Tensor] = {}
        for size in sizes:
            idx = [i for i, v in enumerate(views) if tuple(v.shape[-2:]) == size]
            batch = torch.cat([views[i] for i in idx])
            out = call_keeping_buffers(net, batch) if keep and net.training else net(batch)
            for i, part in zip(idx, out.split([views[i].shape[0] for i in idx]), strict=True):
                feats[i] = part
        return [feats[i] for i in range(len(views))]

    def _head(self, head: nn.Module, feats: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N, K), normalised bottleneck embeddings (N, bottleneck))."""
        z = head.embed(feats)
        return head.last_layer(z), z

    def teacher_targets(self, t_logits: Tensor) -> Tensor:
        """The teacher's target distributions (N, K) of its logits (N, K) (``centering``)."""
        if self.centering == "sinkhorn":
            return sinkhorn_targets(t_logits, self.teacher_temp, self.sinkhorn_iterations)
        return centred_targets(t_logits, self.center, self.teacher_temp)

    def _localizability(
        self, s_logits: Tensor, t_logits: Tensor, b: int, skip_same: bool
    ) -> tuple[Tensor, Tensor]:
        """(DINO loss, targets (Vt B, K)) of student logits (Vs B, K) against the teacher's
        (Vt B, K), both view-major over a batch of ``b`` images."""
        k = s_logits.shape[-1]
        targets = self.teacher_targets(t_logits)
        loss = dino_cross_entropy(
            s_logits.view(-1, b, k), targets.view(-1, b, k), self.student_temp, skip_same
        )
        return loss, targets

    def _forward_l(
        self, images: Tensor, level: int, update: bool, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            views = multicrop_views(images, level, self.out_size, self.augment, generator)
        b = images.shape[0]
        glob = views.globals.transpose(0, 1).flatten(0, 1)  # (2B, C, S, S), view-major
        loc = views.locals.transpose(0, 1).flatten(0, 1)  # (NB, C, s, s)
        student_in = [glob, loc] if loc.shape[0] else [glob]
        with torch.no_grad():
            (t_feat,) = self._encode(self.teacher_backbone, [glob], keep=not update)
            t_logits = self.teacher_head(t_feat)  # (2B, K)
        s_feats = self._encode(self.backbone, student_in, keep=not update)
        s_feat = torch.cat(s_feats)  # ((2 + N) B, D)
        s_logits, s_z = self._head(self.head, s_feat)
        loss_l, targets = self._localizability(s_logits, t_logits, b, skip_same=True)
        probe = s_feat[-b:] if loc.shape[0] else s_feat[b : 2 * b]  # last local, else global 2
        signals = self._signals(s_z[:b], probe, t_feat[:b], targets)
        if update:
            self.update_center(t_logits)
        return {"loss": self.loss_weights[0] * loss_l, "loss_l": loss_l.detach(), **signals}

    def _forward_lcd(
        self, images: Tensor, level: int, update: bool, generator: torch.Generator | None
    ) -> dict[str, Tensor]:
        with torch.no_grad():
            views = concentric_views(images, level, self.out_size, self.augment, generator)
        b, n_loc = images.shape[0], views.locals.shape[1]
        parts = views.parts.transpose(0, 1).flatten(0, 1)  # (4B, C, P, P), part-major
        loc = views.locals.transpose(0, 1).flatten(0, 1)  # (NB, C, s, s)
        with torch.no_grad():
            t_x0, t_parts = self._encode(self.teacher_backbone, [views.x0, parts], not update)
            t_logits = self.teacher_head(t_x0)  # (B, K)
        student_in = [views.x0, views.x1, parts, *([loc] if n_loc else [])]
        s_x0, s_x1, s_parts, *s_loc = self._encode(self.backbone, student_in, not update)
        s_views = torch.cat([s_x1, *s_loc])  # ((1 + N) B, D): x1, then the locals view-major
        s_logits, s_z = self._head(self.head, s_views)
        loss_l, targets = self._localizability(s_logits, t_logits, b, skip_same=False)
        d = s_x0.shape[-1]
        part_feats = s_parts.view(N_PARTS, b, d).transpose(0, 1)  # (B, 4, D)
        loss_c = compose_loss(self.compose(part_feats.reshape(b, N_PARTS * d)), t_x0)
        part_targets = t_parts.view(N_PARTS, b, d).transpose(0, 1)  # (B, 4, D)
        loss_d = decompose_loss(self.decompose(s_x0), part_targets, self.decompose_norm)
        w_l, w_c, w_d = self.loss_weights
        probe = s_views[-b:]  # the largest concentric crop (x1 without local crops)
        signals = self._signals(s_z[:b], probe, t_x0, targets)
        if update:
            self.update_center(t_logits)
        return {
            "loss": w_l * loss_l + w_c * loss_c + w_d * loss_d,
            "loss_l": loss_l.detach(),
            "loss_c": loss_c.detach(),
            "loss_d": loss_d.detach(),
            **signals,
        }

    @torch.no_grad()
    def _signals(
        self, z: Tensor, probe: Tensor, target: Tensor, targets: Tensor
    ) -> dict[str, Tensor]:
        """Collapse signals (docs/adam_v2.md, "The module"): z (B, bottleneck) student
        embeddings; probe and target (B, D) student/teacher pooled features of two views of each
        image; targets the teacher's target distributions (N, K)."""
        each, batch = target_entropies(targets)
        return {
            "retrieval": retrieval_top1(probe, target),
            "mean_length": mean_length(z),
            "spread": spread(z),
            "teacher_entropy": each,
            "teacher_batch_entropy": batch,
        }


# --- stages ----------------------------------------------------------------------------------------
def adam_v2_stages(cfg: dict[str, Any]) -> list[Stage]:
    """Stage L then stage LCD, each over its granularities.

    ``granularities``: a list for both stages (default 0, 1, 2) or ``{L: [...], LCD: [...]}``.
    ``epochs``: ``{L: [one per granularity], LCD: [...]}`` (the reference: 200/200/100 and
    10/90/165; an int for a stage: that many at each of its granularities), or an int for every
    granularity of both stages. A granularity with 0 epochs is skipped, a stage with none left
    out. Each stage's schedules (lr, weight decay, EMA) span its summed epochs.
    """
    grans = cfg.get("granularities", [0, 1, 2])
    epochs = cfg.get("epochs", 1)
    stages = []
    for mode in MODES:
        for name, value in (("granularities", grans), ("epochs", epochs)):
            if isinstance(value, dict) and mode not in value:
                raise ValueError(f"adam_v2: {name} has no entry for stage {mode} ({value!r})")
        own = grans[mode] if isinstance(grans, dict) else grans
        own = [int(g) for g in ([own] if isinstance(own, int) else own)]
        per = epochs[mode] if isinstance(epochs, dict) else epochs
        per = [int(per)] * len(own) if isinstance(per, int) else [int(e) for e in per]
        if len(per) != len(own) or any(e < 0 for e in per) or any(g < 0 for g in own):
            raise ValueError(
                f"adam_v2: stage {mode} needs one epoch count >= 0 per granularity {own}, "
                f"got {per!r}"
            )
        levels = tuple(g for g, e in zip(own, per, strict=True) for _ in range(e))
        if levels:
            stages.append(Stage(mode, levels, mode))
    if not stages:
        raise ValueError("adam_v2: no epochs to train")
    return stages


def build_adam_v2(backbone: nn.Module, **kwargs: Any) -> AdamV2:
    """Adam-v2: DINO student/teacher with localizability, composability, decomposability."""
    return AdamV2(backbone, **kwargs)


SPEC = MethodSpec(
    name="adam_v2",
    order=20,
    factory=build_adam_v2,
    stages="plan",
    stage_plan=adam_v2_stages,
    takes_views=True,
    logs_retrieval=True,
    loss_title="loss L + C + D, about L (dots: validation)",
    curve_panels=(
        Panel(
            "composability (solid), decomposability (dashed): MSE",
            (("train/loss_c_step", "-"), ("train/loss_d_step", "--")),
        ),
        RETRIEVAL_PANEL,
        Panel(
            "teacher entropy / log K: per image (solid), batch mean (dashed)",
            (("train/teacher_entropy_step", "-"), ("train/teacher_batch_entropy_step", "--")),
            (-0.02, 1.02),
        ),
    ),
)
