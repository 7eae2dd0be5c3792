"""The BatchNorm batch check: batch 1 at the smallest input is refused before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfoundry.errors import MedfoundryError
from medfoundry.nets import create_backbone
from medfoundry.train.batchnorm_check import batchnorm_values, check_batchnorm_batch


def test_deepest_batchnorm_of_a_resnet_sees_the_input_side_over_32_squared() -> None:
    net = create_backbone("resnet10", width=0.125, in_channels=1).train()
    assert batchnorm_values(net, torch.zeros(1, 1, 32, 32)) == 1
    assert batchnorm_values(net, torch.zeros(1, 1, 64, 64)) == 4
    assert net.training  # the eval-mode pass leaves the mode as it was
    with pytest.raises(MedfoundryError, match="batch_size 1 with image_size \\[32, 32\\]"):
        check_batchnorm_batch(net, torch.zeros(1, 1, 32, 32), 1, "image_size")
    check_batchnorm_batch(net, torch.zeros(1, 1, 32, 32), 2, "image_size")
    check_batchnorm_batch(net, torch.zeros(1, 1, 64, 64), 1, "image_size")


def test_a_network_without_batchnorm_is_never_refused() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert batchnorm_values(net, torch.zeros(1, 1, 8, 8)) is None
    check_batchnorm_batch(net, torch.zeros(1, 1, 8, 8), 1, "image_size")


def test_cli_finetune_with_batch_1_and_a_small_image_is_one_line(
    tmp_path, make_jsrt_like, capsys
) -> None:
    from medfoundry.cli import main

    data = make_jsrt_like(tmp_path / "jsrt", ["A01", "A02", "A03", "A04"], size=64)
    argv = ["finetune", "--task", "segmentation", "--data", str(data), "--pretrained", "none"]
    argv += ["--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "1"]
    assert main([*argv, "--image-size", "32", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "batch_size 1" in err and "image_size" in err
