"""`medfoundry pretrain --method adam_v2` end to end on tiny images: stages L then LCD, the
teacher exported, LCD warm-started from L, curves, selection by retrieval."""

from __future__ import annotations

import pytest
import torch

from medfoundry.nets import create_backbone
from medfoundry.train.engine import read_checkpoint
from medfoundry.zoo import load_backbone, read_meta

TINY = [
    "backbone={name: resnet10, width: 0.125, in_channels: 1}",
    "data={load_size: 64, val_fraction: 0.2, num_workers: 0}",
    "views.out_size=32",
    "views.augment.n_local=2",
    "views.augment.local_size=16",
    "adam_v2.head_dim=64",
    "adam_v2.head_hidden=32",
    "adam_v2.head_bottleneck=16",
    "granularities={L: [0, 1], LCD: [1]}",
    "epochs={L: [1, 1], LCD: [1]}",
    "optim.warmup_epochs=1",
    "trainer={accelerator: cpu, devices: 1}",
]


@pytest.fixture(scope="module")
def adam_v2_run(tmp_path_factory):
    """One tiny run of the CLI (shared by the tests below: it is the slow part)."""
    import numpy as np
    from PIL import Image

    from medfoundry.cli import main

    root = tmp_path_factory.mktemp("adam_v2")
    folder = root / "xrays"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for i in range(12):
        cy, cx = rng.integers(16, 48, size=2)
        img = 60 + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 80.0)
        img = np.clip(img + rng.normal(0, 8, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:02d}.png")
    run = root / "run"
    args = ["pretrain", "--method", "adam_v2", "--data", str(folder), "--out", str(run)]
    args += ["--no-progress", "--batch-size", "4"]
    for pair in TINY:
        args += ["--set", pair]
    assert main(args) == 0
    return run


def _state(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_stages_run_in_order_and_the_teacher_exports(adam_v2_run) -> None:
    run = adam_v2_run
    meta = read_meta(run)
    assert meta.method == "adam_v2" and meta.input_size == 32
    assert meta.levels_trained == (0, 1, 1)  # L at g = 0, 1; LCD at g = 1
    assert sorted(d.name for d in run.glob("stage*")) == ["stage0_L", "stage1_LCD"]
    backbone = create_backbone(**meta.backbone.config)
    report = load_backbone(run, backbone)
    assert report.loaded == report.total_model == report.total_checkpoint
    # the export is the selected LCD checkpoint's teacher backbone, not its student
    selected = run / "stage1_LCD" / "checkpoints" / "best.ckpt"
    state = _state(selected)
    exported = backbone.state_dict()
    for key, value in exported.items():
        assert torch.equal(value, state[f"method.teacher_backbone.{key}"]), key
    student = [k for k in exported if k.endswith("weight")]
    assert any(not torch.equal(exported[k], state[f"method.backbone.{k}"]) for k in student)


def test_lcd_starts_from_l_and_logs_its_terms(adam_v2_run) -> None:
    from medfoundry.train.curves import panels_for, read_stage_log

    run = adam_v2_run
    l_log, lcd_log = read_stage_log(run / "stage0_L"), read_stage_log(run / "stage1_LCD")
    for key in ("loss_l", "retrieval", "mean_length", "spread", "teacher_entropy"):
        assert f"train/{key}_step" in l_log and f"val/{key}" in lcd_log
    assert "train/loss_c_step" in lcd_log and "train/loss_d_step" in lcd_log
    assert "train/loss_c_step" not in l_log  # stage L has no C/D terms
    titles = [p.title for p in panels_for([l_log, lcd_log], "adam_v2")]
    assert any("composability" in t for t in titles) and any("teacher entropy" in t for t in titles)
    assert (run / "curves.png").stat().st_size > 0
    # LCD's centre moved on from L's (it was loaded, then updated), L's is not zero
    l_state = _state(run / "stage0_L" / "checkpoints" / "best.ckpt")
    assert l_state["method.center"].abs().sum() > 0
    # selection by validation retrieval, as for the other contrastive methods
    ckpt = torch.load(
        run / "stage0_L" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    monitors = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert monitors and monitors[0]["monitor"] == "val/retrieval"


def test_lcd_is_warm_started_from_the_selected_l_checkpoint(adam_v2_run) -> None:
    run = adam_v2_run
    l_best = _state(run / "stage0_L" / "checkpoints" / "best.ckpt")
    lcd = _state(run / "stage1_LCD" / "checkpoints" / "last.ckpt")
    fresh = create_backbone(**read_meta(run).backbone.config).state_dict()
    key = "layer1.0.conv1.weight"
    for part in ("backbone", "teacher_backbone"):
        near = (lcd[f"method.{part}.{key}"] - l_best[f"method.{part}.{key}"]).norm()
        assert near < (lcd[f"method.{part}.{key}"] - fresh[key]).norm()


def test_adam_v2_selects_by_retrieval_and_refuses_bad_epochs(tmp_path) -> None:
    from medfoundry.config import apply_overrides, load_config
    from medfoundry.errors import MedfoundryError
    from medfoundry.tasks.pretrain import selection_rule, training_stages

    assert selection_rule({"method": "adam_v2"}, True, False) == ("val/retrieval", "max")
    cfg = apply_overrides(load_config("adam_v2_cpu"), [])
    assert [(s.name, s.epochs) for s in training_stages(cfg)] == [("L", 3), ("LCD", 2)]
    cfg["epochs"] = {"L": [1, 1, 1]}
    with pytest.raises(MedfoundryError, match="LCD"):
        training_stages(cfg)


def test_the_level_follows_the_stage_epoch_by_epoch() -> None:
    from types import SimpleNamespace

    from medfoundry.tasks.pretrain import LevelEachEpoch

    seen = []
    method = SimpleNamespace(set_level=seen.append)
    callback = LevelEachEpoch((0, 0, 1, 2))
    for epoch in range(5):  # past the end: the last level
        callback.on_train_epoch_start(
            SimpleNamespace(current_epoch=epoch), SimpleNamespace(method=method)
        )
    assert seen == [0, 0, 1, 2, 2]
