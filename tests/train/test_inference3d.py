"""medfoundry's sliding window against MONAI's ``sliding_window_inference``: same logits on random
volumes (padded, non-divisible, several images), window placement, the importance map, and
bad arguments."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from medfoundry.train.inference3d import (
    importance_map,
    predict_volume,
    sliding_window,
    window_starts,
)


def small_net(in_ch: int = 1, classes: int = 3) -> nn.Module:
    """Two zero-padded 3D convolutions: window outputs depend on the window's position."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(in_ch, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, classes, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "batch"),
    [
        ((1, 1, 20, 24, 16), (8, 8, 8), 0.5, 4),  # divisible sizes
        ((1, 1, 19, 23, 13), (8, 12, 6), 0.5, 3),  # no side divisible, batches not full
        ((1, 1, 5, 30, 7), (8, 8, 8), 0.25, 2),  # smaller than the roi along D and W
        ((2, 2, 11, 9, 10), (6, 6, 6), 0.6, 5),  # two images, two channels, batch spans both
        ((1, 1, 8, 8, 8), (8, 8, 8), 0.5, 4),  # one window
    ],
)
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_matches_monai_sliding_window_inference(shape, roi, overlap, batch, mode):
    net = small_net(shape[1])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ours = sliding_window(net, x, roi, overlap=overlap, sw_batch_size=batch, mode=mode)
    ref = sliding_window_inference(
        x, roi, batch, net, overlap=overlap, mode=mode, sigma_scale=0.125
    )
    assert ours.shape == ref.shape == (shape[0], 3, *shape[2:])
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # a float64 network: the buffers follow its dtype, and the two agree to float64 precision
    ours64 = sliding_window(net.double(), x.double(), roi, overlap, batch, mode)
    ref64 = sliding_window_inference(x.double(), roi, batch, net, overlap=overlap, mode=mode)
    assert ours64.dtype == torch.float64
    assert torch.allclose(ours64, ref64, rtol=1e-10, atol=1e-12)


def test_bf16_autocast_keeps_float32_buffers_close_to_float32():
    net = small_net()
    x = torch.randn(1, 1, 12, 10, 9, generator=torch.Generator().manual_seed(2))
    full = sliding_window(net, x, (8, 8, 8))
    half = sliding_window(net, x, (8, 8, 8), amp=True)
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # bf16 did run
    assert torch.allclose(half, full, atol=5e-2)


def test_last_window_ends_flush_with_the_border():
    starts = window_starts((19, 8, 30), (8, 8, 8), 0.5)
    assert sorted(set(starts[:, 0].tolist())) == [0, 4, 8, 11]
    assert sorted(set(starts[:, 1].tolist())) == [0]  # side == roi: one window
    assert sorted(set(starts[:, 2].tolist())) == [0, 4, 8, 12, 16, 20, 22]
    assert len(starts) == 4 * 1 * 7


def test_importance_map_is_cached_peaked_and_floored():
    w = importance_map((8, 16, 8), "gaussian", 0.125, torch.device("cpu"), torch.float32)
    assert w is importance_map((8, 16, 8), "gaussian", 0.125, torch.device("cpu"), torch.float32)
    assert w.shape == (8, 16, 8) and float(w.min()) == pytest.approx(1e-3)
    assert float(w[3:5, 7:9, 3:5].min()) == float(w.max())  # the centre weighs most


def test_a_list_output_uses_the_main_one_and_bad_arguments_fail():
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_net()

        def forward(self, x):
            y = self.net(x)
            return [y, 2 * y]

    x = torch.randn(1, 1, 12, 10, 9)
    net = Deep().eval()
    assert torch.allclose(sliding_window(net, x, (8, 8, 8)), sliding_window(net.net, x, (8, 8, 8)))
    with pytest.raises(ValueError, match="multiple of"):
        sliding_window(net, x, (8, 12, 8), size_multiple=(8, 16, 16))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(net, x, (8, 8, 8), overlap=1.0)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        sliding_window(net, x[0], (8, 8, 8))
    shrink = nn.Conv3d(1, 2, 3).eval()  # no padding: changes the window size
    with pytest.raises(ValueError, match="windows to"):
        sliding_window(shrink, x, (8, 8, 8))


def test_predict_volume_gives_probabilities_of_the_volume_shape_and_restores_mode():
    net = small_net().train()
    probs = predict_volume(net, torch.rand(1, 13, 17, 9), roi=(8, 8, 8), sw_batch_size=3)
    assert probs.shape == (3, 13, 17, 9) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(13, 17, 9), atol=1e-5)
    assert net.training
