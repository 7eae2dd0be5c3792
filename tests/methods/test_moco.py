"""MoCo-v2 / Adam core: validation leaves state alone, EMA math, ring-buffer queue, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medfoundry.methods import ADAM_LEVELS, METHODS, MoCo, build_method
from medfoundry.nets import create_backbone
from medfoundry.pretext import AnatomyAugment


def tiny(method: str = "adam", **kwargs) -> MoCo:
    torch.manual_seed(0)
    settings = {"proj_hidden": 32, "proj_dim": 16, "queue_size": 64, "out_size": 32}
    settings.update(kwargs)
    return build_method(method, create_backbone("resnet10", width=0.125), **settings)


def images(batch: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(batch, 1, 8, 8, generator=g), size=64, mode="bicubic")


def key_state(model: MoCo) -> dict[str, torch.Tensor]:
    state = {f"b.{k}": v.clone() for k, v in model.key_backbone.state_dict().items()}
    state |= {f"p.{k}": v.clone() for k, v in model.key_projector.state_dict().items()}
    return state


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_registry() -> None:
    assert set(METHODS) >= {"adam", "moco"}
    assert ADAM_LEVELS == (0, 2, 4)
    moco = tiny("moco")
    assert moco.prune_threshold is None and moco.level == 0
    adam = tiny("adam")
    assert adam.prune_threshold == 0.8 and type(adam) is type(moco)
    with pytest.raises(ValueError, match="adam"):
        build_method("simclr", create_backbone("resnet10", width=0.125))
    with pytest.raises(ValueError):
        tiny("moco", prune_threshold=0.8)
    with pytest.raises(ValueError):
        tiny("moco", level=2)


def test_key_encoder_is_a_frozen_copy() -> None:
    model = tiny()
    assert all(not p.requires_grad for p in model.key_backbone.parameters())
    assert all(not p.requires_grad for p in model.key_projector.parameters())
    assert all(p.requires_grad for p in model.backbone.parameters())
    for (n1, p1), (n2, p2) in zip(
        model.backbone.state_dict().items(), model.key_backbone.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2) and p1.data_ptr() != p2.data_ptr()
    norms = model.queue.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("train_mode", [True, False])
@pytest.mark.parametrize("level", [0, 2])
def test_validation_forward_changes_nothing(train_mode: bool, level: int) -> None:
    model = tiny(level=level).train(train_mode)
    model(images(), update=True)  # move the pointer off zero first
    queue, ptr, keys = model.queue.clone(), model.queue_ptr.clone(), key_state(model)
    everything = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(images(seed=1), update=False)
    assert set(out) == {
        "loss",
        "pruned_fraction",
        "pos_sim",
        "neg_sim",
        "spread",
        "mean_length",
        "retrieval",
        "neg_new",
        "neg_old",
    }
    assert torch.isfinite(out["loss"])
    assert torch.equal(model.queue, queue) and torch.equal(model.queue_ptr, ptr)
    assert same_state(key_state(model), keys)  # no EMA step, BN running stats untouched
    assert same_state(model.state_dict(), everything)  # query BN statistics untouched too


def test_training_forward_updates_queue_pointer_and_key_encoder() -> None:
    model = tiny(momentum=0.5)
    with torch.no_grad():  # make query != key so the EMA step is visible
        for p in model.backbone.parameters():
            p.add_(0.1)
    queue, keys = model.queue.clone(), key_state(model)
    model(images(), update=True)
    assert model.queue_ptr.item() == 8
    assert not torch.allclose(model.queue[:8], queue[:8])
    assert torch.equal(model.queue[8:], queue[8:])
    torch.testing.assert_close(model.queue[:8].norm(dim=1), torch.ones(8))
    assert not same_state(key_state(model), keys)


def test_ema_math() -> None:
    model = tiny(momentum=0.9).eval()  # eval: BN buffers stay, only the EMA moves the keys
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    query = [
        p.detach().clone() for p in [*model.backbone.parameters(), *model.projector.parameters()]
    ]
    before = [
        p.clone() for p in [*model.key_backbone.parameters(), *model.key_projector.parameters()]
    ]
    model(images(), update=True)
    after = [*model.key_backbone.parameters(), *model.key_projector.parameters()]
    for k0, q, k1 in zip(before, query, after, strict=True):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q)


def test_keys_are_computed_after_the_ema_step() -> None:
    """With momentum 0 the key encoder becomes the query encoder before encoding the keys."""
    model = tiny(
        momentum=0.0,
        augment=AnatomyAugment(
            scale=(1.0, 1.0), ratio=(1.0, 1.0), rotation=0.0, jitter_p=0.0, blur_p=0.0
        ),
    )
    model.eval()
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = model(images(), update=True)  # identical views, identical encoders -> q == k
    assert out["pos_sim"].item() == pytest.approx(1.0, abs=1e-5)


def test_enqueue_wraps_around() -> None:
    model = tiny(queue_size=10)
    batches = [torch.full((4, 16), float(i)) for i in range(1, 4)]
    for b in batches:
        model.enqueue(b)
    # writes: 1 -> slots 0-3, 2 -> 4-7, 3 -> 8, 9, 0, 1
    assert model.queue_ptr.item() == 2
    assert model.queue[:, 0].tolist() == [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]
    # a batch larger than the queue: as if written one by one, the last 10 survive
    model.enqueue(torch.arange(13, dtype=torch.float32)[:, None].repeat(1, 16))
    assert model.queue_ptr.item() == (2 + 13) % 10
    expected = [0.0] * 10
    for i in range(13):
        expected[(2 + i) % 10] = float(i)
    assert model.queue[:, 0].tolist() == expected


def test_reset_queue_and_set_level() -> None:
    model = tiny()
    fresh = model.queue.clone()
    model(images(), update=True)
    model.reset_queue()
    assert model.queue_ptr.item() == 0 and torch.equal(model.queue, fresh)  # same seed
    model.set_level(4)
    assert model.level == 4
    with pytest.raises(ValueError):
        model.set_level(-1)
    with pytest.raises(ValueError):
        model.set_level(1.5)


def test_loss_choice_by_level() -> None:
    model = tiny(queue_size=256)
    model.queue.copy_(F.normalize(torch.randn(256, 16), dim=1))
    assert model(images(), update=False)["pruned_fraction"].item() == 0.0  # level 0: InfoNCE
    model.set_level(2)
    model.prune_threshold = -1.0  # prune every negative -> only the positive is left
    out = model(images(), update=False)
    assert out["pruned_fraction"].item() == 1.0 and out["loss"].item() == pytest.approx(0, abs=1e-6)
    model.prune_threshold = None  # MoCo at level 2: the "without pruner" ablation
    assert model(images(), update=False)["loss"].item() > 0.1


def test_export_backbone_loads_into_a_fresh_backbone() -> None:
    model = tiny()
    weights = model.export_backbone()
    assert weights.keys() == model.backbone.state_dict().keys()
    fresh = create_backbone("resnet10", width=0.125)
    result = fresh.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # copies, not views of the live weights
    first = next(iter(weights))
    assert weights[first].data_ptr() != model.backbone.state_dict()[first].data_ptr()


def test_loss_decreases_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_method(
        "moco",
        create_backbone("resnet10", width=0.125),
        proj_hidden=64,
        proj_dim=32,
        queue_size=48,
        momentum=0.9,
        out_size=32,
        augment=AnatomyAugment(scale=(0.7, 1.0), rotation=5.0, jitter_p=0.0, blur_p=0.0),
    )
    x = images(batch=16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    losses = []
    for step in range(30):
        out = model(x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    # steps 3-7: the queue (3 batches) is full of this batch's keys; from there the loss falls
    early, late = sum(losses[3:8]) / 5, sum(losses[-5:]) / 5
    assert late < 0.85 * early, losses


def test_augment_from_a_config_dict() -> None:
    """YAML configs give dicts of lists; they become an AnatomyAugment of tuples."""
    model = tiny(augment={"scale": [0.5, 1.0], "blur_p": 0.0})
    assert isinstance(model.augment, AnatomyAugment)
    assert model.augment.scale == (0.5, 1.0) and model.augment.blur_p == 0.0
    assert torch.isfinite(model(images(), update=False)["loss"])
