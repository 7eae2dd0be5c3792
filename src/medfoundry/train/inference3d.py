"""Sliding-window inference of a 3D segmenter on a whole volume (batched, Gaussian blending).

``predict_volume`` is the one place where whole volumes are segmented: validation during
training, test evaluation, and prediction all call it, so they see the same windows. It runs
``sliding_window``, medfoundry's own implementation of what MONAI's
``sliding_window_inference(mode="gaussian", sigma_scale=0.125)`` computes (the tests compare
the two on random inputs):

- windows of ``roi`` voxels overlap by ``overlap`` (a fraction of the window): along each axis
  the starts are ``k * int(roi * (1 - overlap))``, the last one moved back to end flush with
  the border, as MONAI places them; all start corners are computed once, as a tensor;
- volumes smaller than ``roi`` along an axis are padded with zeros (the store's background),
  half before and the rest after as MONAI does, and the result is cropped back, so the output
  always has the input's spatial shape;
- each window's logits are weighted by a Gaussian importance map (sigma = ``sigma_scale`` *
  roi side, floored at max(its minimum, 1e-3); ``mode="constant"``: all ones), cached per
  (roi, mode, sigma, device, dtype); the weighted logits and the weights are added into one
  (K, D, H, W) output and one (D, H, W) weight buffer by ``index_add_`` on linear voxel
  indices, and the output is divided by the weights at the end;
- windows are gathered into batches of ``sw_batch_size`` by tensor indexing (no per-window
  slicing); only one batch of window outputs exists at a time;
- the buffers use the network's dtype (its parameters'; float32 for a float32 network even
  when ``amp`` runs it in bfloat16); ``amp=True`` runs the network under
  ``torch.autocast(dtype=torch.bfloat16)`` (meant for CUDA).

``predict_volume`` then takes the softmax over classes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

Triple = tuple[int, int, int]
BLEND_MODES = ("gaussian", "constant")
MIN_WEIGHT = 1e-3  # importance floor (MONAI's): border voxels never get a zero weight


def _triple(values: Sequence[int], what: str) -> Triple:
    """Three positive ints (D, H, W), else ``ValueError`` naming ``what``."""
    out = tuple(int(v) for v in values)
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{what} must be three positive sides (D, H, W), got {list(values)}")
    return out[0], out[1], out[2]


def check_roi(roi: Sequence[int], size_multiple: Sequence[int]) -> None:
    """Raise ``ValueError`` unless each roi side is a multiple of its axis' ``size_multiple``."""
    bad = [f"{a} = {r}" for a, r, m in zip("DHW", roi, size_multiple, strict=True) if r % m]
    if bad:
        raise ValueError(
            f"sliding-window roi {list(roi)} (D, H, W): each side must be a multiple of "
            f"{tuple(size_multiple)} (D, H, W) for this network; {', '.join(bad)} is not"
        )


def window_starts(size: Sequence[int], roi: Sequence[int], overlap: float) -> Tensor:
    """Start corners (nW, 3) int64 of the windows covering a (D, H, W) grid (each side >= roi).

    Along an axis the step is ``max(int(roi * (1 - overlap)), 1)`` (``roi`` when the side
    equals it), and the last start is ``side - roi``; corners in C order (W varies fastest).
    """
    axes = []
    for s, r in zip(size, roi, strict=True):
        if s < r:
            raise ValueError(f"grid {list(size)} is smaller than the roi {list(roi)}; pad first")
        step = r if s == r else max(int(r * (1 - overlap)), 1)
        count = -(-(s - r) // step) + 1  # ceil((s - r) / step) + 1
        axes.append(torch.clamp(torch.arange(count) * step, max=s - r))
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grid], dim=1)  # (nW, 3)


