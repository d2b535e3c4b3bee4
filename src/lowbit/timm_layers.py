"""timm's own layer types that lowbit quantizes: they compute what a torch layer does, with one twist each.

- ``timm.layers.Linear`` is ``nn.Linear`` plus a dtype cast for TorchScript (the heads of timm's MobileNetV3,
  EfficientNet and GhostNet): quantized as ``nn.Linear``.
- ``timm.layers.Conv2dSame`` is ``nn.Conv2d`` after TensorFlow's "same" padding, computed from each input's
  size (the strided convolutions of the ``tf_`` EfficientNets and MobileNets): quantized as
  :class:`QConv2dSame`, which pads the same way before its input quantizer and convolution. Padding adds zeros,
  which every lowbit grid holds, so the order does not matter.

:func:`register_timm_layers` registers both with :func:`lowbit.layers.register_quantized` (timm is imported
only when a model is prepared, so that ``import lowbit`` stays fast).
"""

from __future__ import annotations

import torch

from lowbit.layers import QConv2d, QLinear, is_registered, register_quantized


def same_padded(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """``x`` padded as TensorFlow's "same" padding does for ``conv`` (by its kernel, stride and dilation)."""
    from timm.layers.padding import pad_same

    return pad_same(x, list(conv.kernel_size), list(conv.stride), list(conv.dilation))


class QConv2dSame(QConv2d):
    """``Conv2dSame`` with quantized weights: TensorFlow "same" padding from the input's size, then the
    quantized convolution."""

    def same_padded(self, x: torch.Tensor) -> torch.Tensor:
        return same_padded(x, self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.same_padded(x))

    def weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return super().weight_op(self.same_padded(x), weight)


def register_timm_layers() -> None:
    """Teach lowbit timm's ``Linear`` and ``Conv2dSame`` (nothing when timm is missing; idempotent)."""
    try:
        from timm.layers import Conv2dSame, Linear
    except ImportError:
        return
    if not is_registered(Linear):
        register_quantized(Linear, QLinear.from_float)
        register_quantized(Conv2dSame, QConv2dSame.from_float)
