"""Weight-standardized convolutions folded into plain ones, as batch-norm is folded.

timm's ``StdConv2d`` (BiT, the ResNet-V2 family) and ``ScaledStdConv2d`` (NFNet) standardize their weight in
every forward pass: per output channel, minus its mean, over its standard deviation (times a learned gain and a
fixed scale for the scaled form). In an evaluated model that is a function of the weight alone, so it is
computed once: each such convolution becomes an ``nn.Conv2d`` holding the weight it would have used, which
lowbit then quantizes like any other. Left as they were, these layers stayed float (a subclass with its own
forward is not swapped) and torch.fx read their weights as bare tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _standardized_types() -> tuple[type, ...]:
    try:
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
    except ImportError:
        return ()
    return StdConv2d, ScaledStdConv2d, StdConv2dSame, ScaledStdConv2dSame


def standardized_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight ``conv``'s forward pass convolves with (timm's formula: a batch-norm over each output channel's
    weights, scaled by ``gain * scale`` for the scaled form)."""
    gain = (conv.gain * conv.scale).view(-1) if hasattr(conv, "gain") else None
    flat = conv.weight.detach().reshape(1, conv.out_channels, -1)
    return F.batch_norm(flat, None, None, weight=gain, training=True, momentum=0.0, eps=conv.eps) \
        .reshape_as(conv.weight)


def fold_weight_standardization(model: nn.Module) -> int:
    """Replace, in place, every weight-standardized convolution of ``model`` that pads statically (the "same"
    variants that pad each input by its size are left alone) by an ``nn.Conv2d`` with its standardized weight.
    Returns how many were replaced."""
    types = _standardized_types()
    folded = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) not in types or getattr(child, "same_pad", False):
                continue
            conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                             child.dilation, child.groups, child.bias is not None, device=child.weight.device,
                             dtype=child.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(standardized_weight(child))
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
            setattr(parent, name, conv.train(child.training))
            folded += 1
    return folded
