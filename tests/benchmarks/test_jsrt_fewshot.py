"""The JSRT few-shot protocol on a tiny synthetic JSRT-like set: outputs, splits, resume."""

from __future__ import annotations

import json

import pytest
import torch

import medfoundry.benchmarks.jsrt_fewshot as fewshot
from medfoundry.benchmarks.jsrt_fewshot import JSRT_STRUCTURES, run_jsrt_fewshot, split_ids
from medfoundry.data.manifest import scan_segmentation_folder
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.segmentation import load_segmentation_set, structure_groups
from medfoundry.errors import MedfoundryError
from medfoundry.evaluate.baselines import MEAN_MASK, mean_mask_dice
from medfoundry.nets import create_backbone
from medfoundry.tasks.segmentation import evaluate, train_segmenter
from medfoundry.zoo import save_checkpoint

NAMES = ["heart", "left_clavicle", "right_clavicle", "left_lung", "right_lung"]
BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
CFG = {
    "shots": [2],
    "repeats": 2,
    "val_size": 2,
    "image_size": 64,
    "backbone": BACKBONE,
    "decoder_channels": [32, 16, 16, 8, 8],
    "steps": 12,
    "batch_size": 2,
    "val_every": 6,
    "lr": 3e-3,
    "accelerator": "cpu",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_jsrt_like):
    base = tmp_path_factory.mktemp("jsrt_like")
    train = make_jsrt_like(base / "train", [f"TR{i:02d}" for i in range(6)], seed=1)
    test = make_jsrt_like(base / "test", [f"TE{i:02d}" for i in range(4)], seed=2)
    ckpt = base / "runs" / "adam_toy" / "checkpoint"
    bb = create_backbone(**BACKBONE)
    save_checkpoint(
        ckpt,
        bb.state_dict(),
        {
            "backbone": bb.config,
            "input_size": 96,  # overridden by CFG["image_size"]
            "normalization": XRAY_NORMALIZATION,
            "method": "adam",
        },
    )
    return train, test, ckpt


def test_split_ids_disjoint_and_reproducible():
    pool = [f"P{i}" for i in range(20)]
    tr, va = split_ids(pool, 5, 6, seed=7)
    assert len(tr) == 5 and len(va) == 6 and not set(tr) & set(va)
    assert (tr, va) == split_ids(list(reversed(pool)), 5, 6, seed=7)  # order-independent
    assert split_ids(pool, 5, 6, seed=8) != (tr, va)
    with pytest.raises(MedfoundryError):
        split_ids(pool, 15, 6, seed=0)


