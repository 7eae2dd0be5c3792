"""The Hippocampus few-shot protocol on tiny synthetic MSD folders: outputs, splits, resume,
bad input."""

from __future__ import annotations

import json

import pytest
import torch
from synthetic3d import write_blob_msd

import medfoundry.benchmarks.hippocampus_fewshot as hf
from medfoundry.benchmarks.hippocampus_fewshot import parse_budgets, run_hippocampus_fewshot
from medfoundry.cli import main
from medfoundry.data.store.build import prepare_store
from medfoundry.data.store.reader import open_store
from medfoundry.errors import CheckpointError, InputError, MedfoundryError
from medfoundry.nets import PCTNet, create_backbone
from medfoundry.nets.unet import ResNetUNet
from medfoundry.zoo import save_checkpoint

CFG = {
    "budgets": [2, "all"],
    "repeats": 1,
    "val_size": 2,
    "resnet_unet": {"backbone": {"name": "resnet10", "width": 0.125}, "decoder_channels": [8] * 5},
    "patch_size": [32, 32, 32],
    "steps": 4,
    "val_every": 2,
    "batch_size": 2,
    "accelerator": "cpu",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Train pool (9 cases, one with an empty label), test folder (3 cases), and a Volume
    Fusion-style checkpoint (encoder + decoder) recording the train folder's preprocessing."""
    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("hippo_like")
    train = write_blob_msd(base / "train", 9, seed=0, empty=[4])
    test = write_blob_msd(base / "test", 3, seed=1, prefix="test")
    prepare_store(train, base / "pretrain_store", progress=False)
    pre = open_store(base / "pretrain_store").preprocessing
    bb = create_backbone(name="resnet10", width=0.125, in_channels=1, spatial_dims=3)
    net = ResNetUNet(bb, 5, decoder_channels=[8] * 5)
    meta = {
        "method": "volume_fusion",
        "backbone": bb.config,
        "in_channels": 1,
        "spatial_dims": 3,
        "decoder": {"type": "resnet_unet", "decoder_channels": [8] * 5},
        "normalization": {"name": "store", **pre},
    }
    ckpt = base / "runs" / "vf_toy" / "checkpoint"
    save_checkpoint(ckpt, bb.state_dict(), meta, decoder=net.decoder.state_dict())
    return train, test, ckpt


def test_protocol_outputs_and_resume(folders, tmp_path, monkeypatch):
    train, test, ckpt = folders
    out = tmp_path / "bench"
    calls = []
    real = hf.train_segmenter3d

    def counting(*args, **kwargs):
        calls.append(kwargs["setup"]["checkpoint"])
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "train_segmenter3d", counting)
    with pytest.warns(UserWarning, match="empty label"):
        res = run_hippocampus_fewshot(train, test, [ckpt, "none"], out, CFG, progress=False)
    assert len(calls) == 4  # 2 arms x 2 budgets x 1 repeat
    for name in ("results.json", "results.md", "results.png", "config.json", "versions.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    arms = ["volume_fusion-vf_toy", "scratch"]
    assert sorted((r["arm"], r["budget"], r["repeat"]) for r in saved["rows"]) == sorted(
        (a, b, 0) for a in arms for b in ("2", "all")
    )
    assert saved["excluded_empty_labels"] == ["case_004"] and saved["pool_size"] == 8
    split = saved["splits"]["0"]
    assert len(split["train_ids"]["2"]) == 2 and len(split["train_ids"]["all"]) == 6
    assert not set(split["val_ids"]) & set(split["train_ids"]["all"])
    assert set(split["train_ids"]["2"]) <= set(split["train_ids"]["all"])  # nested budgets
    assert not set(saved["test_ids"]) & set(saved["pool_ids"])
    for arm in arms:
        run = saved["runs"][arm]["2"]["0"]
        assert run["train_ids"] == split["train_ids"]["2"]  # the same cases for every arm
        assert len(run["dice"]["anterior"]) == len(run["dice"]["posterior"]) == 3  # every case
        assert len(run["hd95"]["posterior"]) == 3
    info = saved["arms"]["volume_fusion-vf_toy"]
    bb = create_backbone(name="resnet10", width=0.125, in_channels=1, spatial_dims=3)
    n_enc = len(bb.state_dict())
    n_dec = len(ResNetUNet(bb, 3, decoder_channels=[8] * 5).decoder.state_dict())
    assert f"encoder {n_enc}/{n_enc} tensors, decoder {n_dec}/{n_dec}" in info["load_report"]
    assert saved["arms"]["scratch"]["options"] == info["options"]  # the same network
    table = (out / "results.md").read_text()
    assert "anterior n=2" in table and "posterior n=all" in table and "scratch" in table
    assert res["complete"] and not (out / "results.partial.json").exists()
    assert (out / "stores" / "train" / "store.json").is_file()

    mtime = (out / "results.json").stat().st_mtime_ns
    run_hippocampus_fewshot(train, test, [ckpt, "none"], out, CFG, progress=False)
    assert len(calls) == 4, "a finished run was retrained"
    again = json.loads((out / "results.json").read_text())
    assert again["runs"] == saved["runs"] and (out / "results.json").stat().st_mtime_ns >= mtime

    with pytest.raises(MedfoundryError, match="different configuration"):
        run_hippocampus_fewshot(train, test, [ckpt], out, {**CFG, "steps": 5}, progress=False)


def test_too_few_cases_for_budget_and_validation_names_the_numbers(folders, tmp_path):
    train, test, _ = folders
    cfg = {**CFG, "budgets": [7], "val_size": 2}
    with pytest.raises(InputError, match=r"8 labeled training cases .* budget 7 \+ 2 validation"):
        run_hippocampus_fewshot(train, test, ["none"], tmp_path / "b", cfg, progress=False)


def test_2d_checkpoint_is_refused_before_any_work(folders, tmp_path):
    train, test, _ = folders
    bb = create_backbone(name="resnet10", width=0.125, in_channels=1)
    save_checkpoint(tmp_path / "c2d", bb.state_dict(), {"backbone": bb.config, "method": "adam"})
    with pytest.raises(CheckpointError, match="2D checkpoint"):
        run_hippocampus_fewshot(train, test, [tmp_path / "c2d"], tmp_path / "b", CFG)
    assert not (tmp_path / "b" / "stores").exists()


def _pctnet_checkpoint(folder, train):
    """A Volume Fusion PCT-Net-style checkpoint (encoder + decoder) with ``train``'s store
    preprocessing."""
    torch.manual_seed(0)
    prepare_store(train, folder / "store", progress=False)
    pre = open_store(folder / "store").preprocessing
    net = PCTNet(create_backbone("pctnet", width=0.125, window_size=4), 5, deep_supervision=True)
    meta = {
        "method": "volume_fusion",
        "backbone": net.encoder.config,
        "in_channels": 1,
        "spatial_dims": 3,
        "decoder": net.decoder.config,
        "normalization": {"name": "store", **pre},
    }
    ckpt = folder / "vf_pct" / "checkpoint"
    save_checkpoint(ckpt, net.encoder.state_dict(), meta, decoder=net.decoder.state_dict())
    return ckpt, net


def test_pctnet_checkpoint_runs_with_a_pctnet_scratch_arm(folders, tmp_path):
    train, test, _ = folders
    ckpt, net = _pctnet_checkpoint(tmp_path, train)
    cfg = {**CFG, "budgets": [2], "steps": 2, "patch_size": [16, 32, 32]}
    with pytest.warns(UserWarning, match="empty label"):
        res = run_hippocampus_fewshot(train, test, [ckpt], tmp_path / "b", cfg, progress=False)
    arms = res["arms"]
    assert {a["network"] for a in arms.values()} == {"pctnet"} and len(arms) == 2
    assert arms["scratch"]["options"] == arms["volume_fusion-vf_pct"]["options"]
    n_enc, n_dec = len(net.encoder.state_dict()), len(net.decoder.state_dict())
    assert arms["volume_fusion-vf_pct"]["load_report"] == (
        f"encoder {n_enc}/{n_enc} tensors, decoder {n_dec}/{n_dec} tensors, "
        "head and aux_heads re-initialised"
    )
    assert len(res["runs"]["scratch"]["2"]["0"]["dice"]["anterior"]) == 3
    bad = {**cfg, "patch_size": [12, 32, 32]}  # resolution_mode 1: D must be a multiple of 8
    with pytest.raises(MedfoundryError, match=r"arm volume_fusion-vf_pct: .*D = 12 is not"):
        run_hippocampus_fewshot(train, test, [ckpt], tmp_path / "c", bad, progress=False)
    assert not (tmp_path / "c" / "stores").exists()  # refused before any work


def test_budgets_parse():
    assert parse_budgets([5, "10", "all", 5]) == [5, 10, "all"]
    with pytest.raises(MedfoundryError, match="budget"):
        parse_budgets([0])
    with pytest.raises(MedfoundryError, match="budget"):
        parse_budgets(["half"])


def test_cli_help_lists_the_benchmark(capsys):
    with pytest.raises(SystemExit):
        main(["benchmark", "hippocampus-fewshot", "--help"])
    text = capsys.readouterr().out
    assert "--train-data" in text and "hippocampus_fewshot_cpu" in text


def test_hd95_off_gives_dice_only_outputs(folders, tmp_path):
    train, test, _ = folders
    cfg = {**CFG, "budgets": [2], "steps": 2, "hd95": False}
    with pytest.warns(UserWarning, match="empty label"):
        res = run_hippocampus_fewshot(train, test, ["none"], tmp_path / "o", cfg, progress=False)
    assert "summary_hd95" not in res and "hd95" not in res["runs"]["scratch"]["2"]["0"]
    md = (tmp_path / "o" / "results.md").read_text()
    assert "Dice" in md and "HD95" not in md


def test_arms_run_as_separate_processes_merge_into_the_same_results(folders, tmp_path, monkeypatch):
    """A checkpoint arm stopped before its scratch arm + a scratch-only folder, merged with
    `benchmark merge`, finish without training and give the one-process results."""
    train, test, ckpt = folders
    cfg = {**CFG, "budgets": [2], "hd95": False}
    with pytest.warns(UserWarning, match="empty label"):
        whole = run_hippocampus_fewshot(train, test, [ckpt], tmp_path / "whole", cfg, False)
        run_hippocampus_fewshot(train, test, ["none"], tmp_path / "scratch", cfg, False)
    real = hf.train_segmenter3d

    def stop_at_scratch(*args, **kwargs):
        if kwargs["setup"]["checkpoint"] is None:
            raise KeyboardInterrupt  # the process is stopped where the scratch arm begins
        return real(*args, **kwargs)

    monkeypatch.setattr(hf, "train_segmenter3d", stop_at_scratch)
    part = tmp_path / "part"
    with pytest.warns(UserWarning, match="empty label"), pytest.raises(KeyboardInterrupt):
        run_hippocampus_fewshot(train, test, [ckpt], part, cfg, False)
    assert main(["benchmark", "merge", "--into", str(part), str(tmp_path / "scratch")]) == 0

    def no_training(*args, **kwargs):
        raise AssertionError("every job should be done after the merge")

    monkeypatch.setattr(hf, "train_segmenter3d", no_training)
    with pytest.warns(UserWarning, match="empty label"):
        merged = run_hippocampus_fewshot(train, test, [ckpt], part, cfg, False)
    assert merged["complete"] and (part / "results.md").is_file()
    assert merged["summary"] == whole["summary"]
    assert merged["tuning"] == whole["tuning"]


def test_merge_refuses_another_protocol_or_network(folders, tmp_path):
    train, test, _ = folders
    cfg = {**CFG, "budgets": [2], "hd95": False, "steps": 2, "val_every": 2}
    with pytest.warns(UserWarning, match="empty label"):
        run_hippocampus_fewshot(train, test, ["none"], tmp_path / "a", cfg, False)
        run_hippocampus_fewshot(train, test, ["none"], tmp_path / "b", {**cfg, "steps": 4}, False)
        wide = {**cfg, "resnet_unet": {**CFG["resnet_unet"], "decoder_channels": [16] * 5}}
        run_hippocampus_fewshot(train, test, ["none"], tmp_path / "c", wide, False)
    from medfoundry.benchmarks.merge import merge_benchmark_folders

    with pytest.raises(MedfoundryError, match=r"config\.steps"):
        merge_benchmark_folders(tmp_path / "a", [tmp_path / "b"])
    with pytest.raises(MedfoundryError, match="config.resnet_unet"):
        merge_benchmark_folders(tmp_path / "a", [tmp_path / "c"])
    with pytest.raises(MedfoundryError, match="not a benchmark folder"):
        merge_benchmark_folders(tmp_path / "a", [tmp_path])


def test_same_arm_network_compares_what_the_options_build():
    implicit = {"network": "resnet_unet", "options": CFG["resnet_unet"]}
    explicit = {
        "network": "resnet_unet",
        "options": {
            "backbone": {"name": "resnet10", "width": 0.125, "in_channels": 1, "spatial_dims": 3},
            "decoder_channels": [8] * 5,
        },
    }
    wider = {
        "network": "resnet_unet",
        "options": {**CFG["resnet_unet"], "decoder_channels": [16] * 5},
    }
    assert hf.same_arm_network(implicit, explicit)
    assert not hf.same_arm_network(implicit, wider)
    assert not hf.same_arm_network(implicit, {"network": "unet", "options": {}})
