"""Sliding-window inference of a 3D segmenter on a whole volume (MONAI, Gaussian blending).

``predict_volume`` is the one place where whole volumes are segmented: validation during
training, test evaluation, and prediction all call it, so they see the same windows. Windows of
``roi`` voxels overlap by ``overlap`` (a fraction of the window) and their softmax
probabilities are blended with a Gaussian weight (``mode="gaussian"``: centres count more than
borders); volumes smaller than ``roi`` along an axis are zero-padded (the store's background)
and the result is cropped back, so the output always has the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn


@torch.no_grad()
def predict_volume(
    net: nn.Module,
    volume: np.ndarray | torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Softmax probabilities (K, D, H, W) float32 on the CPU of a (C, D, H, W) volume.

    ``net`` runs in eval mode on ``device`` (default: where its parameters are); its training
    mode is restored afterwards.
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
        logits = sliding_window_inference(
            x[None].float().to(device),  # (1, C, D, H, W)
            roi_size=[int(r) for r in roi],
            sw_batch_size=int(sw_batch_size),
            predictor=net,
            overlap=float(overlap),
            mode=mode,
            padding_mode="constant",
            cval=0.0,
        )
    finally:
        net.train(was_training)
    assert isinstance(logits, torch.Tensor)
    return torch.softmax(logits.float(), dim=1)[0].cpu()  # (K, D, H, W)


def segment_volume(
    net: nn.Module,
    volume: np.ndarray | torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    mode: str = "gaussian",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """The (D, H, W) uint8 label map (argmax of ``predict_volume``) of a (C, D, H, W) volume."""
    probs = predict_volume(net, volume, roi, overlap, sw_batch_size, mode, device)
    return probs.argmax(0).to(torch.uint8).numpy()
