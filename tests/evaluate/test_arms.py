"""evaluate/arms.py: scratch arms are the same network whether or not a checkpoint names it."""

from __future__ import annotations

from medfoundry.evaluate.arms import resolve_arms
from medfoundry.nets import create_backbone
from medfoundry.zoo import save_checkpoint

SWIN = {"name": "swin", "in_channels": 1, "embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2]}


def _cfg(backbone):
    return {
        "backbone": backbone,
        "image_size": None,
        "default_image_size": 32,
        "normalization": None,
    }


def test_scratch_only_swin_arm_builds_and_equals_the_checkpoint_scratch_arm(tmp_path):
    net = create_backbone(**SWIN)
    save_checkpoint(
        tmp_path / "mae",
        net.state_dict(),
        {"method": "mae", "backbone": net.config, "input_size": 32},
    )
    from_ckpt = resolve_arms([tmp_path / "mae"], _cfg(SWIN))[-1]
    alone = resolve_arms(["none"], _cfg(net.config))[0]
    assert from_ckpt["name"] == alone["name"] == "scratch"
    assert alone == from_ckpt
    create_backbone(**alone["backbone"])  # no stray ResNet keys (width) for Swin


def test_scratch_only_resnet_arm_keeps_its_width():
    arm = resolve_arms(["none"], _cfg({"name": "resnet18", "width": 0.5}))[0]
    assert arm["backbone"] == {
        "name": "resnet18",
        "in_channels": 1,
        "width": 0.5,
        "spatial_dims": 2,
    }
