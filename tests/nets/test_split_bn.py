"""Split-batch BatchNorm: per-sub-batch statistics, unchanged state dict, plain evaluation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfoundry.nets import create_backbone
from medfoundry.nets.split_bn import SplitBatchNorm, split_batchnorm


def test_training_statistics_are_per_interleaved_sub_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 3, 5, 5) * torch.arange(1, 13).view(12, 1, 1, 1)
    net = split_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), 3)
    y = net(x)
    for j in range(3):
        ref = nn.functional.batch_norm(x[j::3], None, None, training=True)
        torch.testing.assert_close(y[j::3], ref, atol=1e-5, rtol=1e-5)
    # one ordinary BN over the whole batch differs
    whole = nn.functional.batch_norm(x, None, None, training=True)
    assert (y - whole).abs().max() > 0.1


def test_state_dict_is_unchanged_and_eval_is_plain_batchnorm() -> None:
    torch.manual_seed(0)
    plain = create_backbone("resnet10", width=0.125)
    split = split_batchnorm(create_backbone("resnet10", width=0.125), 4)
    split.load_state_dict(plain.state_dict())  # same keys and shapes
    assert any(isinstance(m, SplitBatchNorm) for m in split.modules())
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))


def test_running_statistics_average_the_sub_batches_and_3d_works() -> None:
    bn = split_batchnorm(nn.Sequential(nn.BatchNorm3d(2, momentum=1.0)), 2)
    x = torch.randn(4, 2, 3, 3, 3)
    bn(x)
    means = torch.stack([x[j::2].mean(dim=(0, 2, 3, 4)) for j in range(2)]).mean(0)
    torch.testing.assert_close(bn[0].running_mean, means, atol=1e-5, rtol=1e-5)
    assert int(bn[0].num_batches_tracked) == 1
    with pytest.raises(ValueError, match="divisible"):
        bn(torch.randn(3, 2, 3, 3, 3))
