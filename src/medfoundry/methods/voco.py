"""VoCo: predict how much of each base crop a random crop overlaps, from feature similarity.

Per volume, an ``n x n`` grid of base crops tiles the in-plane extent and ``R`` random crops lie
inside it (``pretext.voco``). Every crop of the batch goes through the backbone in ONE call; the
pooled features are projected, and the prediction for random crop ``r`` and base crop ``k`` of the
same volume is ``p = ReLU(cos(z_r, z_k))``, trained towards the overlap fraction ``y``:

* ``pos = -sum_k y_k log(1 - |y_k - p_k| + 1e-6) / sum_k y_k`` (overlapping bases),
* ``neg = sum_{y_k = 0} p_k^2 / #{y_k = 0}`` (bases it does not touch),
* ``reg = mean_{i<j} ReLU(cos(b_i, stopgrad(b_j)))^2`` over the student's base crops of a
  volume (they show different anatomy, so they should not look alike),

``loss = pos + neg + reg_weight * reg``, averaged over random crops and volumes (the VoCo
repository's ``ce_loss`` and ``regularization_loss``).

Two forms:

* ``ema=True`` (default): an EMA teacher (backbone + projector, ``t = m t + (1 - m) s``, VoCo's
  m = 0.9, updated inside ``forward`` before the teacher pass, only when ``update=True``)
  encodes the base crops; the student's random crops are scored against them (the TPAMI
  version's intra-volume term; without a teacher the loss is reported to stay flat);
* ``ema=False``: the CVPR paper's single network, random crops scored against its own bases.

The feature is the concatenation of the global-average-pooled maps of every stage
(``multi_scale=True``, VoCo's 5-tap feature; a ResNet-18 gives 64+64+128+256+512) or the
backbone's pooled output; the projector is VoCo's three-layer MLP with batch-statistics BN.

Not implemented, on purpose: the repository's symmetric teacher-student prediction (teacher
random crops against student bases as well), the TPAMI inter-volume term and its head dropout.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medfoundry.methods.signals import embedding_signals
from medfoundry.methods.spec import MethodSpec, Panel, require_3d, section_extra, size_3d
from medfoundry.methods.stateless import call_keeping_buffers
from medfoundry.nets.heads import bn_projector
from medfoundry.pretext.voco import VoCoAugment, voco_views

EPS = 1e-6  # VoCo's epsilon inside the log of the positive term


def overlap_predictions(crops: Tensor, bases: Tensor) -> Tensor:
    """ReLU of the cosine between each crop and each base of the same volume.

    Args:
        crops: (B, R, P) random-crop embeddings; bases: (B, K, P) base-crop embeddings.

    Returns:
        (B, R, K) predictions in [0, 1].
    """
    sim = F.normalize(crops.float(), dim=-1) @ F.normalize(bases.float(), dim=-1).transpose(1, 2)
    return F.relu(sim)


def overlap_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """VoCo's positive and negative terms, each averaged over all (volume, random crop) pairs.

    Args:
        pred, target: (B, R, K) predictions and overlap fractions (rows of ``target`` sum to 1).
    """
    positive = target > 0
    pos_w = target * positive
    pos = -(pos_w * torch.log(1.0 - (target - pred).abs() + EPS)).sum(-1) / pos_w.sum(-1)
    negative = (~positive).float()
    neg = (pred.pow(2) * negative).sum(-1) / negative.sum(-1).clamp_min(1.0)
    return pos.mean(), neg.mean()


def base_dissimilarity_loss(bases: Tensor) -> Tensor:
    """``mean_{i<j} ReLU(cos(b_i, stopgrad(b_j)))^2`` per volume, averaged over volumes.

    Args:
        bases: (B, K, P) base-crop embeddings of the student.
    """
    z = F.normalize(bases.float(), dim=-1)
    sim = F.relu(z @ z.detach().transpose(1, 2))  # (B, K, K), gradient through the rows
    k = bases.shape[1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=bases.device), diagonal=1)
    return sim[:, upper].pow(2).mean()


class _Embedder(nn.Module):
    """Backbone -> pooled feature -> projector, as one module (so it can run stateless)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, multi_scale: bool) -> None:
        super().__init__()
        self.backbone, self.projector, self.multi_scale = backbone, projector, multi_scale

    def forward(self, crops: Tensor) -> Tensor:
        """(N, C, d, h, w) crops -> (N, P) embeddings."""
        if self.multi_scale:
            maps = self.backbone.features(crops)
            feature = torch.cat([m.flatten(2).mean(-1) for m in maps], dim=1)
        else:
            feature = self.backbone(crops)
        return self.projector(feature)


