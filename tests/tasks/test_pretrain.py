"""Pretraining end to end on tiny data: stages, export, resume, and the checkpoint it loads into."""

from __future__ import annotations

import json

import pytest
import torch

from medfoundry.errors import MedfoundryError
from medfoundry.nets import create_backbone
from medfoundry.tasks.pretrain import pretrain
from medfoundry.train.engine import read_checkpoint
from medfoundry.zoo import load_backbone, read_meta


def test_adam_runs_levels_in_sequence_and_exports(xray_folder, tmp_path, tiny_pretrain_config):
    cfg = tiny_pretrain_config("adam")
    run = pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    meta = read_meta(run)
    assert meta.method == "adam" and meta.levels_trained == (0, 2)
    assert meta.normalization["name"] == "percentile_minmax"
    assert (run / "stage0_level0" / "checkpoint" / "model.safetensors").is_file()
    assert (run / "stage1_level2" / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run / "config.json").read_text())["method"] == "adam"
    assert "torch" in json.loads((run / "versions.json").read_text())
    backbone = create_backbone(**meta.backbone.config)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = load_backbone(run, backbone)
    assert report.loaded == report.total_model
    changed = [
        k
        for k, v in backbone.state_dict().items()
        if k.endswith("weight") and not torch.equal(v, before[k])
    ]
    assert changed, "loading the pretrained checkpoint did not change the weights"


def test_stage_two_starts_from_stage_one(xray_folder, tmp_path, tiny_pretrain_config):
    """The level-2 stage is warm-started: its first-epoch weights are not a fresh init."""
    cfg = tiny_pretrain_config("adam")
    run = pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    s0 = read_checkpoint(run / "stage0_level0" / "checkpoints" / "last.ckpt")["state_dict"]
    fresh = create_backbone(**read_meta(run).backbone.config).state_dict()
    s1 = read_checkpoint(run / "stage1_level2" / "checkpoints" / "last.ckpt")["state_dict"]
    key = "method.backbone.layer1.0.conv1.weight"
    # one epoch of SGD moves weights a little: stage 1 must sit near stage 0, far from a fresh init
    assert (s1[key] - s0[key]).norm() < (s1[key] - fresh["layer1.0.conv1.weight"]).norm()


def test_existing_run_needs_resume_and_resume_finishes(xray_folder, tmp_path, tiny_pretrain_config):
    cfg = tiny_pretrain_config("adam")
    run = pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    with pytest.raises(MedfoundryError, match="--resume"):
        pretrain(cfg, [xray_folder], run, progress=False)
    # simulate a run killed during the last stage, after its last.ckpt but before the export
    import shutil

    shutil.rmtree(run / "checkpoint")
    shutil.rmtree(run / "stage1_level2" / "checkpoint")
    stage0_ckpt = run / "stage0_level0" / "checkpoints" / "last.ckpt"
    mtime = stage0_ckpt.stat().st_mtime_ns
    pretrain(cfg, [xray_folder], run, resume=True, progress=False)
    assert stage0_ckpt.stat().st_mtime_ns == mtime, "a finished stage was retrained"
    assert (run / "checkpoint" / "model.safetensors").is_file()


def test_moco_is_level_zero_without_pruning(xray_folder, tmp_path, tiny_pretrain_config):
    cfg = tiny_pretrain_config("moco")
    run = pretrain(cfg, [xray_folder], tmp_path / "moco", progress=False)
    meta = read_meta(run)
    assert meta.method == "moco" and meta.levels_trained == (0,)
    assert meta.extra["config"]["moco"]["prune_threshold"] is None


def test_collapsed_pruned_stage_stops_with_clear_error(xray_folder, tmp_path, tiny_pretrain_config):
    """Threshold -1 prunes every negative (loss 0): the guard must stop the stage, not export."""
    cfg = tiny_pretrain_config("adam")
    cfg["moco"]["prune_threshold"] = -1.0
    cfg["epochs"] = [1, 2]
    cfg["guard"] = {"max_pruned_fraction": 0.99, "collapse_patience": 2}
    with pytest.raises(MedfoundryError, match="collapsed"):
        pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "stage0_level0" / "checkpoint" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_moco_with_an_adam_preset_trains_level_zero_for_the_total_epochs(
    xray_folder, tmp_path, tiny_pretrain_config
):
    cfg = tiny_pretrain_config("adam")  # levels [0, 2], pruning 0.8
    cfg["method"] = "moco"
    cfg["epochs"] = [1, 2]
    run = pretrain(cfg, [xray_folder], tmp_path / "moco", progress=False)
    meta = read_meta(run)
    assert meta.levels_trained == (0,) and meta.extra["config"]["moco"]["prune_threshold"] is None
    log = (run / "stage0_level0" / "logs" / "metrics.csv").read_text().splitlines()[1:]
    assert {int(line.split(",")[0]) for line in log} == {0, 1, 2}  # 1 + 2 epochs


