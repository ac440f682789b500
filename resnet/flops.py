"""Parameter and multiply-add counts measured on the model (``torch.utils.flop_counter``), never hard-coded."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_multiply_adds(model: nn.Module, input_size: int) -> int:
    """Multiply-adds of one forward pass on a ``[1, 3, s, s]`` input (convs and fc; FLOPs / 2).

    Runs on the ``meta`` device when the model is there, so even ResNet-152 costs no real compute.
    """
    device = next(model.parameters()).device
    x = torch.empty(1, 3, input_size, input_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops() // 2
