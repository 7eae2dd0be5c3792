"""train/optim.py head start for a pretrained network: head-only warm-up steps and a
zero-initialised last layer (the 3D fine-tuning stall fix)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfoundry.errors import MedfoundryError
from medfoundry.train.optim import encoder_aware_adamw, init_new_parts, zero_last_layer


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv3d(1, 4, 3, padding=1)
        self.decoder = nn.Conv3d(4, 4, 1)
        self.head = nn.Sequential(nn.BatchNorm3d(4), nn.Conv3d(4, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


def _train(model: nn.Module, cfg: dict, steps: int, new_parts=None) -> None:
    conf = encoder_aware_adamw(model, cfg, max_steps=20, new_parts=new_parts)
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    x, y = torch.randn(2, 1, 4, 4, 4), torch.randint(0, 3, (2, 4, 4, 4))
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _copy(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_head_warmup_keeps_pretrained_parts_fixed_then_trains_them():
    torch.manual_seed(0)
    model = _Net()
    cfg = {"lr": 1e-2, "weight_decay": 0.1, "warmup_steps": 2, "head_warmup_steps": 5}
    start = _copy(model)
    conf = encoder_aware_adamw(model, cfg, max_steps=20, new_parts=["head"])
    lrs = {id(p): g["lr"] for g in conf["optimizer"].param_groups for p in g["params"]}
    assert lrs[id(model.encoder.weight)] == 0.0 and lrs[id(model.decoder.weight)] == 0.0
    assert lrs[id(model.head[1].weight)] > 0.0
    _train(model, cfg, 5, new_parts=["head"])
    after = _copy(model)
    for k in ("encoder.weight", "encoder.bias", "decoder.weight"):
        assert torch.equal(after[k], start[k]), k  # no step, no weight decay while held
    assert not torch.equal(after["head.1.weight"], start["head.1.weight"])


def test_past_the_hold_every_part_trains_and_without_new_parts_nothing_is_held():
    torch.manual_seed(0)
    model = _Net()
    start = _copy(model)
    cfg = {"lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 1, "head_warmup_steps": 3}
    _train(model, cfg, 6, new_parts=["head"])
    assert not torch.equal(model.encoder.weight, start["encoder.weight"])
    torch.manual_seed(0)
    free = _Net()
    start = _copy(free)
    _train(free, cfg, 1, new_parts=None)  # scratch: no checkpoint, nothing held
    assert not torch.equal(free.encoder.weight, start["encoder.weight"])


def test_zero_last_layer_zeroes_only_the_final_conv():
    torch.manual_seed(0)
    model = _Net()
    bn = _copy(model.head[0])
    assert zero_last_layer(model.head) == 1
    assert torch.count_nonzero(model.head[1].weight) == 0
    assert torch.count_nonzero(model.head[1].bias) == 0
    assert all(torch.equal(v, bn[k]) for k, v in model.head[0].state_dict().items())
    assert zero_last_layer(nn.ReLU()) == 0
    out = model(torch.randn(1, 1, 4, 4, 4))
    assert torch.allclose(out.softmax(1), torch.full_like(out, 1 / 3))  # uniform start


def test_init_new_parts_applies_the_rule_only_with_a_checkpoint():
    model = _Net()
    assert init_new_parts(model, None, {"head_init": "zero"}) == {}
    assert torch.count_nonzero(model.head[1].weight) > 0  # scratch keeps its init
    info = init_new_parts(model, ["head"], {"head_init": "zero", "head_warmup_steps": 10})
    assert info == {"head_init": "zero", "head_warmup_steps": 10, "zeroed_layers": 1}
    assert torch.count_nonzero(model.head[1].weight) == 0
    with pytest.raises(MedfoundryError, match="head_init"):
        init_new_parts(model, ["head"], {"head_init": "xavier"})


def test_stalled_classes_flags_a_class_that_lags_at_the_kept_weights():
    from medfoundry.train.segment3d_module import stalled_classes

    names = ["anterior", "posterior"]
    log = [  # the stalled run of docs/results.md §7: posterior rose, then merged into anterior
        {"step": 100, "dice_mean": 0.22, "dice_anterior": 0.02, "dice_posterior": 0.41},
        {"step": 200, "dice_mean": 0.32, "dice_anterior": 0.61, "dice_posterior": 0.03},
        {"step": 400, "dice_mean": 0.36, "dice_anterior": 0.64, "dice_posterior": 0.08},
    ]
    assert stalled_classes(log, names) == {"posterior": 0.08}
    log.append({"step": 500, "dice_mean": 0.8, "dice_anterior": 0.82, "dice_posterior": 0.78})
    assert stalled_classes(log, names) == {}  # the kept (best) row is balanced
    slow = [{"step": 100, "dice_mean": 0.07, "dice_anterior": 0.1, "dice_posterior": 0.05}]
    assert stalled_classes(slow, names) == {}  # nothing took off: not a merging minimum
    assert stalled_classes([], names) == {}
