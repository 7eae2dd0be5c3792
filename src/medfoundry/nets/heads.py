"""Small heads shared by methods and tasks."""

from __future__ import annotations

from torch import nn


def mlp_projector(in_dim: int, hidden_dim: int, out_dim: int, bn: bool = False) -> nn.Sequential:
    """MoCo-v2 projector: Linear -> ReLU -> Linear (no BN), as in the Adam reference; with
    ``bn``, Linear -> BN -> ReLU -> Linear (MoCo-v3 / SimCLR's hidden BatchNorm)."""
    norm = [nn.BatchNorm1d(hidden_dim)] if bn else []  # BN makes the first bias redundant
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=not bn),
        *norm,
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def bn_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """VoCo projector: Linear -> BN -> ReLU -> Linear -> BN -> ReLU -> Linear.

    The BatchNorms have no affine parameters and no running statistics (batch statistics in
    training and evaluation alike), as in VoCo, so they need several crops per call.
    """

    def bn() -> nn.BatchNorm1d:
        return nn.BatchNorm1d(hidden_dim, affine=False, track_running_stats=False)

    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        bn(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, hidden_dim),
        bn(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )
