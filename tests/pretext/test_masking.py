"""Block masks: exact masked count, block-uniform units, seeded determinism, mask-token blend."""

from __future__ import annotations

import pytest
import torch

from medfoundry.nets.swin_blocks import apply_mask_token
from medfoundry.pretext.masking import (
    block_mask,
    block_mask_from_noise,
    masked_unit_count,
)


def test_exact_masked_count_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    mask = block_mask(16, (56, 56), unit=4, ratio=0.75, generator=g)
    assert mask.shape == (16, 56, 56) and mask.dtype == torch.bool
    # VIS-MAE: 196 units, int(196 * 0.25) = 49 kept, 147 masked, i.e. 147 * 16 tokens
    assert masked_unit_count(196, 0.75) == 147
    assert mask.sum(dim=(1, 2)).tolist() == [147 * 16] * 16


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.6, 1.0])
def test_count_matches_kept_units_rule(ratio: float) -> None:
    mask = block_mask(4, (8, 12), unit=2, ratio=ratio, generator=torch.Generator().manual_seed(1))
    n_units = 4 * 6
    expected = n_units - int(n_units * (1 - ratio))
    assert (mask.sum(dim=(1, 2)) == expected * 4).all()


def test_mask_is_uniform_within_each_unit() -> None:
    mask = block_mask(8, (24, 16), unit=4, generator=torch.Generator().manual_seed(2))
    units = mask.view(8, 6, 4, 4, 4).permute(0, 1, 3, 2, 4).reshape(8, 6, 4, 16)
    assert (units.all(dim=-1) | ~units.any(dim=-1)).all()


def test_seeded_determinism_and_samples_differ() -> None:
    a = block_mask(8, (16, 16), unit=4, generator=torch.Generator().manual_seed(3))
    b = block_mask(8, (16, 16), unit=4, generator=torch.Generator().manual_seed(3))
    c = block_mask(8, (16, 16), unit=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    flat = a.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) > 1  # a fresh draw per sample


def test_noise_ranks_select_the_masked_units() -> None:
    noise = torch.tensor([[0.1, 0.9, 0.5, 0.3]])  # 2x2 units: keep the lowest int(4*0.25)=1
    mask = block_mask_from_noise(noise, (2, 2), unit=1, ratio=0.75)
    assert mask.flatten().tolist() == [False, True, True, True]


@pytest.mark.parametrize(
    ("grid", "unit", "ratio"), [((14, 16), 4, 0.75), ((16, 16), 0, 0.75), ((16, 16), 4, 1.5)]
)
def test_bad_arguments_raise(grid: tuple[int, int], unit: int, ratio: float) -> None:
    with pytest.raises(ValueError):
        block_mask(2, grid, unit=unit, ratio=ratio)


def test_apply_mask_token_blend_and_gradient() -> None:
    tokens = torch.randn(2, 4, 4, 3)
    mask = block_mask(2, (4, 4), unit=2, ratio=0.5, generator=torch.Generator().manual_seed(5))
    token = torch.randn(3, requires_grad=True)
    out = apply_mask_token(tokens, mask, token)
    assert torch.equal(out[mask], token.detach().expand(int(mask.sum()), 3))
    assert torch.equal(out[~mask], tokens[~mask])
    soft = apply_mask_token(tokens, mask.float(), token)  # the x*(1-w) + t*w form
    torch.testing.assert_close(soft, out)
    out.sum().backward()
    assert torch.allclose(token.grad, torch.full((3,), float(mask.sum())))
