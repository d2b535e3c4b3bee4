"""``QGDN``: CompressAI's generalized divisive normalization (GDN, and IGDN in decoders) with quantized weights.

GDN divides each channel by ``sqrt(beta + gamma @ x^2)``: a 1x1 convolution of the squared input followed by a
square root. Its weight is the effective ``gamma`` (CompressAI stores it reparametrized to stay non-negative),
quantized per output channel like a convolution's; ``beta`` is its bias and stays float, as biases do. The
quantized layer keeps the input quantizer of a swapped layer, so that under activation quantization GDN reads
the same grid a convolution would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.codec.compressai_modules import compressai_module
from lowbit.layers import QuantLayer, register_quantized
from lowbit.spec import QuantSpec


class QGDN(QuantLayer, nn.Module):
    """GDN (``inverse=False``) or IGDN (``inverse=True``) over ``channels`` channels, weight on a grid."""

    def __init__(self, channels: int, inverse: bool, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.inverse = inverse
        self.weight = nn.Parameter(torch.empty(channels, channels, 1, 1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))

    @classmethod
    def from_float(cls, gdn: nn.Module, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                   seed: int = 0) -> "QGDN":
        channels = gdn.beta.numel()
        q = cls(channels, bool(gdn.inverse), device=gdn.beta.device, dtype=gdn.beta.dtype)
        with torch.no_grad():
            q.weight.copy_(gdn.gamma_reparam(gdn.gamma).reshape(channels, channels, 1, 1))
            q.bias.copy_(gdn.beta_reparam(gdn.beta))
        q._init_quant(weight_spec, input_spec, seed)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        # a rounded gamma can lose its smallest entries, never turn negative: beta alone keeps norm positive
        norm = F.conv2d(x * x, self.fake_quant_weight(), self.bias)
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))

    def extra_repr(self) -> str:
        return f"{self.bias.numel()}, inverse={self.inverse}"


def register_gdn() -> None:
    """Make CompressAI's GDN a layer lowbit quantizes (called when a codec is first prepared)."""
    GDN = compressai_module("layers").GDN

    register_quantized(GDN, QGDN.from_float)
