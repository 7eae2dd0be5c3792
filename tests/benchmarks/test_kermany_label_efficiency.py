"""The Kermany label-efficiency protocol on tiny synthetic class folders: splits, outputs, resume,
CLI and bad input."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import medfoundry.benchmarks.kermany_label_efficiency as kle
from medfoundry.benchmarks.kermany_label_efficiency import (
    DEFAULT_CONFIG,
    draw_splits,
    resolve_config,
    run_kermany_label_efficiency,
    run_steps,
    scan_labeled,
)
from medfoundry.cli import main
from medfoundry.config import load_config, preset_path
from medfoundry.data.label_budgets import (
    draw_budget,
    parse_budget,
    split_validation,
    subset_seed,
)
from medfoundry.data.manifest import ClassificationItem, patient_id_from_name
from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.errors import InputError, MedfoundryError
from medfoundry.nets import create_backbone
from medfoundry.tasks.linear_probe import evaluate_probe, train_linear_probe
from medfoundry.zoo import save_checkpoint

CLASSES = ["NORMAL", "PNEUMONIA"]
BACKBONE = {"name": "resnet10", "in_channels": 1, "width": 0.125, "spatial_dims": 2}
SWIN = {"name": "swin", "in_channels": 1, "embed_dim": 8, "depths": [1, 1, 1, 1]}
SWIN |= {"num_heads": [1, 1, 2, 2], "window_size": 2, "patch_size": 4, "drop_path": 0.0}
CFG = {
    "budgets": [4, "50%", "100%"],
    "repeats": 2,
    "val_fraction": 0.25,
    "val_max_patients": 2,
    "image_size": 32,
    "backbone": BACKBONE,
    "steps": 4,
    "epochs": 1,
    "max_steps": 6,
    "val_checks": 2,
    "batch_size": 4,
    "tune": None,
    "accelerator": "cpu",
}


def _write_class_folders(root: Path, first_patient: int, n_patients: int, seed: int) -> Path:
    """NORMAL: IM-NNNN-000k.jpeg (noise); PNEUMONIA: personN_bacteria_k.jpeg (a bright blob).

    Every third patient has two images, so patient-level rules differ from image-level ones.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    counter = 0
    for p in range(first_patient, first_patient + n_patients):
        for k in range(1 + (p % 3 == 0)):
            counter += 1
            normal = 90 + rng.normal(0, 25, (32, 32))
            cy, cx = rng.integers(10, 22, size=2)
            blob = 150 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
            pneumonia = 60 + blob + rng.normal(0, 8, (32, 32))
            for cls, img, name in (
                ("NORMAL", normal, f"IM-{p:04d}-{k + 1:04d}.jpeg"),
                ("PNEUMONIA", pneumonia, f"person{p}_bacteria_{counter}.jpeg"),
            ):
                (root / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / name)
    return root


