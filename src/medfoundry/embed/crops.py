"""Crop boxes for Eve: grids at several scales, boxes centred on points, dense sliding crops and
the sub-grids of a box (compositionality). Pure tensor functions; a box is ``(x0, y0, x1, y1)``
in pixels of the image as stored (x = column, y = row), floats, x1/y1 exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def centred_boxes(centres: Tensor, size: Tensor | float) -> Tensor:
    """Square boxes of side ``size`` (scalar or (M,)) centred on ``centres`` (M, 2) as (x, y)."""
    half = torch.as_tensor(size, dtype=torch.float32).expand(len(centres)) / 2
    x, y = centres[:, 0].float(), centres[:, 1].float()
    return torch.stack([x - half, y - half, x + half, y + half], dim=1)


def lattice(length: float, side: float, n: int) -> Tensor:
    """``n`` crop centres along an axis of ``length`` so that a crop of ``side`` stays inside
    (evenly spaced from side/2 to length - side/2; one centre when the crop spans the axis)."""
    lo, hi = side / 2, length - side / 2
    if n <= 1 or hi - lo < 1e-6:
        return torch.tensor([length / 2], dtype=torch.float32)
    return torch.linspace(lo, hi, n)


def grid_boxes(
    height: int, width: int, grid: int, scales: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """Square crops of side ``scale * min(height, width)`` on a ``grid x grid`` lattice per scale.

    Returns boxes (M, 4) and each box's scale (M,). At scale 1 on a square image every centre
    coincides, so that scale gives one crop (the whole image).
    """
    boxes, box_scales = [], []
    for scale in scales:
        if not 0 < float(scale) <= 1:
            raise ValueError(f"crop scale {scale} must lie in (0, 1]")
        side = float(scale) * min(height, width)
        xs, ys = lattice(width, side, grid), lattice(height, side, grid)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
        boxes.append(centred_boxes(centres, side))
        box_scales.append(torch.full((len(centres),), float(scale)))
    return torch.cat(boxes), torch.cat(box_scales)


def dense_centres(height: int, width: int, stride: float, margin: float = 0.0) -> Tensor:
    """Crop centres (M, 2) every ``stride`` pixels, ``margin`` from the border, row-major."""
    xs = torch.arange(margin + stride / 2, width - margin, stride, dtype=torch.float32)
    ys = torch.arange(margin + stride / 2, height - margin, stride, dtype=torch.float32)
    if not len(xs) or not len(ys):
        raise ValueError(f"stride {stride} leaves no crop centre in a {height}x{width} image")
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def sub_grid(boxes: Tensor, rows: int, cols: int) -> Tensor:
    """The ``rows x cols`` parts of each box (M, 4) -> (M, rows * cols, 4), row-major; the parts
    tile the box exactly (Eden's compositionality protocol: 1x2, 3x1, 2x2)."""
    x0, y0, x1, y1 = boxes.float().unbind(dim=1)  # (M,) each
    fx = torch.arange(cols + 1, dtype=torch.float32) / cols  # (cols + 1,)
    fy = torch.arange(rows + 1, dtype=torch.float32) / rows
    xe = x0[:, None] + (x1 - x0)[:, None] * fx  # (M, cols + 1) part edges
    ye = y0[:, None] + (y1 - y0)[:, None] * fy  # (M, rows + 1)
    px0 = xe[:, None, :-1].expand(-1, rows, -1)  # (M, rows, cols)
    px1 = xe[:, None, 1:].expand(-1, rows, -1)
    py0 = ye[:, :-1, None].expand(-1, -1, cols)
    py1 = ye[:, 1:, None].expand(-1, -1, cols)
    return torch.stack([px0, py0, px1, py1], dim=-1).reshape(len(boxes), rows * cols, 4)


def random_boxes(
    height: int, width: int, n: int, scale: float, generator: torch.Generator
) -> Tensor:
    """``n`` square boxes of side ``scale * min(height, width)`` at seeded positions inside."""
    side = float(scale) * min(height, width)
    u = torch.rand(n, 2, generator=generator)
    x0 = u[:, 0] * (width - side)
    y0 = u[:, 1] * (height - side)
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)