def test_pretraining_curves_are_plotted(xray_folder, tmp_path, tiny_pretrain_config):
    from medfoundry.train.curves import read_stage_log

    run = pretrain(tiny_pretrain_config("adam"), [xray_folder], tmp_path / "run", progress=False)
    assert (run / "curves.png").stat().st_size > 0
    log = read_stage_log(run / "stage1_level2")
    assert {"train/loss_step", "val/loss", "train/pruned_fraction_step"} <= set(log)


def test_mae_pretrains_and_exports_encoder_and_decoder(xray_folder, tmp_path, tiny_pretrain_config):
    from medfoundry.nets.swin_decoder import SwinDecoder
    from medfoundry.zoo import has_decoder, load_decoder

    run = pretrain(tiny_pretrain_config("mae"), [xray_folder], tmp_path / "run", progress=False)
    meta = read_meta(run)
    assert meta.method == "mae" and meta.input_size == 64 and meta.extra["patch_size"] == 4
    assert meta.extra["mae"]["mask_ratio"] == 0.75 and has_decoder(run)
    assert not (run / "stage1_level0").exists()  # one stage, no anatomy levels
    torch.manual_seed(0)
    backbone = create_backbone(**meta.backbone.config)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    report = load_backbone(run, backbone)
    assert report.loaded == report.total_model
    assert any(not torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    decoder = SwinDecoder(**meta.decoder)
    dec_report = load_decoder(run, decoder)
    assert dec_report.loaded == dec_report.total_model and dec_report.part == "decoder"
    log = (run / "stage0_level0" / "logs" / "metrics.csv").read_text()
    assert "train/masked_fraction_step" in log and "val/loss" in log
    assert (run / "reconstructions.png").stat().st_size > 0 and (run / "curves.png").is_file()


def test_mae_optimiser_skips_decay_on_norms_and_mask_token(tiny_pretrain_config):
    from medfoundry.tasks.pretrain import _build
    from medfoundry.train.pretrain_module import PretrainModule

    cfg = tiny_pretrain_config("mae")
    method = _build(cfg, 0)
    module = PretrainModule(method, {**cfg["optim"], "warmup_steps": 2}, total_steps=10)
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(method.mask_token) in no_decay
    assert all(id(p) in no_decay for n, p in method.named_parameters() if n.endswith("bias"))
    decayed = [g for g in opt.param_groups if g["weight_decay"] == 0.05]
    assert decayed and all(p.ndim >= 2 for p in decayed[0]["params"])


def test_mae_needs_a_swin_backbone(tiny_pretrain_config):
    from medfoundry.tasks.pretrain import _build

    cfg = tiny_pretrain_config("mae")
    cfg["backbone"] = {"name": "resnet10", "width": 0.125, "in_channels": 1}
    with pytest.raises(ValueError, match="Swin backbone"):
        _build(cfg, 0)


@pytest.mark.slow
def test_mae_trains_data_parallel_on_two_cpu_ranks(xray_folder, tmp_path, tiny_pretrain_config):
    """Two gloo ranks under Lightning DDP: each rank sees half the batches; one export."""
    cfg = tiny_pretrain_config("mae")
    cfg["epochs"] = 1
    single = pretrain(cfg, [xray_folder], tmp_path / "one", progress=False)
    cfg["trainer"] = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    double = pretrain(cfg, [xray_folder], tmp_path / "two", progress=False)

    def steps(run):
        last = run / "stage0_level0" / "checkpoints" / "last.ckpt"
        return read_checkpoint(last)["global_step"]

    assert steps(single) >= 2 and steps(double) * 2 == steps(single)
    backbone = create_backbone(**read_meta(double).backbone.config)
    assert load_backbone(double, backbone).loaded == len(backbone.state_dict())


@pytest.fixture(scope="module")
def volume_store(tmp_path_factory, make_blob_volume_store):
    """A 3D store of ten 24 x 40 x 40 synthetic volumes (blobs on noise), unlabeled."""
    return make_blob_volume_store(tmp_path_factory, (24, 40, 40), centre_high=30, spread=60.0)


TINY_3D = "backbone={name: resnet10, width: 0.125, in_channels: 1, spatial_dims: 3}"


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        (
            "volume_fusion",
            ["data.crop_size=[32, 32, 32]", "volume_fusion.decoder_channels=[8, 8, 8, 8, 8]"],
        ),
        (
            "voco",
            ["data.crop_size=[16, 32, 32]", "voco={num_base: 2, proj_hidden: 32, proj_dim: 16}"],
        ),
    ],
)
def test_3d_methods_pretrain_from_a_store(volume_store, tmp_path, method, extra):
    from medfoundry.config import apply_overrides, load_config

    cfg = apply_overrides(
        load_config(method),
        [TINY_3D, "epochs=2", "optim.batch_size=2", "data.val_fraction=0.2"]
        + ["trainer={accelerator: cpu, devices: 1}", *extra],
    )
    run = pretrain(cfg, [volume_store], tmp_path / "run", progress=False)
    meta = read_meta(run)
    assert meta.method == method and meta.spatial_dims == 3
    assert meta.normalization["name"] == "store"
    assert meta.input_size == ((32, 32, 32) if method == "volume_fusion" else (16, 16, 16))
    backbone = create_backbone(**meta.backbone.config)
    assert load_backbone(run, backbone).loaded == len(backbone.state_dict())
    assert (run / "checkpoint" / "decoder.safetensors").is_file() == (method == "volume_fusion")
    log = (run / "stage0_level0" / "logs" / "metrics.csv").read_text()
    assert "val/loss" in log and "train/loss_step" in log


