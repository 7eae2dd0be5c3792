"""Block masks for masked image modelling (VIS-MAE / Swin-MAE "window masking", SimMIM).

Tokens of a ``(Ht, Wt)`` grid are grouped into ``unit x unit`` mask units (VIS-MAE: 4x4 tokens of
4-pixel patches, i.e. 16x16-pixel units). Per sample, ``n_units - int(n_units * (1 - ratio))``
units are masked, the count the reference gets by keeping ``int(n_units * (1 - ratio))`` units
(196 units at 75%: 49 kept, 147 masked). The reference draws the kept units with a per-sample
argsort and builds the masked set with ``numpy.setdiff1d`` in a Python loop; here one ``topk``
+ ``scatter`` serves the whole batch. The encoder replaces masked tokens by the shared mask
token in one ``where`` (``nets.swin_blocks.apply_mask_token``; it sees every token,
SimMIM-style, nothing is dropped).
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_unit_count(n_units: int, ratio: float) -> int:
    """Number of masked units per sample: all units minus the ``int(n * (1 - ratio))`` kept."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return n_units - int(n_units * (1.0 - ratio))


def unit_grid(grid_hw: tuple[int, int], unit: int) -> tuple[int, int]:
    """The grid of mask units ``(Ht // unit, Wt // unit)``; raises unless ``unit`` divides it."""
    ht, wt = int(grid_hw[0]), int(grid_hw[1])
    if unit < 1:
        raise ValueError(f"mask unit must be >= 1 token, got {unit}")
    if ht < 1 or wt < 1 or ht % unit or wt % unit:
        raise ValueError(
            f"token grid {ht}x{wt} is not divisible into {unit}x{unit}-token mask units; "
            f"use an image side that is a multiple of patch_size * {unit}"
        )
    return ht // unit, wt // unit


def block_mask_from_noise(
    noise: Tensor, grid_hw: tuple[int, int], unit: int = 4, ratio: float = 0.75
) -> Tensor:
    """Token mask (B, Ht, Wt) bool, True = masked, from per-unit noise (B, n_units).

    The ``n_keep`` units with the lowest noise stay visible, the set the reference keeps with
    ``argsort(noise)[:n_keep]``; ``topk`` selects it without sorting (10x faster on CPU) and
    always returns exactly ``n_keep`` units, ties or not. Deterministic given ``noise``.
    """
    uh, uw = unit_grid(grid_hw, unit)
    batch, n_units = noise.shape
    if n_units != uh * uw:
        raise ValueError(f"noise has {n_units} units per sample, the grid has {uh * uw}")
    n_keep = n_units - masked_unit_count(n_units, ratio)
    keep = noise.topk(n_keep, dim=1, largest=False, sorted=False).indices  # (B, n_keep)
    units = torch.ones(batch, n_units, dtype=torch.bool, device=noise.device)
    units.scatter_(1, keep, False)
    # units -> tokens, one axis at a time (two small copies beat one 5-D strided copy)
    cols = units.view(batch, uh, uw, 1).expand(batch, uh, uw, unit).reshape(batch, uh, 1, -1)
    return cols.expand(batch, uh, unit, uw * unit).reshape(batch, uh * unit, uw * unit)


def block_mask(
    batch: int,
    grid_hw: tuple[int, int],
    unit: int = 4,
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Random block mask (B, Ht, Wt) bool (True = masked), a fresh draw for every sample.

    Exactly ``masked_unit_count(n_units, ratio)`` units per sample are masked and every unit is
    all-masked or all-visible. The noise is drawn on the generator's device (so a CPU generator
    gives the same masks on any device) and the mask is returned on ``device``.
    """
    uh, uw = unit_grid(grid_hw, unit)
    masked_unit_count(uh * uw, ratio)  # validates the ratio before drawing
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, uh * uw, generator=generator, device=noise_device)
    mask = block_mask_from_noise(noise, grid_hw, unit, ratio)
    return mask if device is None else mask.to(device)
