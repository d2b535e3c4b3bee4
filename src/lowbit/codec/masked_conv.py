"""``QMaskedConv2d``: CompressAI's masked convolution (the context model of autoregressive codecs) quantized.

A masked convolution sees only the latents already decoded: its mask zeroes the kernel's positions at and after
the current one. The quantized layer keeps the mask and applies it to the quantized weight, so the masked
positions stay exactly zero whatever the rounding does (learned rounding could otherwise move a zero weight one
step away and let the context model read latents the decoder does not have yet). The mask is not stored in a
saved file: it is the architecture's, taken from the float layer when the model is rebuilt, so that an edited
file cannot unmask it.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.codec.compressai_modules import compressai_module
from lowbit.layers import QConv2d, register_quantized
from lowbit.spec import QuantSpec


class QMaskedConv2d(QConv2d):
    """``MaskedConv2d`` (or its checkerboard variant) with quantized weights, masked after rounding."""

    mask: torch.Tensor

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                   seed: int = 0) -> "QMaskedConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                dtype=conv.weight.dtype)
        q.register_buffer("mask", conv.mask.detach().clone(), persistent=False)
        # CompressAI masks the weight in place on every forward; a layer never run may still hold the values
        q._adopt(conv, weight_spec, input_spec, seed)
        q.weight = nn.Parameter(conv.weight.detach() * q.mask, requires_grad=conv.weight.requires_grad)
        return q

    def fake_quant_weight(self) -> torch.Tensor:
        return super().fake_quant_weight() * self.mask

    def unmasked_weights(self) -> int:
        """How many weights at masked positions are not zero: none in a layer this module built; any in a layer
        read from a file means the file was edited, and such a context model would read latents the decoder does
        not have yet (CompressAI's decoding loop uses the weight as it is)."""
        return int((self.weight.detach()[self.mask == 0] != 0).sum())


def register_masked_conv() -> None:
    """Make CompressAI's masked convolutions layers lowbit quantizes (called when a codec is first prepared)."""
    layers = compressai_module("layers")
    for name in ("MaskedConv2d", "CheckerboardMaskedConv2d"):
        float_type = getattr(layers, name, None)
        if float_type is not None:
            register_quantized(float_type, QMaskedConv2d.from_float)