def test_volume_fusion_pctnet_preset_runs_from_the_cli(volume_store, tmp_path):
    """`medfoundry pretrain --method volume_fusion --config volume_fusion_pctnet` on a tiny
    PCT-Net: the encoder and the PCT-Net decoder export, and both load completely."""
    from medfoundry.cli import main
    from medfoundry.nets.pctnet import PCTNetDecoder
    from medfoundry.zoo import load_decoder

    run = tmp_path / "run"
    args = ["pretrain", "--method", "volume_fusion", "--config", "volume_fusion_pctnet"]
    args += ["--data", str(volume_store), "--out", str(run), "--no-progress", "--epochs", "1"]
    args += ["--batch-size", "2", "--accelerator", "cpu", "--devices", "1"]
    for pair in (
        "backbone.width=0.125",
        "backbone.window_size=4",
        "data.crop_size=[16, 32, 32]",
        "data.crops_per_volume=1",
        "data.val_fraction=0.2",
    ):
        args += ["--set", pair]
    assert main(args) == 0
    meta = read_meta(run)
    assert meta.backbone.name == "pctnet" and meta.backbone.args["resolution_mode"] == 1
    assert meta.decoder["type"] == "pctnet" and meta.input_size == (16, 32, 32)
    assert meta.extra["volume_fusion"]["deep_supervision"] is True
    backbone = create_backbone(**meta.backbone.config)
    report = load_backbone(run, backbone)
    assert report.loaded == report.total_model == report.total_checkpoint
    decoder = PCTNetDecoder.from_config(meta.decoder)
    dec_report = load_decoder(run, decoder)
    assert dec_report.loaded == dec_report.total_model == dec_report.total_checkpoint
    log = (run / "stage0_level0" / "logs" / "metrics.csv").read_text()
    assert "val/loss" in log and "train/loss_step" in log


def test_crops_that_are_mostly_padding_warn(volume_store, tmp_path):
    """A VoCo grid far larger than the volumes (40 x 40 x 24 in the store) is named before training."""
    from medfoundry.config import apply_overrides, load_config
    from medfoundry.tasks.pretrain import crop_data_fraction

    assert crop_data_fraction([[24, 40, 40]], [16, 32, 32]) == 1.0
    assert crop_data_fraction([[36, 50, 35], [40, 50, 35]], [32, 64, 64]) == pytest.approx(
        (32 * 50 * 35) / (32 * 64 * 64)
    )
    cfg = apply_overrides(
        load_config("voco"),
        [TINY_3D, "epochs=1", "optim.batch_size=2", "data.val_fraction=0.2"]
        + ["trainer={accelerator: cpu, devices: 1}", "data.crop_size=[16, 64, 64]"]
        + ["voco={num_base: 2, proj_hidden: 32, proj_dim: 16}"],
    )
    with pytest.warns(UserWarning, match=r"77% zero padding on the median volume \(40x40x24\)"):
        pretrain(cfg, [volume_store], tmp_path / "run", progress=False)


