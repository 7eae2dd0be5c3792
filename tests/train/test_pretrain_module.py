"""PretrainModule's optional optimiser keys (DINO / Adam-v2): off by default, as specified when set."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from medfoundry.train.engine import make_trainer
from medfoundry.train.pretrain_module import PretrainModule, clip_per_parameter_


class Toy(nn.Module):
    """A method with one decayed weight and one undecayed bias; records its hook's epochs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.hook_epochs: list[int] = []

    def forward(self, images: torch.Tensor, update: bool = True) -> dict[str, torch.Tensor]:
        return {"loss": self.lin(images).pow(2).mean()}

    def param_groups(self, weight_decay: float) -> list[dict]:
        return [
            {"params": [self.lin.weight], "weight_decay": weight_decay},
            {"params": [self.lin.bias], "weight_decay": 0.0},
        ]

    def before_optimizer_step(self, epoch: int) -> None:
        self.hook_epochs.append(epoch)


class Record(Callback):
    """(lr, weight decay of both groups) seen by each optimiser step."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        groups = optimizer.param_groups
        self.rows.append((groups[0]["lr"], groups[0]["weight_decay"], groups[1]["weight_decay"]))


def fit(optim: dict, epochs: int = 2) -> tuple[Toy, Record]:
    torch.manual_seed(0)
    method, record = Toy(), Record()
    data = DataLoader(torch.randn(20, 4), batch_size=4)  # 5 steps per epoch
    module = PretrainModule(method, {"batch_size": 256, **optim}, total_steps=5 * epochs)
    trainer = make_trainer(
        None, max_epochs=epochs, accelerator="cpu", devices=1, progress=False, callbacks=[record]
    )
    trainer.fit(module, train_dataloaders=data)
    return method, record


BASE = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.04}


def test_defaults_keep_today_behaviour() -> None:
    method, record = fit(BASE)
    assert all(wd == 0.04 and none == 0.0 for _, wd, none in record.rows)  # constant decay
    assert record.rows[-1][0] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    assert method.hook_epochs == [0] * 5 + [1] * 5  # the method's hook sees the epoch


def test_weight_decay_schedule_min_lr_and_clipping() -> None:
    optim = {**BASE, "weight_decay_end": 0.4, "min_lr": 1e-4, "grad_clip": 1e-3}
    _, record = fit({**optim, "grad_clip_mode": "per_param"})
    wds = [wd for _, wd, _ in record.rows]
    assert wds[0] == pytest.approx(0.04) and all(b > a for a, b in zip(wds, wds[1:], strict=False))
    expected = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 9 / 10))
    assert wds[-1] == pytest.approx(expected)
    assert all(none == 0.0 for _, _, none in record.rows)  # undecayed groups stay undecayed
    final = 1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 0.9))
    assert record.rows[-1][0] == pytest.approx(final)


def test_clipping_modes() -> None:
    grads = [torch.full((4,), 5.0), torch.full((2,), 0.1)]  # norms 10 and ~0.14
    clip_per_parameter_(grads, 3.0)
    assert grads[0].norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.equal(grads[1], torch.full((2,), 0.1))  # under the limit: untouched
    module = PretrainModule(Toy(), {**BASE, "batch_size": 4, "grad_clip": 1.0}, total_steps=1)
    opt = torch.optim.SGD(module.method.parameters(), lr=0.1)
    for p in module.method.parameters():
        p.grad = torch.full_like(p, 3.0)
    module.configure_gradient_clipping(opt)  # "norm": the global norm
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in module.method.parameters()))
    assert total.item() == pytest.approx(1.0, rel=1e-4)
    module.optim["grad_clip_mode"] = "per_layer"
    with pytest.raises(ValueError, match="grad_clip_mode"):
        module.configure_gradient_clipping(opt)
