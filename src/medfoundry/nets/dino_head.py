"""DINO's projection head (Adam-v2's localizability head): MLP, L2-norm, weight-normed prototypes.

``LocalizabilityHead(D)``: Linear D -> hidden, GELU, Linear hidden -> hidden, GELU, Linear
hidden -> bottleneck (no BatchNorm unless ``use_bn``: DINO's ``use_bn_in_head``, BatchNorm after
each hidden Linear, DINO's setting for ResNets), L2-normalise, then a bias-free linear layer to
``out_dim`` prototypes whose rows are weight-normalised with the gain ``g`` frozen at 1 (DINO's
``norm_last_layer=True``): every logit is a cosine between the bottleneck and a prototype.

The weight norm is ``torch.nn.utils.parametrizations.weight_norm`` (the deprecated hook-based
``nn.utils.weight_norm`` does not deep-copy or ``functional_call`` cleanly). Its state-dict keys
are ``last_layer.parametrizations.weight.original0`` (g, (out_dim, 1)) and ``...original1`` (v);
plain tensors, so ``state_dict``/safetensors round trips need nothing special.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class LocalizabilityHead(nn.Module):
    """MLP (D -> hidden -> hidden -> bottleneck, GELU) + L2-norm + weight-normed last layer.

    Args:
        in_dim: width D of the backbone's pooled feature.
        out_dim: number of prototypes K (65,536 in Adam-v2 and DINO).
        hidden_dim, bottleneck_dim: MLP widths (Adam-v2: 2048, 256).
        norm_last_layer: freeze the weight-norm gain at 1 (DINO's default and Adam-v2's).
        use_bn: BatchNorm1d after the two hidden Linear layers (before GELU).
        bottleneck_bn: BatchNorm1d without affine on the bottleneck before the L2-norm: the
            batch's embeddings are centred, so they cannot all point one way (docs/adam_v2.md).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
        use_bn: bool = False,
        bottleneck_bn: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in in (in_dim, hidden_dim):
            layers.append(nn.Linear(width_in, hidden_dim))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        if bottleneck_bn:
            layers.append(nn.BatchNorm1d(bottleneck_dim, affine=False))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # DINO's init: truncated normal, std 0.02, zero bias
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        gain = self.last_layer.parametrizations.weight.original0  # (out_dim, 1)
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)
        self.out_dim = int(out_dim)

    def embed(self, x: Tensor) -> Tensor:
        """The L2-normalised bottleneck embedding (N, bottleneck) of features (N, D)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """Prototype logits (N, out_dim) of features (N, D) (cosines when the gain is 1)."""
        return self.last_layer(self.embed(x))

    def forward_with_embedding(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N, out_dim), normalised bottleneck embedding (N, bottleneck)) in one pass."""
        z = self.embed(x)
        return self.last_layer(z), z
