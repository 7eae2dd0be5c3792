"""The benchmark engine on a toy spec: job order, results layout, lr rule, resume, `--arms`,
and a benchmark added as one new module (found by the registry, given the shared CLI flags)."""

from __future__ import annotations

import json
import math
import textwrap

import pytest

import medfoundry.benchmarks as registry
from medfoundry.benchmarks import engine, specs
from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Job

# A whole benchmark: what docs/contributing.md walks through (score peaks at lr 1e-2).
TOY = """
from pathlib import Path

from medfoundry.benchmarks.spec import BenchmarkSpec, Context, Flag


class Toy(BenchmarkSpec):
    name = "toy"
    command = "toy"
    help = "a toy benchmark"
    preset = "toy"
    defaults = {"budgets": [1, 4], "repeats": 2, "tune": [1e-3, 1e-2, 1e-1], "steps": 1}
    resume_free = ("repeats",)
    flags = (Flag("--budgets", "budgets", "[budgets]", type=int, nargs="+"),)
    calls = []

    def prepare(self, cfg, train_data, test_data, pretrained, out_dir, progress):
        arms = [{"name": str(p)} for p in pretrained if p] + [{"name": "scratch"}]
        return Context(arms=arms, header={"config": cfg}, data={"cfg": cfg})

    def arm_record(self, ctx, arm):
        return {"checkpoint": None if arm["name"] == "scratch" else arm["name"]}

    def cells(self, cfg, group):
        return [str(b) for b in cfg["budgets"]]

    def lr_grid(self, ctx, arm, group):
        return [float(v) for v in ctx.data["cfg"]["tune"] or []]

    def default_lr(self, ctx, arm, group):
        return 1e-3

    def tune_cells(self, ctx, group):
        return [str(min(ctx.data["cfg"]["budgets"])), str(max(ctx.data["cfg"]["budgets"]))]

    def run_job(self, ctx, job, lr):
        import math

        self.calls.append((job.kind, job.arm_name, job.cell, job.repeat, lr))
        score = 1.0 - abs(math.log10(lr) + 2) + int(job.cell) / 100
        return score, {"score": score + job.repeat, "steps": ctx.data["cfg"]["steps"]}

    def summarize(self, state, ctx):
        state["summary"] = {a: len(r) for a, r in state["runs"].items()}

    def report(self, state, ctx, out_dir):
        (Path(out_dir) / "results.md").write_text(str(state["summary"]))


SPEC = Toy()
"""


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy benchmark as a module dropped into the package's path (the registry finds it)."""
    folder = tmp_path / "extra"
    folder.mkdir()
    (folder / "toy_benchmark.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setattr(registry, "__path__", [*registry.__path__, str(folder)])
    specs.cache_clear()
    yield registry.get_spec("toy")
    specs.cache_clear()


def test_jobs_layout_and_lr_rule(toy, tmp_path):
    toy.calls.clear()
    state = toy.run(None, None, ["ckpt"], tmp_path / "o", {}, progress=False)
    kinds = [c[0] for c in toy.calls]
    # per arm: 3 lrs x 2 tuning cells, then 2 budgets x 2 repeats
    assert kinds == (["tune"] * 6 + ["run"] * 4) * 2
    assert [c[1] for c in toy.calls] == ["ckpt"] * 10 + ["scratch"] * 10
    tuning = state["tuning"]["ckpt"]
    assert tuning["chosen_lr"] == 1e-2 and tuning["budgets"] == ["1", "4"]
    assert set(tuning["val_dice"]) == {repr(1e-3), repr(1e-2), repr(1e-1)}
    assert tuning["mean_val_dice"][repr(1e-2)] == pytest.approx(1.025)
    assert state["runs"]["ckpt"]["4"]["1"]["score"] == pytest.approx(2.04)
    assert state["arms"]["ckpt"] == {"checkpoint": "ckpt", "lr": 1e-2}
    assert all(c[4] == 1e-2 for c in toy.calls if c[0] == "run")
    assert state["complete"] and state["benchmark"] == "toy"
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["runs"] == state["runs"] and not (tmp_path / "o" / "results.partial.json").exists()


def test_resume_skips_finished_jobs_and_reproduces_a_killed_run(toy, tmp_path, monkeypatch):
    whole = toy.run(None, None, ["ckpt"], tmp_path / "whole", {}, progress=False)
    real = type(toy).run_job

    def dies_on_seventh(self, ctx, job, lr):
        if len(self.calls) == 6:
            raise KeyboardInterrupt
        return real(self, ctx, job, lr)

    toy.calls.clear()
    monkeypatch.setattr(type(toy), "run_job", dies_on_seventh)
    with pytest.raises(KeyboardInterrupt):
        toy.run(None, None, ["ckpt"], tmp_path / "o", {}, progress=False)
    monkeypatch.setattr(type(toy), "run_job", real)
    toy.calls.clear()
    resumed = toy.run(None, None, ["ckpt"], tmp_path / "o", {}, progress=False)
    assert len(toy.calls) == 20 - 6
    assert resumed["runs"] == whole["runs"] and resumed["tuning"] == whole["tuning"]
    toy.calls.clear()
    toy.run(None, None, ["ckpt"], tmp_path / "o", {"repeats": 1}, progress=False)
    assert toy.calls == []  # a resume-free key; every job is done
    with pytest.raises(Exception, match=r"different configuration \(differs in \['steps'\]"):
        toy.run(None, None, ["ckpt"], tmp_path / "o", {"steps": 2}, progress=False)


def test_arms_runs_only_the_named_arms(toy, tmp_path):
    toy.calls.clear()
    state = toy.run(None, None, ["ckpt"], tmp_path / "o", {}, progress=False, arms=["scratch"])
    assert {c[1] for c in toy.calls} == {"scratch"} and set(state["runs"]) == {"scratch"}


class _Grid(BenchmarkSpec):
    score = "val_auc"

    def lr_grid(self, ctx, arm, group):
        return [1.0, 2.0, 3.0]

    def tune_cells(self, ctx, group):
        return ["a", "b"]


@pytest.mark.parametrize(
    ("scores", "chosen"),
    [
        ({"1.0": {"a": 0.5, "b": 0.5}, "2.0": {"a": 0.9, "b": None}, "3.0": {"a": 0.4}}, 1.0),
        ({"1.0": {"a": math.nan, "b": 1}, "2.0": {"a": 0.2, "b": 0.2}, "3.0": {}}, 2.0),
        ({"1.0": {"a": 0.5, "b": 0.5}, "2.0": {"a": 0.25, "b": 0.75}, "3.0": {}}, 1.0),  # tie
    ],
)
def test_lr_rule_missing_scores_never_win_and_ties_take_the_first(scores, chosen):
    """A missing, None or NaN validation score counts as -inf; ties go to the first lr."""
    state = {"tuning": {"arm": {"val_auc": scores}}}
    ctx = Context(arms=[], header={})
    assert engine.chosen_lr(_Grid(), state, ctx, {"name": "arm"}, ()) == chosen


def test_a_dropped_in_benchmark_gets_the_cli_and_its_flags(toy, tmp_path, capsys):
    from medfoundry.cli import main

    config = tmp_path / "toy.yaml"
    config.write_text("budgets: [1, 4]\nrepeats: 2\ntune: null\nsteps: 1\n")
    argv = ["benchmark", "toy", "--train-data", "t", "--test-data", "t", "--pretrained", "c"]
    argv += ["--out", str(tmp_path / "o"), "--config", str(config), "--no-progress"]
    assert main([*argv, "--budgets", "2", "--steps", "3", "--repeats", "1"]) == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["config"]["budgets"] == [2] and saved["config"]["steps"] == 3
    assert set(saved["runs"]["c"]) == {"2"} and set(saved["runs"]["c"]["2"]) == {"0"}


def test_every_benchmark_has_the_shared_flags(capsys):
    from medfoundry.cli import main

    found = specs()
    assert {"eve", "hippocampus_fewshot", "jsrt_fewshot", "kermany_label_efficiency"} <= set(found)
    for spec in found.values():
        with pytest.raises(SystemExit):
            main(["benchmark", spec.command, "--help"])
        text = capsys.readouterr().out
        for flag in ("--train-data", "--test-data", "--pretrained", "--out", "--config"):
            assert flag in text, (spec.command, flag)
        assert "--arms" in text and "--set" in text
        assert ("--steps" in text) == spec.has_steps
        assert ("--image-size" in text) == (spec.size_flag == "image-size")
        assert ("--patch-size" in text) == (spec.size_flag == "patch-size")


def test_job_label_names_arm_group_cell_and_lr():
    job = Job("tune", {"name": "scratch"}, ("finetune",), "8", 0, 1e-3)
    assert job.label() == "scratch finetune 8 r=0 tune lr=0.001"