@functools.lru_cache(maxsize=16)
def importance_map(
    roi: Triple, mode: str, sigma_scale: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Per-voxel weight (D, H, W) of a window (cached: do not modify the returned tensor)."""
    if mode == "constant":
        return torch.ones(roi, device=device, dtype=dtype)
    if mode != "gaussian":
        raise ValueError(f"blend mode {mode!r}: choose from {list(BLEND_MODES)}")
    weight: Tensor | None = None
    for r in roi:
        x = torch.arange(r, dtype=torch.float32, device=device) - (r - 1) / 2.0
        g = torch.exp(x**2 / (-2.0 * (r * sigma_scale) ** 2))  # (r,) 1D Gaussian
        weight = g if weight is None else weight.unsqueeze(-1) * g
    assert weight is not None
    floor = max(float(weight.min()), MIN_WEIGHT)
    return weight.clamp(min=floor).to(dtype)


def _buffer_dtype(net: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The network's floating dtype (its first floating parameter's), else ``fallback``."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return fallback if fallback.is_floating_point else torch.float32


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``amp``, else nothing (an outer autocast, e.g.
    Lightning's bf16-mixed validation, stays in force)."""
    if amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _pad_to_roi(x: Tensor, roi: Triple) -> tuple[Tensor, list[int]]:
    """Zero-pad (N, C, D, H, W) up to ``roi`` where smaller (half before, rest after); returns
    the padded tensor and the padding before each axis."""
    need = [max(r - s, 0) for s, r in zip(x.shape[2:], roi, strict=True)]
    before = [n // 2 for n in need]
    if any(need):
        pads = [p for d in (2, 1, 0) for p in (before[d], need[d] - before[d])]  # W, H, D
        x = F.pad(x, pads, mode="constant", value=0.0)
    return x, before


@torch.no_grad()
def sliding_window(
    net: nn.Module,
    volume: Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    amp: bool = False,
    size_multiple: Sequence[int] | None = None,
) -> Tensor:
    """Blended logits (N, K, D, H, W) of ``net`` over a volume (N, C, D, H, W), on its device.

    ``net`` maps (B, C, *roi) to (B, K, *roi) (a list/tuple output: its first element, the
    main output); it is called as it is (put it in eval mode first). ``size_multiple``
    (D, H, W), when given, is checked against ``roi`` (``check_roi``).
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must be (N, C, D, H, W), got shape {tuple(volume.shape)}")
    roi_t = _triple(roi, "roi")
    if size_multiple is not None:
        check_roi(roi_t, _triple(size_multiple, "size_multiple"))
    if not 0.0 <= float(overlap) < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if int(sw_batch_size) < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    dtype = _buffer_dtype(net, volume.dtype)
    device = volume.device
    n, c = volume.shape[:2]
    size = tuple(volume.shape[2:])
    x, before = _pad_to_roi(volume.to(dtype), roi_t)  # (N, C, Dp, Hp, Wp)
    dp, hp, wp = x.shape[2:]
    voxels = dp * hp * wp
    source = x.transpose(0, 1).reshape(c, n * voxels)  # (C, N * V): image-major voxels
    starts = window_starts((dp, hp, wp), roi_t, float(overlap)).to(device)  # (nW, 3)
    corner = starts[:, 0] * (hp * wp) + starts[:, 1] * wp + starts[:, 2]  # (nW,) linear index
    ar = [torch.arange(r, device=device) for r in roi_t]
    offsets = ((ar[0] * hp * wp)[:, None, None] + (ar[1] * wp)[:, None] + ar[2]).reshape(-1)
    weight_map = importance_map(roi_t, mode, float(sigma_scale), device, dtype).reshape(-1)
    weights = torch.zeros(n * voxels, dtype=dtype, device=device)  # (N * V,)
    logits: Tensor | None = None  # (K, N * V), allocated at the first output
    n_windows = n * len(starts)
    for first in range(0, n_windows, int(sw_batch_size)):  # one batch of windows per pass
        ids = torch.arange(first, min(first + int(sw_batch_size), n_windows), device=device)
        b = len(ids)
        image, window = ids // len(starts), ids % len(starts)
        index = ((image * voxels + corner[window])[:, None] + offsets).reshape(-1)  # (B * n,)
        patches = source[:, index].view(c, b, *roi_t).transpose(0, 1).contiguous()  # (B, C, *roi)
        with _autocast(device, amp):
            out = net(patches)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if out.ndim != 5 or out.shape[0] != b or tuple(out.shape[2:]) != roi_t:
            raise ValueError(
                f"the network must map {tuple(patches.shape)} windows to (B, K, *roi) logits, "
                f"gave {tuple(out.shape)}"
            )
        if logits is None:
            logits = torch.zeros(out.shape[1], n * voxels, dtype=dtype, device=device)
        flat = out.reshape(b, out.shape[1], -1)  # (B, K, n)
        for k in range(flat.shape[1]):  # per class: a (B * n) weighted add, no (B, K, n) copy
            logits[k].index_add_(0, index, (flat[:, k] * weight_map).to(dtype).reshape(-1))
        weights.index_add_(0, index, weight_map.expand(b, -1).reshape(-1))
    assert logits is not None
    logits /= weights
    full = logits.view(-1, n, dp, hp, wp).transpose(0, 1)  # (N, K, Dp, Hp, Wp)
    crop = tuple(slice(o, o + s) for o, s in zip(before, size, strict=True))
    return full[(slice(None), slice(None), *crop)]


@torch.no_grad()
def predict_volume(
    net: nn.Module,
    volume: np.ndarray | torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    device: str | torch.device | None = None,
    amp: bool = False,
    size_multiple: Sequence[int] | None = None,
) -> torch.Tensor:
    """Softmax probabilities (K, D, H, W) float32 on the CPU of a (C, D, H, W) volume.

    ``net`` runs in eval mode on ``device`` (default: where its parameters are); its training
    mode is restored afterwards. ``amp``: bfloat16 autocast; ``size_multiple``: the network's
    per-axis input rule, checked against ``roi``.
    """
    x = torch.as_tensor(
        np.asarray(volume, dtype=np.float32) if not torch.is_tensor(volume) else volume
    )
    if x.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W), got shape {tuple(x.shape)}")
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        logits = sliding_window(
            net,
            x[None].float().to(device),  # (1, C, D, H, W)
            roi,
            overlap=float(overlap),
            sw_batch_size=int(sw_batch_size),
            mode=mode,
            amp=amp,
            size_multiple=size_multiple,
        )
    finally:
        net.train(was_training)
    return torch.softmax(logits.float(), dim=1)[0].cpu()  # (K, D, H, W)


def segment_volume(
    net: nn.Module,
    volume: np.ndarray | torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    device: str | torch.device | None = None,
    amp: bool = False,
    size_multiple: Sequence[int] | None = None,
) -> np.ndarray:
    """The (D, H, W) uint8 label map (argmax of ``predict_volume``) of a (C, D, H, W) volume."""
    probs = predict_volume(
        net, volume, roi, overlap, sw_batch_size, mode, device, amp, size_multiple
    )
    return probs.argmax(0).to(torch.uint8).numpy()
