"""Quantized weight layers: ``QConv2d``, ``QConv1d``, ``QConvTranspose2d`` and ``QLinear``.

They subclass the float layers (so ``isinstance(m, nn.Conv2d)`` still holds) and keep the float weight
until :meth:`QuantLayer.freeze`, which stores the integer codes in ``qweight`` and replaces ``weight`` by
their dequantized values. How the weight is rounded onto the grid is pluggable: ``rounding=None`` is
round-to-nearest; learned-rounding methods install a module ``rounding(weight, scale, zero_point, qmin, qmax)``
that returns the fake-quantized weight, and only that module is optimized.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import qmath
from lowbit.input_covariance import InputCovariance
from lowbit.quantizer import Quantizer
from lowbit.spec import QuantSpec

# The widest weight grid whose scales freezing makes float16 numbers, as the 4-bit formats runtimes read store
# them (GPTQ, AWQ, GGUF): there a channel's scale is a sizeable share of its bytes. 8-bit grids keep float32
# scales, as onnxruntime's and TensorRT's int8 files do (and a 12-bit code would move by half a step).
FLOAT16_SCALE_BITS = 4


class QuantLayer:
    """Behaviour shared by the quantized conv and linear layers (a mixin over the torch layer)."""

    weight: nn.Parameter
    weight_quant: Quantizer
    input_quant: Quantizer | None
    rounding: nn.Module | None
    qweight: torch.Tensor | None

    def _adopt(self, float_layer: nn.Module, weight_spec: QuantSpec, input_spec: QuantSpec | None,
               seed: int) -> "QuantLayer":
        """Take over the float layer's weight and bias (shared, not copied) and place the quantizers."""
        self.weight, self.bias = float_layer.weight, float_layer.bias
        self._init_quant(weight_spec, input_spec, seed)
        return self

    def _init_quant(self, weight_spec: QuantSpec, input_spec: QuantSpec | None, seed: int) -> None:
        # the grids start on the weight's device: the layer's input and weight are both quantized there
        device = self.weight.device
        self.weight_quant = Quantizer(weight_spec, seed, device)
        self.input_quant = Quantizer(input_spec, seed, device) if input_spec is not None else None
        self.rounding = None
        self.register_buffer("qweight", None)  # type: ignore[attr-defined]

    @property
    def frozen(self) -> bool:
        """True once the weight has been replaced by its quantized value (see :meth:`freeze`)."""
        return self.qweight is not None

    def calibrate_weights(self, input_covariance: InputCovariance | None = None) -> None:
        """Choose the weight grid from the weight itself, and from the covariance of the layer's inputs when
        the observer weighs errors by them (see :mod:`lowbit.input_covariance`)."""
        self.weight_quant.calibrate_to(self.weight, input_covariance)

    def weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's linear operation on ``x`` with ``weight`` in place of its own, without bias or input
        quantizer: what bias correction and exact integer arithmetic apply to other weights."""
        raise NotImplementedError(f"{type(self).__name__} has no linear weight operation")

    def fake_quant_weight(self) -> torch.Tensor:
        """The weight as the quantized layer sees it, with gradients for the optimizing methods."""
        wq = self.weight_quant
        if self.frozen or wq.state != "quantize":
            return self.weight
        if wq.spec.is_fp16:
            return qmath.fake_quantize_fp16(self.weight)
        scale, zp = wq.grid(self.weight.dim())
        qmin, qmax = wq.qrange
        if self.rounding is not None:
            return self.rounding(self.weight, scale, zp, qmin, qmax)
        return qmath.fake_quantize(self.weight, scale, zp, qmin, qmax)

    def integer_weight(self) -> torch.Tensor:
        """Integer codes of the current (possibly learned) rounding, as int32."""
        wq = self.weight_quant
        scale, zp = wq.grid(self.weight.dim())
        with torch.no_grad():
            w = self.fake_quant_weight()
            return qmath.quantize(w, scale, zp, *wq.qrange)

    def freeze(self) -> None:
        """Fix the weight on its grid: store the codes and make ``weight`` exactly their dequantized value."""
        if self.frozen or self.weight_quant.state != "quantize":
            return
        with torch.no_grad():
            if self.weight_quant.spec.is_fp16:
                self.qweight = self.weight.detach().to(torch.float16)
                self.weight.data = self.qweight.float()
            else:
                self.qweight = self.integer_weight()
                self._scales_to_float16()
                scale, zp = self.weight_quant.grid(self.weight.dim())
                self.weight.data = qmath.dequantize(self.qweight, scale, zp)
        self.rounding = None

    def _scales_to_float16(self) -> None:
        """Make the scales of a grid of at most 4 bits float16 numbers where they fit (see
        :func:`lowbit.qmath.float16_scales`), keeping the codes: each weight moves by at most 2**-11 of its
        value, and a file stores two bytes of scale per channel instead of four, which at 4 bits matters (a
        depthwise convolution's channel holds 9 weights, 4.5 bytes of codes, next to its scale)."""
        wq, codes = self.weight_quant, self.qweight
        if int(wq.spec.bits) > FLOAT16_SCALE_BITS:
            return
        scale, zp = wq.grid(codes.dim())
        if scale.numel() == 1:
            idle = (codes == zp).all().reshape(1)
        else:
            axis = wq.spec.channel_axis(codes.dim())
            at_zero = (codes == zp).movedim(axis, 0)
            idle = at_zero.reshape(at_zero.shape[0], -1).all(dim=1) if at_zero.shape[0] == scale.numel() else None
        wq.set_qparams(qmath.float16_scales(wq.scale, idle), wq.zero_point)

    def unfreeze(self) -> None:
        """Make a frozen layer trainable again (quantization-aware fine-tuning).

        ``weight`` already holds the dequantized codes, so it becomes the float weight as it is: rounding it to
        the nearest grid point gives back exactly the stored codes, and training moves it from there.
        """
        self.qweight = None
        self.rounding = None

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_quant(x) if self.input_quant is not None else x


class _QConv(QuantLayer):
    """What ``QConv2d`` and ``QConv1d`` share: the float layer's own hyper-parameters and ``_conv_forward``."""

    @classmethod
    def from_float(cls, conv: nn.Conv1d | nn.Conv2d, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                   seed: int = 0) -> "_QConv":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                dtype=conv.weight.dtype)
        return q._adopt(conv, weight_spec, input_spec, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantize_input(x), self.fake_quant_weight(), self.bias)

    def weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The convolution of ``x`` with ``weight`` in place of the layer's own: no bias, no input quantizer."""
        return self._conv_forward(x, weight, None)