def feature_dim(backbone: nn.Module, multi_scale: bool) -> int:
    """Width of the pooled feature: all stages' channels, or the backbone's ``out_dim``."""
    if multi_scale:
        if not hasattr(backbone, "features") or not hasattr(backbone, "feature_channels"):
            raise ValueError("multi_scale needs a backbone with features() and feature_channels")
        return int(sum(backbone.feature_channels))
    return int(backbone.out_dim)


class VoCo(nn.Module):
    """VoCo pretraining: ``forward(volumes) -> {"loss", "pos_loss", "neg_loss", "reg_loss", ...}``.

    Args:
        backbone: a 3D backbone (``features`` + ``feature_channels`` for ``multi_scale``, else
            ``forward -> (N, out_dim)``).
        proj_hidden, proj_dim: projector widths (VoCo: 2048, 2048; its TPAMI version 1024).
        num_base: grid side n (n * n base crops per volume).
        num_random: random crops R per volume.
        crop_depth: crop depth (None: the volume's whole depth).
        crop_size: resize every crop to this size before the backbone (None: native crops).
        ema: use an EMA teacher for the base crops (True) or the single network (False).
        momentum: EMA factor m of the teacher.
        multi_scale: pool every stage's map (True) or use the backbone's pooled output.
        reg_weight: weight of the base-crop regulariser (VoCo: 1).
        augment: per-crop augmentation, or a dict of its fields (default: VoCo's).
        val_seed: seed of the crops drawn when ``update=False`` without a generator.
    """

    def __init__(
        self,
        backbone: nn.Module,
        proj_hidden: int = 2048,
        proj_dim: int = 2048,
        num_base: int = 3,
        num_random: int = 2,
        crop_depth: int | None = None,
        crop_size: int | tuple[int, int, int] | None = None,
        ema: bool = True,
        momentum: float = 0.9,
        multi_scale: bool = True,
        reg_weight: float = 1.0,
        augment: VoCoAugment | dict | None = None,
        val_seed: int = 0,
    ) -> None:
        super().__init__()
        if num_base < 2:
            raise ValueError(f"num_base must be >= 2, got {num_base}")
        if num_random < 1:
            raise ValueError(f"num_random must be >= 1, got {num_random}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_base, self.num_random = int(num_base), int(num_random)
        self.crop_depth = None if crop_depth is None else int(crop_depth)
        self.crop_size = (
            crop_size
            if crop_size is None or isinstance(crop_size, int)
            else tuple(int(s) for s in crop_size)
        )
        self.ema, self.momentum = bool(ema), float(momentum)
        self.multi_scale = bool(multi_scale)
        self.reg_weight = float(reg_weight)
        self.val_seed = int(val_seed)
        if isinstance(augment, dict):
            augment = VoCoAugment(**augment)
        self.augment = augment or VoCoAugment()

        self.backbone = backbone
        self.projector = bn_projector(
            feature_dim(backbone, self.multi_scale), proj_hidden, proj_dim
        )
        if self.ema:
            self.teacher_backbone = copy.deepcopy(backbone)
            self.teacher_projector = copy.deepcopy(self.projector)
            for p in self._teacher_params():
                p.requires_grad_(False)

    # --- state ------------------------------------------------------------------------------------
    def _student_params(self) -> list[Tensor]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def _teacher_params(self) -> list[Tensor]:
        return [*self.teacher_backbone.parameters(), *self.teacher_projector.parameters()]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA step of the teacher: ``teacher = m * teacher + (1 - m) * student`` (parameters)."""
        student = [p.detach() for p in self._student_params()]
        torch._foreach_lerp_(self._teacher_params(), student, 1.0 - self.momentum)

    def export_backbone(self) -> dict[str, Tensor]:
        """The student backbone's weights (what downstream tasks fine-tune), detached copies."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    # --- forward ----------------------------------------------------------------------------------
    def _embed(self, student: bool, crops: Tensor, keep_buffers: bool) -> Tensor:
        """(N, P) embeddings of (N, C, d, h, w) crops by the student or the teacher."""
        if student:
            net = _Embedder(self.backbone, self.projector, self.multi_scale)
        else:
            net = _Embedder(self.teacher_backbone, self.teacher_projector, self.multi_scale)
        if keep_buffers and self.training:
            return call_keeping_buffers(net, crops)
        return net(crops)

    def forward(
        self, images: Tensor, update: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Loss and statistics for a batch of volumes (B, C, D, H, W); crops are made here.

        ``update=True`` (training) takes the EMA step before the teacher pass; ``update=False``
        (validation) draws crops from ``val_seed`` and changes no parameter or statistic.
        """
        if not update and generator is None:
            generator = torch.Generator(device=images.device).manual_seed(self.val_seed)
        with torch.no_grad():
            views = voco_views(
                images,
                self.num_base,
                self.num_random,
                self.crop_depth,
                self.crop_size,
                self.augment,
                generator,
            )
        b, k = images.shape[0], self.num_base * self.num_base
        crops = views.crops.flatten(0, 1)  # (B*(K+R), C, d, h, w): base then random, per volume
        z = self._embed(True, crops, keep_buffers=not update)  # ONE call for every crop
        z = z.view(b, views.crops.shape[1], -1)  # (B, K+R, P)
        bases, randoms = z[:, :k], z[:, k:]
        if self.ema:
            with torch.no_grad():
                if update:
                    self.momentum_update()
                teacher = self._embed(False, views.base.flatten(0, 1), keep_buffers=not update)
                targets_for = teacher.view(b, k, -1)  # (B, K, P)
        else:
            targets_for = bases
        pred = overlap_predictions(randoms, targets_for)  # (B, R, K)
        pos, neg = overlap_loss(pred, views.targets)
        reg = base_dissimilarity_loss(bases)
        with torch.no_grad():
            error = (pred - views.targets).abs().mean()
            signals = {
                **embedding_signals(bases.flatten(0, 1)),
                "retrieval": crop_retrieval(randoms, targets_for, views.targets),
            }
        return {
            "loss": pos + neg + self.reg_weight * reg,
            "pos_loss": pos.detach(),
            "neg_loss": neg.detach(),
            "reg_loss": reg.detach(),
            "pred_mean": pred.detach().mean(),
            "pred_error": error,
            **signals,
        }


@torch.no_grad()
def crop_retrieval(randoms: Tensor, bases: Tensor, targets: Tensor) -> Tensor:
    """Share of random crops (B, R, P) whose most similar base crop among ALL the batch's bases
    (B, K, P) is their own volume's base of largest overlap ``targets`` (B, R, K); chance is
    1 / (B * K). A label-free signal that the embeddings tell volumes and positions apart."""
    b, r, _ = randoms.shape
    k = bases.shape[1]
    sims = (
        F.normalize(randoms.flatten(0, 1).float(), dim=1)
        @ F.normalize(bases.flatten(0, 1).float(), dim=1).t()
    )  # (B*R, B*K)
    own = torch.arange(b, device=randoms.device).repeat_interleave(r) * k  # first own base
    best = own + targets.flatten(0, 1).argmax(dim=1)  # the own base of largest overlap
    return (sims.argmax(dim=1) == best).float().mean()


def build_voco(backbone: nn.Module, **kwargs: Any) -> VoCo:
    """VoCo: base/random crop overlap prediction on a 3D backbone (EMA teacher by default)."""
    require_3d("voco", backbone)
    return VoCo(backbone, **kwargs)


def _input_size(cfg: Mapping[str, Any]) -> list[int]:
    """One base crop: [d, h/n, w/n] of the ``data.crop_size`` grid (``voco.num_base`` n,
    ``voco.crop_depth`` d), or ``voco.crop_size``."""
    d, h, w = size_3d(cfg["data"]["crop_size"])
    voco = cfg.get("voco", {})
    if voco.get("crop_size"):
        return size_3d(voco["crop_size"])
    n = int(voco.get("num_base", 3))
    return [int(voco.get("crop_depth") or d), h // n, w // n]


SPEC = MethodSpec(
    name="voco",
    order=60,
    factory=build_voco,
    data="store3d",
    input_size=_input_size,
    checkpoint_extra=section_extra("voco"),
    curve_panels=(
        Panel(
            "terms: positive (solid), negative (dashed), base reg. (dotted)",
            (
                ("train/pos_loss_step", "-"),
                ("train/neg_loss_step", "--"),
                ("train/reg_loss_step", ":"),
            ),
        ),
        Panel(
            "|overlap - prediction| (solid), mean prediction (dashed)",
            (("train/pred_error_step", "-"), ("train/pred_mean_step", "--")),
            (0.0, 1.0),
        ),
    ),
)
