"""Small heads shared by methods and tasks."""

from __future__ import annotations

from torch import nn


def mlp_projector(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo-v2 projector: Linear -> ReLU -> Linear (no BN), as in the Adam reference."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )
