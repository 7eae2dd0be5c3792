"""The pretraining curves show each method's own metrics, not another method's empty panels."""

from __future__ import annotations

import json

import pytest

from medfoundry.train.curves import GENERIC_LOSS, panels_for, plot_pretrain_curves, run_method

LOG = [{"train/loss_step": [(0, 1.0)], "train/spread_step": [(0, 0.5)]}]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("mae", "train/visible_mse_step"),
        ("voco", "train/pos_loss_step"),
        ("volume_fusion", "train/dice_step"),
        ("moco", "train/pruned_fraction_step"),
        ("adam", "train/pruned_fraction_step"),
        ("adam_v2", "train/teacher_entropy_step"),
    ],
)
def test_panels_follow_the_method(method: str, expected: str) -> None:
    panels = panels_for(LOG, method)
    keys = {key for panel in panels[1:] for key, _ in panel.series}
    assert expected in keys
    assert "train/spread_step" in keys  # the signal panels of what was logged
    assert panels[0].series == ()  # the loss panel is drawn from train/loss and val/loss


def test_no_method_gets_the_generic_panels_only() -> None:
    panels = panels_for(LOG, None)
    assert panels[0] == GENERIC_LOSS
    keys = {key for panel in panels[1:] for key, _ in panel.series}
    assert keys == {"train/spread_step", "train/mean_length_step"}


def test_an_unregistered_method_is_an_error_not_moco_panels() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        panels_for(LOG, "no_such_method")


def _write_log(run, header: str, rows: list[str]) -> None:
    logs = run / "stage0_level0" / "logs"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")


def test_voco_run_curves_are_written(tmp_path) -> None:
    run = tmp_path / "run"
    header = "epoch,step,train/loss_step,train/pred_error_step,train/pos_loss_step,val/loss"
    _write_log(
        run, header, [f"0,{i},{1 - i / 10},{0.2},{0.1},{0.5 if i == 9 else ''}" for i in range(10)]
    )
    (run / "config.json").write_text(json.dumps({"method": "voco"}))
    assert run_method(run) == "voco" and run_method(tmp_path) is None
    out = plot_pretrain_curves(run)
    assert out is not None and out.stat().st_size > 0
    assert plot_pretrain_curves(tmp_path / "empty") is None