def _class_folders(root, n_per_class: int = 6):
    """Two classes of toy radiographs: a bright blob on the left or on the right."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64]
    for label, cx in (("LEFT", 18), ("RIGHT", 46)):
        (root / label).mkdir(parents=True)
        for i in range(n_per_class):
            cy = rng.integers(20, 44)
            img = 60 + 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"person{i}_{label}.png")
    return root


def test_probe_data_logs_probe_scores_and_selects_by_them(
    xray_folder, tmp_path, tiny_pretrain_config
):
    from medfoundry.train.curves import read_stage_log

    cfg = tiny_pretrain_config("moco")
    cfg["epochs"] = 2
    cfg["probe"] = {"data": str(_class_folders(tmp_path / "probe")), "per_class": 6}
    run = pretrain(cfg, [xray_folder], tmp_path / "run", progress=False)
    log = read_stage_log(run / "stage0_level0")
    # the starting weights at step 0, then one score per epoch
    assert len(log["probe/knn_auc"]) == 3 and len(log["probe/linear_auc"]) == 3
    assert log["probe/knn_auc"][0][0] == 0 < log["probe/knn_auc"][1][0]
    for key in ("spread", "mean_length", "retrieval", "neg_new", "neg_old"):
        assert f"train/{key}_step" in log and f"val/{key}" in log
    ckpt = torch.load(
        run / "stage0_level0" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    monitors = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert monitors and monitors[0]["monitor"] == "probe/knn_auc"
    # the stage records which epoch it carried forward: the best probe epoch (1-based scores)
    chosen = json.loads((run / "stage0_level0" / "selection.json").read_text())
    assert chosen["checkpoint"] == "best.ckpt" and chosen["monitor"] == "probe/knn_auc"
    scores = [v for _, v in log["probe/knn_auc"][1:]]
    assert chosen["epoch"] == ckpt["epoch"] == max(range(len(scores)), key=scores.__getitem__)


def test_selection_rule_never_picks_the_contrastive_loss():
    from medfoundry.tasks.pretrain import selection_rule

    assert selection_rule({"method": "adam"}, True, True) == ("probe/knn_auc", "max")
    assert selection_rule({"method": "moco"}, True, False) == ("val/retrieval", "max")
    assert selection_rule({"method": "adam"}, False, False) == (None, "min")
    assert selection_rule({"method": "mae"}, True, False) == ("val/loss", "min")
    named = {"method": "moco", "selection": {"monitor": "val/loss", "mode": "min"}}
    assert selection_rule(named, True, False) == ("val/loss", "min")


def test_probe_data_is_refused_for_3d_methods(volume_store, tmp_path):
    from medfoundry.config import load_config

    cfg = load_config("volume_fusion_cpu")
    cfg["probe"] = {"data": str(tmp_path)}
    with pytest.raises(MedfoundryError, match="2D class folders"):
        pretrain(cfg, [volume_store], tmp_path / "run", progress=False)


def test_views_augment_reaches_the_view_generator_and_presets_differ(tiny_pretrain_config):
    from medfoundry.config import load_config, merge
    from medfoundry.tasks.pretrain import _build

    base = tiny_pretrain_config()
    cfg = merge(base, {"views": {"augment": {"scale": [0.3, 0.9], "rotation": 5}}})
    method = _build(cfg, 0)
    assert tuple(method.augment.scale) == (0.3, 0.9) and method.augment.rotation == 5
    assert tuple(_build(base, 0).augment.scale) == (0.2, 1.0)  # the paper's crops
    cpu, paper = load_config("adam_cpu"), load_config("adam_cpu_paper")
    assert cpu["moco"]["queue_size"] < paper["moco"]["queue_size"]
    assert cpu["moco"]["proj_bn"] and not paper["moco"]["proj_bn"]
