"""Calls that leave a module's buffers alone: validation passes of methods with BatchNorm."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.func import functional_call


def call_keeping_buffers(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` on copies of its buffers, so BatchNorm running statistics (and their
    batch counters) stay as they are even in training mode; gradients reach the parameters."""
    buffers = {name: buf.clone() for name, buf in module.named_buffers()}
    return functional_call(module, buffers, args)
