"""Split-batch BatchNorm: batch statistics per sub-batch, shuffle-BN emulated in one process.

MoCo's shuffle-BN gives a query and its positive key different batch statistics (the key
batch is shuffled across GPUs), so the network cannot find the positive by the statistics it
shares with the query. `split_batchnorm(module, s)` gets the same effect on one device: every
BatchNorm computes its training statistics over `s` interleaved sub-batches (sample n belongs
to sub-batch n % s); shuffling the key batch before its encoder then puts a query and its key
in different sub-batches. The state dict is unchanged (same keys and shapes), evaluation is
ordinary BatchNorm, and running statistics are the average of the sub-batches'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm (any spatial rank) whose training statistics are per interleaved sub-batch."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, splits: int) -> None:
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.load_state_dict(bn.state_dict())
        self.splits = int(splits)
        self._dims = bn._check_input_dim  # keep the wrapped class's shape check

    def _check_input_dim(self, input: Tensor) -> None:
        self._dims(input)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        s = self.splits
        if not self.training or s <= 1:
            return super().forward(x)
        if n % s:
            raise ValueError(f"split BatchNorm: batch {n} is not divisible into {s} sub-batches")
        rm = self.running_mean.repeat(s) if self.running_mean is not None else None
        rv = self.running_var.repeat(s) if self.running_var is not None else None
        w = self.weight.repeat(s) if self.weight is not None else None
        b = self.bias.repeat(s) if self.bias is not None else None
        # (N, C, ...) -> (N/s, s*C, ...): channel block j holds the samples n with n % s == j
        out = F.batch_norm(
            x.reshape(n // s, s * c, *x.shape[2:]),
            rm,
            rv,
            w,
            b,
            True,
            self.momentum or 0.1,
            self.eps,
        ).reshape(x.shape)
        if rm is not None:
            with torch.no_grad():
                self.running_mean.copy_(rm.view(s, c).mean(dim=0))
                self.running_var.copy_(rv.view(s, c).mean(dim=0))
                self.num_batches_tracked += 1
        return out


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm inside ``module`` by a `SplitBatchNorm` (in place; returned)."""
    if splits <= 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, SplitBatchNorm
        ):
            setattr(module, name, SplitBatchNorm(child, splits))
        else:
            split_batchnorm(child, splits)
    return module