@pytest.fixture(scope="module")
def swin_checkpoint(tmp_path_factory) -> Path:
    """A toy MAE-style run folder: a random Swin backbone's checkpoint."""
    run = tmp_path_factory.mktemp("runs") / "mae_toy"
    bb = create_backbone(**SWIN)
    meta = {"backbone": bb.config, "input_size": 32, "method": "mae"}
    save_checkpoint(run / "checkpoint", bb.state_dict(), meta)
    return run


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(train, test, checkpoint): 10 + 5 patients per class, disjoint ids; a tiny ResNet."""
    base = tmp_path_factory.mktemp("kermany_like")
    train = _write_class_folders(base / "train", 1, 10, seed=1)
    test = _write_class_folders(base / "test", 100, 5, seed=2)
    ckpt = base / "runs" / "adam_toy" / "checkpoint"
    bb = create_backbone(**BACKBONE)
    meta = {
        "backbone": bb.config,
        "input_size": 64,  # overridden by CFG["image_size"]
        "normalization": XRAY_NORMALIZATION,
        "method": "adam",
    }
    save_checkpoint(ckpt, bb.state_dict(), meta)
    return train, test, ckpt


def _items(spec: dict[int, list[int]]) -> list[ClassificationItem]:
    """Items from {label: [images per patient, ...]} with unique patient ids per label."""
    out = []
    for label, counts in spec.items():
        for p, n in enumerate(counts):
            for k in range(n):
                name = f"p{label}_{p}_{k}.png"
                out.append(ClassificationItem(Path(name), label, f"c{label}p{p}"))
    return out


def test_parse_budget_and_seeds():
    assert parse_budget(8).count == 8 and parse_budget("16").label == "16"
    assert parse_budget("10%").percent == 10.0 and parse_budget("100%").label == "100%"
    for bad in ("0", "150%", "abc", "2.5", "0%", -3):
        with pytest.raises(MedfoundryError, match="budget"):
            parse_budget(bad)
    assert subset_seed(0, 1, "8") == subset_seed(0, 1, "8")
    assert len({subset_seed(0, r, b) for r in range(3) for b in ("8", "16", "1%")}) == 9


def test_validation_and_budgets_follow_the_patient_rules():
    items = _items({0: [1] * 30 + [3] * 10, 1: [2] * 40})  # 40 patients per class
    pool, val = split_validation(items, 0.1, 3, seed=5, classes=CLASSES, source="train")
    val_groups = {it.group for it in val}
    assert val_groups.isdisjoint({it.group for it in pool})
    assert len(pool) + len(val) == len(items)
    assert sorted({g[:2] for g in val_groups}) == ["c0", "c1"]
    assert len(val_groups) == 6  # round(0.1 * 40) = 4 per class, capped at 3
    assert split_validation(items, 0.1, 3, 5, CLASSES)[1] == val  # seeded
    assert split_validation(items, 0.1, 3, 6, CLASSES)[1] != val

    eight = draw_budget(pool, parse_budget(8), seed=1, classes=CLASSES)
    assert [sum(it.label == c for it in eight) for c in (0, 1)] == [4, 4]
    assert len({it.group for it in eight}) == 8  # distinct patients while there are enough
    assert draw_budget(pool, parse_budget(8), 1, CLASSES) == eight
    assert draw_budget(pool, parse_budget(8), 2, CLASSES) != eight

    ten = draw_budget(pool, parse_budget("10%"), seed=1, classes=CLASSES)
    groups = {it.group for it in ten}
    assert all(it in ten for it in pool if it.group in groups)  # whole patients
    per_class = [len({it.group for it in ten if it.label == c}) for c in (0, 1)]
    assert per_class == [round(0.1 * 37), round(0.1 * 37)]  # 37 pool patients per class
    tiny = draw_budget(pool, parse_budget("1%"), seed=1, classes=CLASSES)
    assert sorted({it.label for it in tiny}) == [0, 1]  # at least one patient per class
    assert draw_budget(pool, parse_budget("100%"), seed=1, classes=CLASSES) == pool

    with pytest.raises(InputError, match=r"train_dir: budget 200 needs 100 NORMAL images"):
        draw_budget(pool, parse_budget(200), 1, CLASSES, source="train_dir")
    with pytest.raises(MedfoundryError, match="evenly"):
        draw_budget(pool, parse_budget(7), 1, CLASSES)
    one = _items({0: [1], 1: [2, 2]})
    with pytest.raises(InputError, match="class 'NORMAL' has 1 patient"):
        split_validation(one, 0.1, None, 0, CLASSES, source="train_dir")


def test_run_steps_rule():
    cfg = {"steps": 10, "epochs": 2, "max_steps": 100, "val_checks": 4, "batch_size": 8}
    assert run_steps(cfg, 8) == (12, 3)  # 10 steps, rounded up to a multiple of 3
    assert run_steps(cfg, 200) == (52, 13)  # ceil(2 * 200 / 8) = 50
    assert run_steps(cfg, 10_000) == (100, 25)  # capped
    assert run_steps({**cfg, "max_steps": None}, 10_000)[0] == 2500


def test_linear_probe_learns_separable_features():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    f = torch.randn(60, 16, generator=gen) + 3.0 * y[:, None] * torch.eye(16)[0]
    cfg = {"steps": 40, "batch_size": 8, "lr": 0.05, "val_every": 10, "warmup_steps": 2}
    head, info = train_linear_probe(f[:20], y[:20], f[20:40], y[20:40], cfg=cfg, seed=0)
    assert [s for s, _ in info["val_history"]] == [10, 20, 30, 40]
    assert info["best_val_score"] == max(v for _, v in info["val_history"])
    assert evaluate_probe(head, f[40:], y[40:])["auc"] > 0.8  # chance is 0.5


def _recording(monkeypatch, calls):
    """Record (mode, arm checkpoint, seed, labels, image sum) of every training call."""
    real_ft, real_lp = kle.train_classifier, kle.train_linear_probe

    def ft(*args, **kwargs):
        calls.append(
            (
                "ft",
                None if kwargs["pretrained"] is None else str(kwargs["pretrained"]),  # a Checkpoint
                kwargs["seed"],
                args[1].tolist(),
                float(args[0].sum()),
            )
        )
        return real_ft(*args, **kwargs)

    def lp(*args, **kwargs):
        calls.append(("lp", None, kwargs["seed"], args[1].tolist(), None))
        return real_lp(*args, **kwargs)

    monkeypatch.setattr(kle, "train_classifier", ft)
    monkeypatch.setattr(kle, "train_linear_probe", lp)


def test_protocol_outputs_splits_and_resume(folders, tmp_path, monkeypatch):
    train, test, ckpt = folders
    out = tmp_path / "bench"
    calls: list = []
    _recording(monkeypatch, calls)
    cfg = {**CFG, "tune": {"finetune": [1e-3, 3e-3], "linear_probe": [1e-2]}}
    res = run_kermany_label_efficiency(train, test, [ckpt, None], out, cfg, progress=False)
    # 2 arms x (finetune: 2 lrs x 2 tune budgets + 3 budgets x 2 repeats; probe: 1 x 2 + 6)
    assert sum(c[0] == "ft" for c in calls) == 2 * (4 + 6)
    assert sum(c[0] == "lp" for c in calls) == 2 * (2 + 6)
    for name in ("results.json", "results.md", "label_efficiency.png", "config.json"):
        assert (out / name).is_file(), name
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "results.partial.json").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["complete"] is True and saved["budgets"] == ["4", "50%", "100%"]
    arms = list(saved["arms"])
    assert arms == ["adam-adam_toy", "scratch"]
    assert saved["arms"]["scratch"]["backbone"] == saved["arms"]["adam-adam_toy"]["backbone"]
    assert "loaded" in saved["arms"]["adam-adam_toy"]["load_report"]
    test_files = sorted(p.relative_to(test).as_posix() for p in test.rglob("*.jpeg"))
    assert saved["test_files"] == test_files and saved["n_test"] == len(test_files) == 12

    # splits: patient-disjoint from validation, right sizes, both classes, not from test
    def patients(files):
        return {patient_id_from_name(f) for f in files}

    test_patients = patients(test_files)
    for r in ("0", "1"):
        val = saved["validation"][r]
        by_class = [patients(f for f in val["files"] if f.startswith(c)) for c in CLASSES]
        assert [len(g) for g in by_class] == [2, 2]  # round(0.25 * 10) = 2 per class, cap 2
        pool = val["pool_images"]
        for b in saved["budgets"]:
            split = saved["splits"][b][r]
            assert patients(split["files"]).isdisjoint(patients(val["files"]))
            assert patients(split["files"]).isdisjoint(test_patients)
            assert min(split["per_class"].values()) >= 1
            assert split["n_images"] == len(split["files"])
        assert saved["splits"]["4"][r]["per_class"] == {"NORMAL": 2, "PNEUMONIA": 2}
        assert saved["splits"]["100%"][r]["n_images"] == pool
        assert saved["splits"]["50%"][r]["n_patients"] == 8  # 4 of the 8 pool patients per class
    assert saved["validation"]["0"]["files"] != saved["validation"]["1"]["files"]

    # every arm trained on the same subsets with the same seed
    by_seed, arms_by_seed = defaultdict(set), defaultdict(set)
    for kind, pretrained, seed, labels, pixels in calls:
        by_seed[(kind, seed)].add((tuple(labels), pixels))
        arms_by_seed[(kind, seed)].add(pretrained)
    assert all(v == {str(ckpt), None} for (k, _), v in arms_by_seed.items() if k == "ft")
    assert len(by_seed) == 2 * 3 * 2  # modes x budgets x repeats (tuning reuses repeat 0 seeds)
    assert all(len(v) == 1 for v in by_seed.values())
    assert {c[1] for c in calls if c[0] == "ft"} == {str(ckpt), None}

    for arm in arms:
        for mode in ("finetune", "linear_probe"):
            for b in saved["budgets"]:
                for r in ("0", "1"):
                    run = saved["runs"][arm][mode][b][r]
                    assert 0.0 <= run["auc"] <= 1.0 and 0.0 <= run["accuracy"] <= 1.0
                    assert run["best_step"] is not None and run["lr"] > 0
                    assert run["seed"] == saved["splits"][b][r]["seed"]
                s = saved["summary"][arm][mode][b]["auc"]
                assert s["n"] == 2 and s["sd"] >= 0
            tuning = saved["tuning"][arm][mode]
            assert tuning["chosen_lr"] == saved["arms"][arm]["lr"][mode]
            assert tuning["budgets"] == ["4", "100%"]
    assert saved["arms"]["scratch"]["lr"]["linear_probe"] == 1e-2
    md = (out / "results.md").read_text()
    assert "| scratch · fine-tune |" in md and "| adam-adam_toy · linear probe |" in md
    assert re.search(r"\| 50% \(\d+ img\) \|", md) and "±" in md
    assert res["summary"] == saved["summary"]

    # Rerun: nothing trains; more repeats: only the new runs train, old ones are kept.
    def refuse(*args, **kwargs):
        raise AssertionError("finished run retrained")

    monkeypatch.setattr(kle, "train_classifier", refuse)
    monkeypatch.setattr(kle, "train_linear_probe", refuse)
    run_kermany_label_efficiency(train, test, [ckpt, None], out, cfg, progress=False)
    monkeypatch.undo()
    calls.clear()
    _recording(monkeypatch, calls)
    more = run_kermany_label_efficiency(
        train, test, ["none"], out, {**cfg, "repeats": 3}, progress=False
    )
    assert len(calls) == 2 * 3  # scratch only: 2 modes x 3 budgets x the new repeat
    assert (
        more["runs"]["scratch"]["finetune"]["4"]["0"]
        == saved["runs"]["scratch"]["finetune"]["4"]["0"]
    )
    assert more["summary"]["scratch"]["finetune"]["4"]["auc"]["n"] == 3
    with pytest.raises(MedfoundryError, match=r"different configuration \(differs in \['steps'\]"):
        run_kermany_label_efficiency(
            train, test, ["none"], out, {**cfg, "steps": 5}, progress=False
        )


def test_resume_after_interrupt(folders, tmp_path, monkeypatch):
    train, test, _ = folders
    out = tmp_path / "bench"
    real = kle.train_classifier
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(kwargs["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(kle, "train_classifier", dies_on_third)
    cfg = {**CFG, "modes": ["finetune"], "budgets": [4, "100%"], "repeats": 2}
    with pytest.raises(KeyboardInterrupt):
        run_kermany_label_efficiency(train, test, [None], out, cfg, progress=False)
    partial = json.loads((out / "results.partial.json").read_text())
    assert list(partial["runs"]["scratch"]["finetune"]["4"]) == ["0", "1"]
    assert not (out / "results.json").exists()
    calls.clear()
    monkeypatch.setattr(
        kle, "train_classifier", lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    )
    res = run_kermany_label_efficiency(train, test, [None], out, cfg, progress=False)
    assert len(calls) == 2 and res["complete"]
    assert res["runs"]["scratch"]["finetune"]["4"] == partial["runs"]["scratch"]["finetune"]["4"]


def _cli_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    tiny = {**CFG, "extends": "kermany_label_efficiency_cpu", "repeats": 1, "budgets": [4, "100%"]}
    path.write_text(yaml.safe_dump(tiny))
    return path


@pytest.mark.parametrize("checkpoints", ["none", "resnet", "resnet+swin"])
def test_cli_end_to_end(folders, swin_checkpoint, tmp_path, capsys, checkpoints):
    train, test, ckpt = folders
    out = tmp_path / "cli"
    pretrained = {
        "none": ["none"],
        "resnet": [str(ckpt), "none"],
        "resnet+swin": [str(ckpt), str(swin_checkpoint)],
    }[checkpoints]
    argv = ["benchmark", "kermany-label-efficiency", "--train-data", str(train)]
    argv += ["--test-data", str(test), "--pretrained", *pretrained, "--out", str(out)]
    modes = "[finetune, linear_probe]" if checkpoints == "resnet+swin" else "[linear_probe]"
    argv += ["--config", str(_cli_config(tmp_path)), "--no-progress", "--set", f"modes={modes}"]
    assert main(argv) == 0
    assert f"results: {out / 'results.md'}" in capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    expected = {
        "none": ["scratch"],
        "resnet": ["adam-adam_toy", "scratch"],
        "resnet+swin": ["adam-adam_toy", "mae-mae_toy", "scratch", "scratch-swin"],
    }[checkpoints]
    assert list(saved["arms"]) == expected and saved["complete"]
    assert saved["config"]["budgets"] == ["4", "100%"]
    assert saved["arms"]["scratch"]["backbone"]["name"] == "resnet10"
    if checkpoints == "resnet+swin":  # each network gets its own scratch arm
        assert saved["arms"]["scratch-swin"]["backbone"] == saved["arms"]["mae-mae_toy"]["backbone"]
        assert "loaded" in saved["arms"]["mae-mae_toy"]["load_report"]
    for arm in expected:
        for mode in saved["config"]["modes"]:
            assert set(saved["runs"][arm][mode]) == {"4", "100%"}
    assert (out / "label_efficiency.png").is_file()


def _copy_tree(src: Path, dst: Path, skip_class: str | None = None) -> Path:
    for f in src.rglob("*.jpeg"):
        if f.parent.name == skip_class:
            continue
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        (dst / f.parent.name / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("problem", ["missing_class", "empty_class", "renamed_test", "budget"])
def test_bad_input_one_line_error(folders, tmp_path, capsys, problem):
    train, test, _ = folders
    bad = tmp_path / "bad"
    train_arg, test_arg, extra = train, test, []
    if problem == "missing_class":
        train_arg = _copy_tree(train, bad, skip_class="PNEUMONIA")
    elif problem == "empty_class":
        train_arg = _copy_tree(train, bad, skip_class="PNEUMONIA")
        (bad / "PNEUMONIA").mkdir()
    elif problem == "renamed_test":
        test_arg = _copy_tree(test, bad)
        (bad / "PNEUMONIA").rename(bad / "PNEUMONIA_X")
    else:
        extra = ["--budgets", "40"]
    argv = ["benchmark", "kermany-label-efficiency", "--train-data", str(train_arg)]
    argv += ["--test-data", str(test_arg), "--pretrained", "none", "--out", str(tmp_path / "o")]
    argv += ["--config", str(_cli_config(tmp_path)), "--no-progress", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfoundry: error: ") and "\n" not in err
    named = {"missing_class": bad, "empty_class": bad / "PNEUMONIA", "renamed_test": bad}
    assert str(named.get(problem, train)) in err
    expected = {
        "missing_class": "expected at least 2 class folders",
        "empty_class": "class 'PNEUMONIA' is empty",
        "renamed_test": "differ from the train folder's",
        "budget": "budget 40 needs 20 NORMAL images",
    }[problem]
    assert expected in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_wrong_class_names_and_config_errors(folders, tmp_path):
    train, _, _ = folders
    with pytest.raises(InputError, match=r"expected the class folders COVID/, NORMAL/"):
        scan_labeled(train, ["COVID", "NORMAL"])
    with pytest.raises(MedfoundryError, match="modes"):
        resolve_config({"modes": ["knn"]})
    with pytest.raises(MedfoundryError, match="tune has no entry"):
        resolve_config({"tune": {"finetune": [1e-3]}})


@pytest.mark.parametrize("preset", ["kermany_label_efficiency", "kermany_label_efficiency_cpu"])
def test_presets_cover_and_document_every_key(preset):
    cfg = resolve_config(load_config(preset))
    assert set(cfg) == set(DEFAULT_CONFIG)
    text = preset_path(preset).read_text()
    data = yaml.safe_load(text)
    lines = text.splitlines()
    for key in data:
        if key == "extends":
            continue
        i = next(n for n, line in enumerate(lines) if line.startswith(f"{key}:"))
        documented = "#" in lines[i] or lines[i + 1].lstrip().startswith("#")
        assert documented, f"{preset}: key {key!r} has no comment"


def test_real_kermany_splits(shared_data):
    folder = shared_data / "kermany"
    if not folder.is_dir():
        pytest.skip("../shared/data/kermany not present")
    items = scan_labeled(folder, CLASSES)
    budgets = [parse_budget(b) for b in DEFAULT_CONFIG["budgets"]]
    cfg = resolve_config({"repeats": 1})
    validation, splits = draw_splits(items, budgets, cfg, folder)
    val = validation["0"]
    assert val["n_patients"] == 100  # 10 % of ~1,000 / ~1,370 patients, capped at 50 per class
    assert splits["8"]["0"]["per_class"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert splits["32"]["0"]["n_patients"] == 32
    assert min(splits["1%"]["0"]["per_class"].values()) >= 9
    assert splits["100%"]["0"]["n_images"] == val["pool_images"] == len(items) - val["n_images"]
    assert 0.005 < splits["1%"]["0"]["fraction"] < 0.02


def test_arms_as_separate_processes_merge_with_modes_and_tuning(folders, tmp_path, monkeypatch):
    """`--arms` processes (one stopped part-way, one complete copy of it, one scratch-only)
    merged with `benchmark merge` finish without training and equal the one-process run,
    lr-tuning scores of both modes included (the mode level is not a budget)."""
    from medfoundry.benchmarks.merge import merge_benchmark_folders

    train, test, ckpt = folders
    tune = {"finetune": [1e-3, 3e-3], "linear_probe": [1e-2, 1e-1]}
    cfg = {**CFG, "budgets": [4, "100%"], "tune": tune}
    whole = run_kermany_label_efficiency(train, test, [ckpt], tmp_path / "whole", cfg, False)
    arm = next(a for a in whole["arms"] if a != "scratch")
    assert set(whole["tuning"][arm]) == {"finetune", "linear_probe"}

    def run(out: str, arms: list[str]) -> dict:
        return kle.SPEC.run(train, test, [ckpt], tmp_path / out, cfg, False, arms=arms)

    run("copy", [arm])
    run("scratch", ["scratch"])
    real, calls = kle.train_classifier, []

    def dies_on_fourth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(kle, "train_classifier", dies_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run("part", [arm])
    merged = merge_benchmark_folders(tmp_path / "part", [tmp_path / "copy", tmp_path / "scratch"])
    assert merged == {str(tmp_path / "copy"): [arm], str(tmp_path / "scratch"): ["scratch"]}

    def refuse(*args, **kwargs):
        raise AssertionError("every job should be done after the merge")

    monkeypatch.setattr(kle, "train_classifier", refuse)
    monkeypatch.setattr(kle, "train_linear_probe", refuse)
    done = run_kermany_label_efficiency(train, test, [ckpt], tmp_path / "part", cfg, False)
    assert done["complete"]
    assert done["summary"] == whole["summary"] and done["tuning"] == whole["tuning"]
    assert done["arms"][arm]["lr"] == whole["arms"][arm]["lr"]


def test_arms_flag_names_the_unknown_arm(folders, tmp_path):
    train, test, ckpt = folders
    with pytest.raises(MedfoundryError, match=r"--arms nope: no such arm; the arms are \["):
        kle.SPEC.run(train, test, [ckpt], tmp_path / "o", CFG, False, arms=["nope"])