def test_protocol_outputs_and_resume(folders, tmp_path, monkeypatch):
    train, test, ckpt = folders
    out = tmp_path / "bench"
    calls = []
    real = fewshot.train_segmenter

    def counting(*args, **kwargs):
        calls.append(kwargs["pretrained"])
        return real(*args, **kwargs)

    monkeypatch.setattr(fewshot, "train_segmenter", counting)
    res = run_jsrt_fewshot(train, test, [ckpt, None], out, CFG, progress=False)
    assert len(calls) == 4  # 2 arms x 1 shot x 2 repeats
    for name in ("results.json", "results.md", "results.png", "config.json"):
        assert (out / name).is_file(), name
    assert not (out / "results.partial.json").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] is True
    arms = list(saved["arms"])
    assert arms == ["adam-adam_toy", "scratch"]
    assert "loaded" in saved["arms"]["adam-adam_toy"]["load_report"]
    assert saved["arms"]["scratch"]["load_report"] is None
    assert saved["arms"]["scratch"]["backbone"] == saved["arms"]["adam-adam_toy"]["backbone"]
    assert saved["arms"]["adam-adam_toy"]["image_size"] == 64

    test_ids = sorted(p.stem for p in (test / "images").iterdir())
    train_ids = {p.stem for p in (train / "images").iterdir()}
    assert saved["test_ids"] == test_ids
    for arm in arms:
        for r in ("0", "1"):
            run = saved["runs"][arm]["2"][r]
            assert set(run["dice_mean"]) == {"heart", "clavicle", "lungs"}
            assert all(len(v) == len(test_ids) for v in run["dice"].values())
            assert all(0.0 <= v <= 1.0 for v in run["dice_mean"].values())
            tr, va = set(run["train_ids"]), set(run["val_ids"])
            assert len(tr) == 2 and len(va) == 2 and not tr & va
            assert tr | va <= train_ids and not (tr | va) & set(test_ids)
    # identical subsets for every arm; different subsets across repeats
    runs = saved["runs"]
    assert runs["scratch"]["2"]["0"]["train_ids"] == runs["adam-adam_toy"]["2"]["0"]["train_ids"]
    assert saved["splits"]["2"]["0"]["train_ids"] == runs["scratch"]["2"]["0"]["train_ids"]
    assert (
        saved["splits"]["2"]["0"]["train_ids"] + saved["splits"]["2"]["0"]["val_ids"]
        != saved["splits"]["2"]["1"]["train_ids"] + saved["splits"]["2"]["1"]["val_ids"]
    )
    summary = saved["summary"]["scratch"]["2"]["heart"]
    assert summary["n"] == 2 and summary["sd"] >= 0
    md = (out / "results.md").read_text()
    assert "scratch" in md and "adam-adam_toy" in md and "heart k=2" in md and "±" in md
    assert res["summary"] == saved["summary"]
    # the mean-mask reference row: no training, the same splits, exact on recomputation
    ref = saved["summary"][MEAN_MASK]["2"]
    assert ref["heart"]["n"] == 2 and set(ref) == {"heart", "clavicle", "lungs", "mean"}
    assert "| mean mask |" in md
    groups = structure_groups(["heart", "clavicle", "lungs"], named=JSRT_STRUCTURES)
    load = dict(size=64, structures=groups, channels=1, normalization=XRAY_NORMALIZATION)
    by_id = {it.id: it for it in scan_segmentation_folder(train, structures=NAMES)}
    test_items = scan_segmentation_folder(test, structures=NAMES)
    _, ty = load_segmentation_set(sorted(test_items, key=lambda it: it.id), **load)
    per_repeat = []
    for r in ("0", "1"):
        ids = saved["splits"]["2"][r]["train_ids"]
        _, py = load_segmentation_set([by_id[i] for i in ids], **load)
        per_repeat.append(float(mean_mask_dice(py, ty)[:, 0].mean()))
    assert ref["heart"]["mean"] == pytest.approx(sum(per_repeat) / 2)

    # Rerun: everything is finished, nothing trains; more repeats -> only the new runs train.
    def refuse(*args, **kwargs):
        raise AssertionError("finished run retrained")

    monkeypatch.setattr(fewshot, "train_segmenter", refuse)
    run_jsrt_fewshot(train, test, [ckpt], out, CFG, progress=False)
    calls.clear()
    monkeypatch.setattr(fewshot, "train_segmenter", counting)
    more = run_jsrt_fewshot(train, test, [ckpt], out, {**CFG, "repeats": 3}, progress=False)
    assert len(calls) == 2
    assert more["summary"]["scratch"]["2"]["heart"]["n"] == 3
    assert more["runs"]["scratch"]["2"]["0"] == saved["runs"]["scratch"]["2"]["0"]
    # A different recipe in the same folder is refused instead of mixing results.
    with pytest.raises(MedfoundryError, match="different configuration"):
        run_jsrt_fewshot(train, test, [ckpt], out, {**CFG, "steps": 13}, progress=False)