class QConv2d(_QConv, nn.Conv2d):
    """``nn.Conv2d`` with quantized weights (and, in module-swap mode, a quantized input)."""


class QConv1d(_QConv, nn.Conv1d):
    """``nn.Conv1d`` with quantized weights (and, in module-swap mode, a quantized input)."""


class QConvTranspose2d(QuantLayer, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (a decoder's upsampling layer) with quantized weights.

    Its weight is laid out (in, out / groups, kH, kW), so per-channel grids run along axis 1, one per output
    channel (shared across groups when groups > 1).
    """

    @classmethod
    def from_float(cls, conv: nn.ConvTranspose2d, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                   seed: int = 0) -> "QConvTranspose2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.output_padding, conv.groups, conv.bias is not None, conv.dilation, conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        # output channels lie on axis 1: per-channel grids follow them, a per-tensor grid's output error too
        return q._adopt(conv, replace(weight_spec, axis=1), input_spec, seed)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(x, output_size, list(self.stride), list(self.padding),
                                              list(self.kernel_size), 2, list(self.dilation))
        return F.conv_transpose2d(self.quantize_input(x), self.fake_quant_weight(), self.bias, self.stride,
                                  self.padding, output_padding, self.groups, self.dilation)

    def weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The transposed convolution of ``x`` with ``weight`` in place of the layer's own (no bias, no input
        quantizer), with the output padding its forward pass uses when no output size is asked for."""
        return F.conv_transpose2d(x, weight, None, self.stride, self.padding, self.output_padding, self.groups,
                                  self.dilation)


class QLinear(QuantLayer, nn.Linear):
    """``nn.Linear`` with quantized weights (and, in module-swap mode, a quantized input)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                   seed: int = 0) -> "QLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device,
                dtype=linear.weight.dtype)
        return q._adopt(linear, weight_spec, input_spec, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.fake_quant_weight(), self.bias)

    def weight_op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x`` times ``weight`` in place of the layer's own: no bias, no input quantizer."""
        return F.linear(x, weight)


_QUANTIZED: dict[type, Callable[..., QuantLayer]] = {
    nn.Conv2d: QConv2d.from_float, nn.Linear: QLinear.from_float, nn.Conv1d: QConv1d.from_float,
    nn.ConvTranspose2d: QConvTranspose2d.from_float}


def register_quantized(float_type: type, make: Callable[..., QuantLayer]) -> None:
    """Teach lowbit to swap ``float_type`` for ``make(module, weight_spec, input_spec, seed)``.

    Layer types of optional dependencies register here when their task is first used (an image codec's GDN),
    so that the core never imports them.
    """
    _QUANTIZED[float_type] = make


def quantized_type_names() -> str:
    """What the messages call the layers lowbit quantizes."""
    names = list(dict.fromkeys(t.__name__ for t in _QUANTIZED))  # timm's Linear is named Linear too
    return ", ".join(names[:-1]) + " and " + names[-1]


def to_quantized(module: nn.Module, weight_spec: QuantSpec, input_spec: QuantSpec | None = None,
                 seed: int = 0) -> nn.Module:
    """The quantized counterpart of a float conv/linear layer."""
    for float_type, make in _QUANTIZED.items():
        if type(module) is float_type:
            return make(module, weight_spec, input_spec, seed)  # type: ignore[return-value]
    raise TypeError(f"no quantized version of {type(module).__name__}")


def is_quantizable(module: nn.Module) -> bool:
    """Exactly the float layers lowbit replaces (subclasses with custom forwards are left alone)."""
    return is_registered(type(module))


def is_registered(float_type: type) -> bool:
    """Whether lowbit swaps layers of exactly ``float_type`` (see :func:`register_quantized`)."""
    return float_type in _QUANTIZED


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLayer]]:
    """All quantized weight layers of a model, with their qualified names, in registration order."""
    for name, m in model.named_modules():
        if isinstance(m, QuantLayer):
            yield name, m
