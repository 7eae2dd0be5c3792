"""Which parameters AdamW leaves undecayed, one rule for pretraining and fine-tuning alike.

Norm scales and biases (every 1-D tensor), the MAE mask token and Swin's relative-position-bias
tables are exempt (the MAE / Swin recipe); decaying the bias tables during fine-tuning would pull
a pretrained attention prior towards zero.
"""

from __future__ import annotations

from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for a parameter that AdamW should not decay (see the module docstring)."""
    return (
        param.ndim <= 1
        or name.rsplit(".", 1)[-1] == "mask_token"
        or "relative_position_bias_table" in name
    )
