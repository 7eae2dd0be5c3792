"""Localizability (DINO) head: cosine logits, frozen gain, copies and safetensors round trips."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from medfoundry.methods.signals import mean_length
from medfoundry.nets.dino_head import LocalizabilityHead


def head() -> LocalizabilityHead:
    torch.manual_seed(0)
    return LocalizabilityHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8)


def test_logits_are_cosines_with_unit_prototypes_and_the_gain_is_frozen() -> None:
    h = head()
    gain = h.last_layer.parametrizations.weight.original0
    assert gain.shape == (64, 1) and not gain.requires_grad and torch.equal(gain, torch.ones(64, 1))
    x = torch.randn(5, 16)
    logits = h(x)
    assert logits.shape == (5, 64) and logits.abs().max() <= 1.0 + 1e-5
    prototypes = F.normalize(h.last_layer.parametrizations.weight.original1, dim=1)
    torch.testing.assert_close(logits, h.embed(x) @ prototypes.t())
    logits.sum().backward()
    assert gain.grad is None and h.last_layer.parametrizations.weight.original1.grad is not None


def test_state_dict_and_safetensors_round_trip(tmp_path) -> None:
    h = head()
    with torch.no_grad():
        h.last_layer.parametrizations.weight.original1.mul_(3.0).add_(0.1)
    keys = set(h.state_dict())
    assert {"last_layer.parametrizations.weight.original0"} <= keys
    save_file(h.state_dict(), tmp_path / "head.safetensors")
    fresh = LocalizabilityHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8)
    result = fresh.load_state_dict(load_file(tmp_path / "head.safetensors"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(3, 16)
    torch.testing.assert_close(fresh(x), h(x), rtol=0, atol=0)
    twin = copy.deepcopy(h)  # the teacher is a deep copy
    torch.testing.assert_close(twin(x), h(x), rtol=0, atol=0)
    assert twin.last_layer.parametrizations.weight.original1.data_ptr() != (
        h.last_layer.parametrizations.weight.original1.data_ptr()
    )


def test_batchnorm_options_centre_embeddings_that_share_one_direction() -> None:
    torch.manual_seed(0)
    # post-ReLU-like features: one shared positive direction plus a small per-image part
    feats = 1.0 + 0.05 * torch.randn(64, 16)
    plain = LocalizabilityHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8)
    bn = LocalizabilityHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, bottleneck_bn=True)
    hidden = LocalizabilityHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, use_bn=True)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in hidden.mlp) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.mlp)
    assert float(mean_length(plain.embed(feats))) > 0.95  # nearly one vector
    assert float(mean_length(bn.embed(feats))) < 0.5  # centred over the batch
    assert float(mean_length(hidden.embed(feats))) < float(mean_length(plain.embed(feats)))
