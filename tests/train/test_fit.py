"""The shared downstream fit loop: seeded step batches, best-by-validation weights kept."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from medfoundry.train.fit import fit_best, fitted_info, step_batches


class _Drift(L.LightningModule):
    """One weight that rises by 1 every step; validation scores -(w - 3)², best at w = 3."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, idx):
        return -self.w  # SGD lr 1: w += 1 per step

    def validation_step(self, batch, idx):
        self.log("val/score", -((self.w.detach() - 3) ** 2), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1.0)


def _data(n: int = 4) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32)[:, None])


def test_step_batches_are_seeded_with_replacement():
    a = [b[0].flatten().tolist() for b in step_batches(_data(), 5, 3, seed=7)]
    b = [b[0].flatten().tolist() for b in step_batches(_data(), 5, 3, seed=7)]
    c = [b[0].flatten().tolist() for b in step_batches(_data(), 5, 3, seed=8)]
    assert len(a) == 5 and all(len(x) == 3 for x in a) and a == b and a != c


def test_fit_best_keeps_the_best_validated_weights_and_reports_them():
    module = _Drift()
    val = DataLoader(_data(1), batch_size=1)
    common = dict(steps=6, monitor="val/score", precision="32-true", accelerator="cpu")
    fitted = fit_best(module, step_batches(_data(), 6, 2, 0), val, val_every=1, **common)
    assert fitted.restored and float(module.w) == 3.0 and fitted.steps == 6
    info = fitted_info(fitted, "best_val_score")
    assert info["best_step"] == 3 and info["best_val_score"] == 0.0
    assert [s for s, _ in info["val_history"]] == [1, 2, 3, 4, 5, 6]
    final = _Drift()
    alone = fit_best(final, step_batches(_data(), 6, 2, 0), None, val_every=1, **common)
    assert not alone.restored and float(final.w) == 6.0  # no validation: the final weights
    assert "best_step" not in fitted_info(alone)
