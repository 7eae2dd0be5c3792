"""Per-class Dice and HD95 (mm) of 3D label maps, vectorised over classes.

Conventions, per class ``c`` of a case (prediction P = {pred == c}, reference R = {ref == c}):

- **Dice** ``2 |P & R| / (|P| + |R|)``; both empty -> 1.0 (nothing to find, nothing found),
  one empty -> 0.0 (``medfoundry.metrics.segmentation``' rule).
- **HD95** the 95th percentile Hausdorff distance in mm between the boundaries of P and R,
  symmetric: the larger of the two directed 95th percentiles of boundary-voxel-to-nearest-
  boundary-voxel distances, with the grid's spacing. This is MONAI's
  ``compute_hausdorff_distance(percentile=95)`` definition (edges = mask minus its binary
  erosion, nearest-neighbour distances, ``torch.quantile``), computed here in torch because
  MONAI's version needs scipy, which medfoundry does not depend on.
  Both empty -> 0.0 mm. Exactly one empty -> the grid's diagonal in mm, ``|shape * spacing|``:
  the largest distance two voxels of that grid can have, so a missed or hallucinated structure
  counts as the worst possible boundary error instead of being dropped from the mean (an
  undefined value would hide exactly the failures a few-label model makes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _one_hot(labels: np.ndarray | torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """(K, D, H, W) bool masks of ``classes`` in a (D, H, W) label map."""
    t = torch.as_tensor(np.asarray(labels)).long()
    ids = torch.as_tensor(list(classes), dtype=torch.long).view(-1, *([1] * t.ndim))
    return t[None] == ids


def dice_per_class(
    pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, classes: Sequence[int]
) -> np.ndarray:
    """Dice (K,) float64 of (D, H, W) label maps, one value per class in ``classes``."""
    if tuple(np.shape(pred)) != tuple(np.shape(ref)):
        raise ValueError(f"prediction shape {np.shape(pred)} != reference shape {np.shape(ref)}")
    p = _one_hot(pred, classes).flatten(1)  # (K, N)
    r = _one_hot(ref, classes).flatten(1)
    inter = (p & r).sum(1, dtype=torch.float64)
    total = p.sum(1, dtype=torch.float64) + r.sum(1, dtype=torch.float64)
    dice = torch.where(total == 0, torch.ones_like(inter), 2.0 * inter / total.clamp_min(1.0))
    return dice.numpy()


def mask_edges(masks: torch.Tensor) -> torch.Tensor:
    """Boundary voxels (K, D, H, W) of bool masks: a mask minus its 6-neighbour erosion (the
    volume's border counts as outside, as scipy's ``binary_erosion``)."""
    p = F.pad(masks[:, None].float(), (1, 1, 1, 1, 1, 1))[:, 0] > 0  # (K, D+2, H+2, W+2)
    core = p[:, 1:-1, 1:-1, 1:-1]
    eroded = core.clone()
    for axis in (1, 2, 3):
        for lo, hi in ((0, -2), (2, None)):
            index = [slice(None), slice(1, -1), slice(1, -1), slice(1, -1)]
            index[axis] = slice(lo, hi)
            eroded &= p[tuple(index)]
    return core & ~eroded


def _nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance from each of the (N, 3) points ``a`` to its nearest of the (M, 3) points ``b``,
    in chunks of at most 2**24 pairs."""
    chunk = max(1, 2**24 // max(1, b.shape[0]))
    return torch.cat(
        [torch.cdist(a[i : i + chunk], b).min(1).values for i in range(0, len(a), chunk)]
    )


def hd95_per_class(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    classes: Sequence[int],
    spacing: Sequence[float],
) -> np.ndarray:
    """HD95 (K,) in mm of (D, H, W) label maps on a grid of ``spacing`` (D, H, W) mm."""
    if tuple(np.shape(pred)) != tuple(np.shape(ref)):
        raise ValueError(f"prediction shape {np.shape(pred)} != reference shape {np.shape(ref)}")
    p, r = _one_hot(pred, classes), _one_hot(ref, classes)  # (K, D, H, W)
    has_p, has_r = p.flatten(1).any(1), r.flatten(1).any(1)  # (K,)
    scale = torch.as_tensor([float(s) for s in spacing], dtype=torch.float64)
    diagonal = float(torch.linalg.vector_norm(torch.as_tensor(p.shape[1:]) * scale))
    out = np.where((has_p | has_r).numpy(), diagonal, 0.0)
    edges_p, edges_r = mask_edges(p), mask_edges(r)
    for k in torch.nonzero(has_p & has_r).flatten().tolist():
        a = (torch.nonzero(edges_p[k]) * scale).float()  # (N, 3) mm
        b = (torch.nonzero(edges_r[k]) * scale).float()  # (M, 3) mm
        out[k] = max(float(torch.quantile(_nearest(x, y), 0.95)) for x, y in ((a, b), (b, a)))
    return out
