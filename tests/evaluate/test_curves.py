"""The pretraining curves show each method's own metrics, not another method's empty panels."""

from __future__ import annotations

import pytest

from medfoundry.evaluate.curves import panels_for, plot_pretrain_curves


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("train/visible_mse_step", "train/visible_mse_step"),
        ("train/pred_error_step", "train/pos_loss_step"),
        ("train/accuracy_step", "train/dice_step"),
        ("train/pos_sim_step", "train/pruned_fraction_step"),
    ],
)
def test_panels_follow_the_logged_method(marker: str, expected: str) -> None:
    panels = panels_for([{"train/loss_step": [(0, 1.0)], marker: [(0, 0.5)]}])
    keys = {key for panel in panels[1:] for key, _ in panel.series}
    assert expected in keys
    assert panels[0].series == ()  # the loss panel is drawn from train/loss and val/loss


def test_voco_run_curves_are_written(tmp_path) -> None:
    logs = tmp_path / "run" / "stage0_level0" / "logs"
    logs.mkdir(parents=True)
    rows = ["epoch,step,train/loss_step,train/pred_error_step,train/pos_loss_step,val/loss"]
    rows += [f"0,{i},{1 - i / 10},{0.2},{0.1},{0.5 if i == 9 else ''}" for i in range(10)]
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = plot_pretrain_curves(tmp_path / "run")
    assert out is not None and out.stat().st_size > 0
    assert plot_pretrain_curves(tmp_path / "empty") is None
