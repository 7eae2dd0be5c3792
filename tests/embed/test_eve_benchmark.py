"""`medfoundry benchmark eve` on toy JSRT-layout folders: outputs, resume, the measures' rules."""

from __future__ import annotations

import json

import pytest
import torch

from medfoundry.benchmarks import eve as eve_benchmark
from medfoundry.cli import main
from medfoundry.config import apply_overrides, load_config
from medfoundry.embed import load_eve_model, load_images
from medfoundry.evaluate import eve
from medfoundry.evaluate.jsrt_landmarks import read_jsrt_landmarks

TINY = ["crop_size=24", "stride=8", "references=2", "knn_k=3", "composition.wholes_per_scale=2"]


@pytest.fixture
def jsrt_pair(tmp_path, make_jsrt_like):
    train = make_jsrt_like(tmp_path / "train", [f"tr{i}" for i in range(5)], size=64, seed=1)
    test = make_jsrt_like(tmp_path / "test", [f"te{i}" for i in range(3)], size=64, seed=2)
    return train, test


def test_outputs_counts_and_resume(eve_checkpoint, jsrt_pair, tmp_path, monkeypatch, capsys):
    train, test = jsrt_pair
    out = tmp_path / "eve"
    sets = [x for kv in TINY for x in ("--set", kv)]
    cmd = ["benchmark", "eve", "--train-data", str(train), "--test-data", str(test),
           "--pretrained", str(eve_checkpoint), "--out", str(out), "--no-progress", *sets]  # fmt: skip
    assert main(cmd) == 0
    state = json.loads((out / "results.json").read_text())
    assert list(state["arms"]) == ["adam-run", "random"]
    n_lm = len(state["config"]["landmarks"])
    assert n_lm >= 10
    assert set(state["config"]["tests"]) == {"te0", "te1", "te2"}
    assert set(state["config"]["references"]) <= set(state["config"]["memory"])
    for r in state["arms"].values():
        assert r["matching"]["n"] == 2 * 3 * n_lm  # references x test images x landmarks
        assert r["locality"]["n"] == 3 * n_lm
        assert 0 <= r["locality"]["knn_accuracy"] <= 1
        assert set(r["composition"]) == {"1x2", "3x1", "2x2"}
        assert r["composition"]["2x2"]["n"] == 3 * (1 + 2)  # whole + 2 half-side crops per image
    assert "random initialisation" in state["arms"]["random"]["load"]
    for name in ("results.md", "results.png", "tsne_adam-run.png", "tsne_random.png"):
        assert (out / name).stat().st_size > 0
    # a rerun finds every arm done and computes nothing
    monkeypatch.setattr(eve, "evaluate_arm", lambda *a, **k: pytest.fail("recomputed an arm"))
    assert main(cmd) == 0
    # another protocol in the same folder is refused, naming the key
    assert main([*cmd, "--set", "crop_size=16"]) == 2
    assert "crop_size" in capsys.readouterr().err


def test_a_killed_run_resumes_the_missing_arm_only(
    eve_checkpoint, jsrt_pair, tmp_path, monkeypatch
):
    train, test = jsrt_pair
    cfg = apply_overrides(load_config("eve"), TINY)
    real = eve.evaluate_arm
    calls = []

    def dies_on_second(arm, *args, **kwargs):
        calls.append(arm["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(arm, *args, **kwargs)

    monkeypatch.setattr(eve_benchmark, "evaluate_arm", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        eve_benchmark.run_eve_benchmark(
            train, test, [eve_checkpoint], tmp_path / "o", cfg, progress=False
        )
    assert (tmp_path / "o" / "results.partial.json").is_file()
    monkeypatch.setattr(eve_benchmark, "evaluate_arm", real)
    first = json.loads((tmp_path / "o" / "results.partial.json").read_text())["arms"]
    state = eve_benchmark.run_eve_benchmark(
        train, test, [eve_checkpoint], tmp_path / "o", cfg, progress=False
    )
    assert list(state["arms"]) == ["adam-run", "random"]
    assert state["arms"]["adam-run"] == first["adam-run"]
    assert not (tmp_path / "o" / "results.partial.json").exists()


def test_needs_a_checkpoint(jsrt_pair, tmp_path):
    with pytest.raises(eve.MedfoundryError, match="at least one checkpoint"):
        eve.resolve_eve_arms(["none"])


def test_refine_peak_recovers_a_sub_grid_maximum():
    rows, cols = torch.meshgrid(torch.arange(7.0), torch.arange(9.0), indexing="ij")
    sim = -((rows - 3.3) ** 2) - (cols - 5.75) ** 2  # a paraboloid peaking between grid points
    r, c = eve.refine_peak(sim[None])
    assert r.item() == pytest.approx(3.3, abs=1e-4) and c.item() == pytest.approx(5.75, abs=1e-4)
    edge = -((rows - 0.0) ** 2) - (cols - 8.0) ** 2  # peak on the border: no extrapolation
    r, c = eve.refine_peak(edge[None])
    assert (r.item(), c.item()) == (0.0, 8.0)


def test_matching_an_image_with_itself_finds_its_landmarks(eve_checkpoint, jsrt_pair):
    """Reference = target and landmarks on dense-grid centres: each landmark's own crop has
    cosine 1, so the error is below half a grid step (the sub-grid refinement's range)."""
    _, test = jsrt_pair
    model = load_eve_model(eve_checkpoint)
    rec = read_jsrt_landmarks(test)[:1]
    images, sizes = load_images([rec[0].image], model)
    truth = torch.tensor([[[12.0, 20.0], [36.0, 44.0], [52.0, 12.0]]])  # grid centres at stride 8
    ref = eve._landmark_eve(model, images, sizes, truth, 24, 64)
    err = eve.match_landmarks(model, ref, images, sizes, truth, 24, 8, 64, progress=False)
    assert err.shape == (1, 1, 3)
    assert (err <= 4 + 1e-4).all()


def test_knn_accuracy_on_constructed_embeddings():
    memory = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.0]])
    correct = eve.knn_accuracy(memory, labels, queries, torch.tensor([0, 1, 1]), k=3)
    assert correct.tolist() == [1.0, 1.0, 0.0]


def test_identity_vs_location_on_constructed_embeddings():
    """Embeddings that encode the landmark (location) score higher across images than within
    one image, and embeddings that encode the image (identity) the other way round."""
    n, n_lm, d = 4, 3, 16
    lm_code, img_code = torch.randn(n_lm, d), torch.randn(n, d)
    location = lm_code[None].expand(n, -1, -1) + 0.05 * torch.randn(n, n_lm, d)
    identity = img_code[:, None].expand(-1, n_lm, -1) + 0.05 * torch.randn(n, n_lm, d)
    loc, ident = eve.identity_vs_location(location), eve.identity_vs_location(identity)
    assert loc["same_landmark_other_image"] > 0.5 > loc["same_image_other_landmark"]
    assert ident["same_image_other_landmark"] > 0.5 > ident["same_landmark_other_image"]