def test_partial_results_resume_after_interrupt(folders, tmp_path, monkeypatch):
    train, test, _ = folders
    out = tmp_path / "bench"
    real = fewshot.train_segmenter
    calls = []

    def dies_on_second(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fewshot, "train_segmenter", dies_on_second)
    cfg = {**CFG, "steps": 4, "val_every": 4}
    with pytest.raises(KeyboardInterrupt):
        run_jsrt_fewshot(train, test, ["none"], out, cfg, progress=False)
    partial = json.loads((out / "results.partial.json").read_text())
    assert list(partial["runs"]["scratch"]["2"]) == ["0"]
    assert not (out / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(
        fewshot, "train_segmenter", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    res = run_jsrt_fewshot(train, test, ["none"], out, cfg, progress=False)
    assert len(calls) == 1 and res["complete"] and list(res["arms"]) == ["scratch"]


def test_training_learns_the_synthetic_structures(folders):
    train, test, _ = folders
    items = scan_segmentation_folder(train, structures=NAMES)
    x, y = load_segmentation_set(items, 64, JSRT_STRUCTURES)
    test_items = scan_segmentation_folder(test, structures=NAMES)
    tx, ty = load_segmentation_set(test_items, 64, JSRT_STRUCTURES)
    cfg = {**CFG, "steps": 60, "batch_size": 4, "val_every": 20}
    model, info = train_segmenter(
        x[:4],
        y[:4],
        x[4:],
        y[4:],
        backbone_cfg=BACKBONE,
        pretrained=None,
        cfg=cfg,
        out_dir=None,
        seed=0,
        progress=False,
        structures=["heart", "clavicle", "lungs"],
    )
    assert info["steps"] == 60 and info["best_step"] in (20, 40, 60)
    assert [s for s, _ in info["val_history"]] == [20, 40, 60]
    dice = evaluate(model, tx, ty).mean(0)
    assert dice[0] > 0.5, f"heart Dice {dice.tolist()}"  # chance level is ~0.15
    assert dice[2] > 0.6, f"lung Dice {dice.tolist()}"
    assert torch.isfinite(dice).all()


def test_swin_arms_train_with_the_swin_section_and_resnet_arms_ignore_it(folders, tmp_path):
    train, test, _ = folders
    swin_bb = {
        "name": "swin",
        "in_channels": 1,
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 2, 2],
        "window_size": 2,
        "patch_size": 4,
        "drop_path": 0.0,
    }
    section = {"steps": 3, "val_every": 3, "grad_clip": 0.5, "tune": {"lr": [1e-3, 2e-3]}}
    seen: list[dict] = []
    real = fewshot.train_segmenter

    def recording(*args, **kwargs):
        seen.append(kwargs["cfg"])
        return real(*args, **kwargs)

    cfg = {**CFG, "repeats": 1, "steps": 4, "val_every": 4}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fewshot, "train_segmenter", recording)
        out = tmp_path / "resnet"
        run_jsrt_fewshot(train, test, ["none"], out, cfg, progress=False)
        plain = seen.pop()
        # a ResNet-only folder resumes (nothing retrains) after a swin section is added
        run_jsrt_fewshot(train, test, ["none"], out, {**cfg, "swin": section}, progress=False)
        # ... and so does a folder written before grad_clip / layer_decay / warmup_fraction existed
        state = json.loads((out / "results.json").read_text())
        for key in ("grad_clip", "layer_decay", "warmup_fraction", "swin"):
            del state["config"][key]
        (out / "results.json").write_text(json.dumps(state))
        run_jsrt_fewshot(train, test, ["none"], out, cfg, progress=False)
        assert seen == []
        with pytest.raises(MedfoundryError, match="different configuration"):
            run_jsrt_fewshot(train, test, ["none"], out, {**cfg, "grad_clip": 1.0}, False)
        run_jsrt_fewshot(train, test, ["none"], tmp_path / "r2", {**cfg, "swin": section}, False)
        assert seen.pop() == plain and "swin" not in plain and plain["grad_clip"] is None
        res = run_jsrt_fewshot(
            train,
            test,
            ["none"],
            tmp_path / "swin",
            {**cfg, "backbone": swin_bb, "swin": section},
            progress=False,
        )
    assert [c["lr"] for c in seen] == [1e-3, 2e-3, res["arms"]["scratch"]["lr"]]  # tune, run
    assert all(c["steps"] == 3 and c["grad_clip"] == 0.5 and "swin" not in c for c in seen)
    assert res["arms"]["scratch"]["recipe"] == section
    with pytest.raises(MedfoundryError, match="training keys only"):
        run_jsrt_fewshot(
            train, test, ["none"], tmp_path / "bad", {**cfg, "swin": {"shots": [3]}}, False
        )


def test_arms_as_separate_processes_merge_into_the_one_process_results(
    folders, tmp_path, monkeypatch
):
    """A checkpoint arm and the scratch arm run as two `--arms` processes, merged with
    `benchmark merge`, finish without training and equal the one-process run (tuning too)."""
    from medfoundry.cli import main

    train, test, ckpt = folders
    cfg = {**CFG, "shots": [2, 3], "repeats": 1, "steps": 4, "val_every": 2}
    cfg |= {"image_size": 32, "tune": {"lr": [1e-3, 3e-3]}}
    whole = run_jsrt_fewshot(train, test, [ckpt, None], tmp_path / "whole", cfg, progress=False)
    arm = next(a for a in whole["arms"] if a != "scratch")
    for out, arms in (("a", [arm]), ("b", ["scratch"])):
        fewshot.SPEC.run(train, test, [ckpt, None], tmp_path / out, cfg, False, arms=arms)
    assert main(["benchmark", "merge", "--into", str(tmp_path / "a"), str(tmp_path / "b")]) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("every job should be done after the merge")

    monkeypatch.setattr(fewshot, "train_segmenter", refuse)
    done = run_jsrt_fewshot(train, test, [ckpt, None], tmp_path / "a", cfg, progress=False)
    assert done["complete"] and done["summary"] == whole["summary"]
    assert done["tuning"] == whole["tuning"] and set(done["tuning"]) == {arm, "scratch"}
