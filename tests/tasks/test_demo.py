"""`medfoundry demo --quick` on the bundled Kermany subset: every arm trains and is reported."""

from __future__ import annotations

import json

from medfoundry.cli import main


def test_quick_demo_writes_table_plot_and_results(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    arms = set(results["results"])
    assert arms == {"adam fine-tune", "scratch", "adam linear probe", "random linear probe"}
    for arm, metrics in results["results"].items():
        assert len(metrics["auc"]) == 1 and 0.0 <= metrics["auc"][0] <= 1.0, arm
    assert results["backbone_load"]["adam fine-tune"].startswith("loaded")
    assert results["n_pool"] + results["n_test"] == 320
    assert (out / "results.png").stat().st_size > 0
    table = (out / "results.md").read_text()
    assert "random linear probe" in table
    assert "random linear probe" in capsys.readouterr().out
    assert (out / "pretrain" / "checkpoint" / "model.safetensors").is_file()


def test_verdict_calls_a_gain_within_the_repeats_spread_noise():
    from medfoundry.tasks.demo import _verdict

    noisy = {
        "adam linear probe": {"auc": [0.83, 0.80, 0.88]},
        "random linear probe": {"auc": [0.80, 0.84, 0.85]},
    }
    assert "within the noise" in _verdict(noisy)
    clear = {
        "adam linear probe": {"auc": [0.90, 0.91, 0.92]},
        "random linear probe": {"auc": [0.80, 0.80, 0.83]},
    }
    line = _verdict(clear).splitlines()[1]
    assert line.endswith("better.") and "+0.100" in line
