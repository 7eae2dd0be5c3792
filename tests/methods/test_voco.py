"""VoCo method: one backbone call, loss terms, learning, EMA teacher, stateless validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medfoundry.methods import METHODS, VoCo, build_method
from medfoundry.methods.voco import base_dissimilarity_loss, overlap_loss, overlap_predictions
from medfoundry.nets import create_backbone


def tiny_backbone() -> torch.nn.Module:
    return create_backbone("resnet10", width=0.125, spatial_dims=3)


def tiny(**kwargs) -> VoCo:
    torch.manual_seed(0)
    settings = {"proj_hidden": 32, "proj_dim": 16, "num_base": 2, "num_random": 2}
    settings.update(kwargs)
    return build_method("voco", tiny_backbone(), **settings)


def volumes(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Smooth volumes (16 x 32 x 32: 2 x 2 grids of 16^3 crops) with in-plane structure."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 1, 2, 6, 6, generator=g)
    return F.interpolate(coarse, size=(16, 32, 32), mode="trilinear")


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry_and_3d_check() -> None:
    assert "voco" in METHODS
    model = tiny()
    assert model.ema and hasattr(model, "teacher_backbone")
    assert all(not p.requires_grad for p in model.teacher_backbone.parameters())
    assert not hasattr(tiny(ema=False), "teacher_backbone")
    with pytest.raises(ValueError, match="3D backbone"):
        build_method("voco", create_backbone("resnet10", width=0.125))


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("multi_scale", [True, False])
def test_one_backbone_call_for_all_crops(ema: bool, multi_scale: bool) -> None:
    model = tiny(ema=ema, multi_scale=multi_scale)
    calls: dict[str, list[int]] = {"student": [], "teacher": []}

    def hook(name: str):
        return lambda module, args, output: calls[name].append(args[0].shape[0])

    model.backbone.conv1.register_forward_hook(hook("student"))  # the stem sees every call
    if ema:
        model.teacher_backbone.conv1.register_forward_hook(hook("teacher"))
    out = model(volumes(batch=3))
    k, r = 4, 2
    assert calls["student"] == [3 * (k + r)]  # ONE call: every base and random crop, all volumes
    assert calls["teacher"] == ([3 * k] if ema else [])  # the teacher encodes the bases only
    assert set(out) == {
        "loss",
        "pos_loss",
        "neg_loss",
        "reg_loss",
        "pred_mean",
        "pred_error",
        "spread",
        "mean_length",
        "retrieval",
    }
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    total = out["pos_loss"] + out["neg_loss"] + out["reg_loss"]
    torch.testing.assert_close(out["loss"].detach(), total)


def test_loss_terms() -> None:
    target = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])  # (B=1, R=1, K=4)
    pos, neg = overlap_loss(target.clone(), target)
    assert pos.item() == pytest.approx(0.0, abs=1e-5) and neg.item() == 0.0
    pred = torch.tensor([[[0.0, 0.5, 0.6, 0.8]]])
    pos, neg = overlap_loss(pred, target)
    expected_pos = -(
        0.5 * torch.log(torch.tensor(0.5 + 1e-6)) + 0.5 * torch.log(torch.tensor(1.0 + 1e-6))
    )
    torch.testing.assert_close(pos, expected_pos)
    torch.testing.assert_close(neg, torch.tensor((0.36 + 0.64) / 2))
    eye = torch.eye(4)[None]  # orthogonal bases: nothing to push apart
    assert base_dissimilarity_loss(eye).item() == 0.0
    assert base_dissimilarity_loss(torch.ones(2, 3, 5)).item() == pytest.approx(1.0)
    sim = overlap_predictions(
        torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[2.0, 0.0], [-1.0, 0.0]]])
    )
    assert sim.tolist() == [[[1.0, 0.0]]]  # ReLU(cos): anti-aligned bases score 0


def test_regulariser_gradient_goes_through_the_first_operand_only() -> None:
    bases = torch.rand(1, 3, 8).add(0.1).requires_grad_(True)  # positive: every cosine > 0
    base_dissimilarity_loss(bases).backward()
    assert bases.grad[0, 0].abs().sum() > 0 and bases.grad[0, 1].abs().sum() > 0
    # the last base is never the first operand of a pair i < j: no gradient reaches it
    assert torch.equal(bases.grad[0, 2], torch.zeros(8))


@pytest.mark.parametrize("ema", [True, False])
def test_loss_decreases_on_a_fixed_batch(ema: bool) -> None:
    model = tiny(ema=ema, num_base=3)  # 3 x 3 grids: random crops also have negative bases
    g = torch.Generator().manual_seed(0)
    batch = F.interpolate(torch.randn(2, 1, 2, 8, 8, generator=g), (16, 48, 48), mode="trilinear")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses, overlap = [], []
    for _ in range(30):  # the same crops every step: a fixed task the network must fit
        out = model(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
        overlap.append((out["pos_loss"] + out["neg_loss"]).item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert sum(overlap[-5:]) < 0.7 * sum(overlap[:5]), overlap  # not the regulariser alone


@pytest.mark.parametrize("train_mode", [True, False])
def test_validation_leaves_teacher_and_statistics_unchanged(train_mode: bool) -> None:
    model = tiny(momentum=0.5).train(train_mode)
    with torch.no_grad():  # student != teacher, so an EMA step would be visible
        for p in model.backbone.parameters():
            p.add_(0.1)
    before = state(model)
    with torch.no_grad():
        a = model(volumes(), update=False)["loss"]
        b = model(volumes(), update=False)["loss"]
    assert a.item() == b.item()  # fixed-seed crops
    assert same_state(state(model), before)  # no EMA step, no BN statistics, student or teacher
    model(volumes(), update=True)
    after = state(model)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("teacher_backbone.") and "weight" in k for k in moved)


def test_ema_math() -> None:
    model = tiny(momentum=0.9).eval()  # eval: BN buffers stay, only the EMA moves the teacher
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    student = [p.detach().clone() for p in model._student_params()]
    teacher = [p.clone() for p in model._teacher_params()]
    model(volumes(), update=True)
    for t0, s, t1 in zip(teacher, student, model._teacher_params(), strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)


def test_export_loads_into_a_fresh_backbone() -> None:
    model = tiny()
    model(volumes())
    weights = model.export_backbone()
    fresh = tiny_backbone()
    fresh.load_state_dict(weights, strict=True)
    assert same_state(state(fresh), state(model.backbone))
    assert not any(k.startswith(("teacher", "projector")) for k in weights)
