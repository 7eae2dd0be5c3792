"""Adam-v2 core: frozen teacher, stateless validation, EMA and centre, export, learning, stages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medfoundry.methods import METHODS, STAGE_PLANS, AdamV2, build_method
from medfoundry.methods.adam_v2 import (
    adam_v2_stages,
    centred_targets,
    decompose_loss,
    dino_cross_entropy,
    sinkhorn_targets,
    target_entropies,
)
from medfoundry.nets import create_backbone

VIEWS = {"n_local": 2, "local_size": 16, "part_size": 16}


def tiny(mode: str = "LCD", **kwargs) -> AdamV2:
    torch.manual_seed(0)
    settings = {
        "out_size": 32,
        "mode": mode,
        "head_dim": 64,
        "head_hidden": 32,
        "head_bottleneck": 16,
        "augment": VIEWS,
    }
    settings.update(kwargs)
    return build_method("adam_v2", create_backbone("resnet10", width=0.125), **settings)


def images(batch: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(batch, 1, 8, 8, generator=g), size=64, mode="bicubic")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def perturb_student(model: AdamV2, scale: float = 0.05) -> None:
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.head.parameters()]:
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def test_registered_with_a_frozen_teacher_copy() -> None:
    assert "adam_v2" in METHODS and STAGE_PLANS["adam_v2"] is adam_v2_stages
    model = tiny()
    assert all(not p.requires_grad for p in model.teacher_backbone.parameters())
    assert all(not p.requires_grad for p in model.teacher_head.parameters())
    assert same(model.teacher_backbone.state_dict(), model.backbone.state_dict())
    optimised = {id(p) for g in model.param_groups(0.04) for p in g["params"]}
    teacher = {
        id(p) for p in [*model.teacher_backbone.parameters(), *model.teacher_head.parameters()]
    }
    assert optimised and not optimised & teacher
    gain = model.head.last_layer.parametrizations.weight.original0
    assert id(gain) not in optimised  # the weight-norm gain stays at 1
    decayed = next(g for g in model.param_groups(0.04) if g["weight_decay"] == 0.04)["params"]
    assert all(p.ndim >= 2 for p in decayed)


@pytest.mark.parametrize("mode", ["L", "LCD"])
def test_no_gradient_reaches_the_teacher(mode: str) -> None:
    model = tiny(mode)
    out = model(images(), update=True)
    out["loss"].backward()
    teacher = [*model.teacher_backbone.parameters(), *model.teacher_head.parameters()]
    assert all(p.grad is None for p in teacher)
    assert all(p.grad is not None for p in model.backbone.parameters())
    heads = [*model.compose.parameters(), *model.decompose.parameters()]
    if mode == "LCD":
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
    else:  # stage L: no C/D terms, the heads are frozen and not optimised
        assert all(p.grad is None and not p.requires_grad for p in heads)
        optimised = {id(p) for g in model.param_groups(0.04) for p in g["params"]}
        assert not optimised & {id(p) for p in heads}


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("mode", ["L", "LCD"])
def test_validation_forward_changes_nothing(mode: str, train_mode: bool) -> None:
    model = tiny(mode).train(train_mode)
    model(images(), update=True)  # centre and teacher off their initial values first
    perturb_student(model)
    before = snapshot(model)
    out = model(images(seed=1), update=False)
    assert same(snapshot(model), before)  # no EMA, no centre update, BN statistics untouched
    expected = {"loss", "loss_l", "retrieval", "mean_length", "spread", "teacher_entropy"}
    assert expected | {"teacher_batch_entropy"} <= set(out)
    assert ({"loss_c", "loss_d"} <= set(out)) == (mode == "LCD")
    assert all(torch.isfinite(v) for v in out.values())
    again = model(images(seed=1), update=False)  # fixed validation views
    assert torch.equal(again["loss"], out["loss"])


def test_training_forward_moves_the_teacher_by_ema_and_the_centre() -> None:
    model = tiny("L", momentum=0.9, momentum_end=0.9).eval()  # eval: only the EMA moves it
    perturb_student(model)
    student = [p.detach().clone() for p in [*model.backbone.parameters(), *model.head.parameters()]]
    teacher = [
        p.clone() for p in [*model.teacher_backbone.parameters(), *model.teacher_head.parameters()]
    ]
    assert model.center.abs().sum() == 0
    model(images(), update=True)
    after = [*model.teacher_backbone.parameters(), *model.teacher_head.parameters()]
    for t0, s, t1 in zip(teacher, student, after, strict=True):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s)
    assert model.center.abs().sum() > 0


def test_momentum_follows_a_cosine_to_one() -> None:
    model = tiny()
    assert model.momentum == 0.996
    model.set_progress(0.5)
    assert model.momentum == pytest.approx(0.998)
    model.set_progress(1.0)
    assert model.momentum == pytest.approx(1.0)


def test_export_picks_the_teacher() -> None:
    model = tiny(momentum=0.5, momentum_end=0.5)
    perturb_student(model)
    model(images(), update=True)  # teacher = (teacher + student) / 2 != student
    weights = model.export_backbone()
    assert same(weights, model.teacher_backbone.state_dict())
    student = model.backbone.state_dict()
    assert weights.keys() == student.keys()
    assert any(not torch.equal(weights[k], student[k]) for k in weights if k.endswith("weight"))
    fresh = create_backbone("resnet10", width=0.125)
    result = fresh.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    first = next(iter(weights))
    assert weights[first].data_ptr() != model.teacher_backbone.state_dict()[first].data_ptr()


@pytest.mark.parametrize("mode", ["L", "LCD"])
def test_loss_falls_on_a_fixed_batch(mode: str) -> None:
    model = tiny(mode)
    x = images(batch=8)
    params = [p for g in model.param_groups(0.0) for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    history = []
    for _ in range(12):
        out = model(x, update=True, generator=torch.Generator().manual_seed(0))  # fixed views
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    for key in ["loss_l", *(["loss_c", "loss_d"] if mode == "LCD" else [])]:
        early, late = history[0][key], sum(h[key] for h in history[-3:]) / 3
        assert late < 0.9 * early, (key, [round(h[key], 4) for h in history])


def test_last_layer_frozen_in_the_first_epoch_only() -> None:
    model = tiny()
    params = [p for g in model.param_groups(0.04) for p in g["params"]]
    opt = torch.optim.AdamW(params, lr=1e-2)
    last = model.head.last_layer.parametrizations.weight.original1
    for epoch, moves in ((0, False), (1, True)):
        before, mlp = last.detach().clone(), model.head.mlp[0].weight.detach().clone()
        opt.zero_grad()
        model(images(), update=True)["loss"].backward()
        model.before_optimizer_step(epoch)
        opt.step()
        assert torch.equal(last, before) != moves  # neither gradient nor weight decay
        assert not torch.equal(model.head.mlp[0].weight, mlp)


def test_dino_cross_entropy_matches_the_pairwise_definition() -> None:
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, 3, 10, generator=g), torch.randn(2, 3, 10, generator=g)
    center = torch.randn(1, 10, generator=g)
    loss = dino_cross_entropy(student, centred_targets(teacher, center, 0.04), 0.1, skip_same=True)
    terms = []
    for i in range(2):
        target = F.softmax((teacher[i] - center) / 0.04, dim=-1)
        for j in range(4):
            if i != j:
                terms.append(-(target * F.log_softmax(student[j] / 0.1, dim=-1)).sum(-1).mean())
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    full = dino_cross_entropy(
        student, centred_targets(teacher[:1], center, 0.04), 0.1, skip_same=False
    )
    target = F.softmax((teacher[0] - center) / 0.04, dim=-1)
    manual = torch.stack(
        [-(target * F.log_softmax(s / 0.1, dim=-1)).sum(-1).mean() for s in student]
    )
    torch.testing.assert_close(full, manual.mean())


def test_decompose_normalisation_per_chunk_or_whole() -> None:
    """A prediction equal to the targets scores 0 per chunk; normalised as one 4D vector
    (the reference) each chunk has norm 1/2, so it cannot reach its unit target."""
    targets = F.normalize(torch.randn(5, 4, 8), dim=-1)
    pred = targets.reshape(5, 32)
    assert decompose_loss(pred, targets, "chunk").item() == pytest.approx(0.0, abs=1e-7)
    whole = decompose_loss(pred, targets, "whole").item()
    assert whole == pytest.approx(0.25 / 8, rel=1e-5)  # |t/2 - t|^2 / D per chunk
    with pytest.raises(ValueError):
        decompose_loss(pred, targets, "none")


def test_stages_of_the_reference_and_cpu_presets() -> None:
    from medfoundry.config import load_config

    ref = adam_v2_stages(load_config("adam_v2"))
    assert [(s.name, s.mode, s.epochs) for s in ref] == [("L", "L", 500), ("LCD", "LCD", 265)]
    assert ref[0].levels == (0,) * 200 + (1,) * 200 + (2,) * 100
    assert ref[1].levels == (0,) * 10 + (1,) * 90 + (2,) * 165
    cpu = adam_v2_stages(load_config("adam_v2_cpu"))
    assert [s.levels for s in cpu] == [(0, 1, 2), (1, 2)]
    only_l = adam_v2_stages({"granularities": [0, 1], "epochs": {"L": 2, "LCD": [0, 0]}})
    assert [(s.name, s.levels) for s in only_l] == [("L", (0, 0, 1, 1))]
    with pytest.raises(ValueError, match="LCD"):
        adam_v2_stages({"epochs": {"L": [1, 1, 1]}})
    with pytest.raises(ValueError, match="one epoch count"):
        adam_v2_stages({"epochs": {"L": [1, 1], "LCD": [1, 1, 1]}})


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        tiny("X")
    with pytest.raises(ValueError, match="decompose_norm"):
        tiny(decompose_norm="sum")
    with pytest.raises(ValueError, match="momentum"):
        tiny(momentum=1.5)
    model = tiny()
    with pytest.raises(ValueError):
        model.set_level(-1)
    assert math.isclose(model.center.shape[-1], 64)


def test_sinkhorn_targets_balance_prototypes_where_a_lagging_centre_does_not() -> None:
    g = torch.Generator().manual_seed(0)
    # a sharp teacher whose logits all favour prototype 0 (DINO's one-prototype collapse),
    # plus a small image-specific part
    logits = 0.02 * torch.randn(64, 32, generator=g)
    logits[:, 0] += 0.5
    q = sinkhorn_targets(logits, 0.02, iterations=3)
    torch.testing.assert_close(q.sum(-1), torch.ones(64))  # each row a distribution
    assert q.mean(0).max() < 2.0 / 32  # no prototype takes the batch
    stale = centred_targets(logits, torch.zeros(1, 32), 0.02)  # the centre has not caught up
    assert stale.mean(0)[0] > 0.99
    _, sk_batch = target_entropies(q)
    _, stale_batch = target_entropies(stale)
    assert sk_batch > 0.95 and stale_batch < 0.05
    # the image-specific part survives: each row's favourite is its own largest deviation
    own = (logits - logits.mean(0, keepdim=True))[:, 1:].argmax(-1) + 1
    assert (q[:, 1:].argmax(-1) + 1 == own).float().mean() > 0.8


def test_sinkhorn_centering_trains_and_needs_no_centre() -> None:
    model = tiny(centering="sinkhorn")
    x = images(4)
    out = model(x)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    with pytest.raises(ValueError, match="centering"):
        tiny(centering="mean")


@pytest.mark.parametrize("mode", ["L", "LCD"])
def test_squares_per_image_makes_each_copy_its_own_instance_at_g_above_0(mode: str) -> None:
    """squares_per_image = 2 at g = 1 trains exactly as the batch with every image twice; at
    g = 0 (the whole image) and in validation it changes nothing."""
    x = images(4)
    for level, expected in ((1, x.repeat_interleave(2, dim=0)), (0, x)):
        two = tiny(mode, squares_per_image=2, level=level)
        one = tiny(mode, level=level)
        a = two(x, generator=torch.Generator().manual_seed(3))
        b = one(expected, generator=torch.Generator().manual_seed(3))
        assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["retrieval"], b["retrieval"])
    two, one = tiny(mode, squares_per_image=2, level=1), tiny(mode, level=1)
    assert torch.equal(two(x, update=False)["loss"], one(x, update=False)["loss"])
    with pytest.raises(ValueError, match="squares_per_image"):
        tiny(mode, squares_per_image=0)
