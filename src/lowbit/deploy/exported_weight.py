"""A quantized layer's weight as an export-time module: integer codes with their per-channel grid, and the bias
in the form onnxruntime's integer kernels take it (see :class:`DequantizedWeight`)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.deploy import onnx_ops  # noqa: F401 - registers torch.ops.lowbit
from lowbit.integer_bias import INTEGER_KERNEL_GRID, bias_codes, bias_grid
from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer

UNSIGNED_OFFSET = 128


def codes_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The torch type that stores ``[qmin, qmax]`` codes; 4-bit types are made when the ONNX file is written."""
    if qmin >= 0:
        return torch.uint8 if qmax <= 255 else torch.int32
    return torch.int8 if qmin >= -128 else torch.int16


def store_unsigned(qmin: int, qmax: int, signed_weights: bool) -> bool:
    """Whether signed 8-bit codes are stored as uint8 with 128 added to codes and zero points (the same real
    values), which only ``signed_weights=False`` asks for. int8 weights are what TensorRT and OpenVINO need and
    what onnxruntime's fastest x86 and ARM kernels take; but on x86 CPUs without VNNI, onnxruntime multiplies
    uint8 activations by int8 weights with an instruction that saturates 16-bit pair sums, which 8-bit weight
    codes can reach, while uint8 weights take an exact (slower) kernel. Grids of 7 bits and fewer cannot
    saturate, so they stay signed."""
    return not signed_weights and -128 <= qmin < -64 and qmax <= 127


def exact_bias_scale(bias: torch.Tensor) -> torch.Tensor:
    """Per-channel powers of two on which each float32 bias is an int32 code exactly (its 24-bit mantissa
    shifted to fill 31 bits): ``bias / scale`` lies in [2**30, 2**31) in magnitude, or is 0."""
    _, exponent = torch.frexp(bias.detach().float())
    return torch.ldexp(torch.ones_like(bias, dtype=torch.float32), exponent - 31)


def _requantizes_exactly(bias: torch.Tensor, feeding: Quantizer, weight_scale: torch.Tensor,
                         grid: torch.Tensor) -> bool:
    """Whether onnxruntime, quantizing the float ``bias`` of a layer behind integer kernels when a session starts
    (``round(bias / (input scale * weight scale))`` in float32), gets lowbit's int32 codes on ``grid``."""
    product = feeding.scale.detach().float().reshape(()) * weight_scale.detach().float().expand(grid.numel())
    return torch.equal(torch.round(bias.detach().float() / product), bias_codes(bias, grid).float())


def static_grid(q: Quantizer | None) -> bool:
    """Whether ``q`` quantizes to a calibrated integer grid (any width), the grids onnxruntime sees as constants."""
    return q is not None and q.state == "quantize" and not q.spec.is_fp16 and not q.spec.dynamic


def integer_input_grid(q: Quantizer | None) -> tuple[torch.Tensor, int, int] | None:
    """The static 8-bit grid feeding a layer, the one case where onnxruntime runs the layer on integers."""
    if not static_grid(q) or q.qrange != INTEGER_KERNEL_GRID:
        return None
    return q.scale, *q.qrange


class DequantizedWeight(nn.Module):
    """Integer weight codes with their per-channel grid, and the bias: float where onnxruntime turns it into the
    int32 bias its integer kernels add (on the input-times-weight scale, as lowbit does), int32 codes on an
    exact grid behind other static input grids."""

    def __init__(self, layer: QuantLayer, feeding: Quantizer | None, signed_weights: bool = True) -> None:
        super().__init__()
        wq = layer.weight_quant
        self.float16, self.bias_after = wq.spec.is_fp16, False
        weight = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        if self.float16:
            self.register_buffer("codes", layer.qweight.detach().to(torch.float16))
            self.register_buffer("bias", bias)
            return
        qmin, qmax = wq.qrange
        self.axis = wq.spec.channel_axis(weight.dim())  # the output-channel axis: 1 for a transposed convolution
        channels = weight.shape[self.axis]
        codes, zero_point = layer.qweight.detach(), wq.zero_point.detach()
        if store_unsigned(qmin, qmax, signed_weights):
            qmin, qmax = qmin + UNSIGNED_OFFSET, qmax + UNSIGNED_OFFSET
            codes, zero_point = codes + UNSIGNED_OFFSET, zero_point + UNSIGNED_OFFSET
        dtype = codes_dtype(qmin, qmax)
        self.register_buffer("codes", codes.to(dtype))
        self.register_buffer("scale", wq.scale.detach().float().expand(channels).contiguous())
        # written even when all zero, unlike the int32 biases' (ONNX's default): onnxruntime fuses a Gemm into its
        # integer QGemm only when the weight's DequantizeLinear names a zero point
        self.register_buffer("zero_point", zero_point.to(dtype).expand(channels).contiguous())
        self.bits = (qmin, qmax)
        # Where onnxruntime runs the layer on integers (an 8-bit static input grid), freezing put the bias on
        # the input-times-weight grid, and onnxruntime's optimizer quantizes a float bias to int32 codes on
        # exactly that grid when the session starts: the float bias is stored, which spares the file an int32
        # copy's per-channel scale (unless the optimizer's float32 arithmetic would not give back lowbit's codes).
        # Behind any other static grid the bias is stored as int32 codes on a per-channel power-of-two scale
        # that holds it exactly: there the optimizer would round a float bias to the input-times-weight grid,
        # which is coarse for narrow inputs.
        # (Behind a dynamic grid the float bias stays: the optimizer fuses it into the dynamic integer kernels.)
        # A bias that int32 codes on that grid cannot hold (behind an input grid with a tiny step) is added after
        # the layer: onnxruntime reads any int32 bias of a layer behind an 8-bit grid as lying on that grid.
        # onnxruntime also fuses a Gemm behind a narrow grid (2-7 bits, stored in 8) whose output is not
        # quantized into its integer QGemm, reading an int32 bias as lying on the input-times-weight grid:
        # such a bias is added after the layer too. Behind an 8-bit grid it fuses such a Gemm (a swapped linear
        # layer's) only with int32 bias codes, which are stored there.
        bias_scale = bias_grid(layer, feeding)
        float_output = isinstance(layer, nn.Linear) and layer.input_quant is not None
        weighted = isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
        narrow = static_grid(feeding) and feeding.qrange[1] - feeding.qrange[0] < 255
        self.bias_after = bias_scale is None and bias is not None and (
            (integer_input_grid(feeding) is not None and weighted) or (isinstance(layer, nn.Linear) and narrow))
        if bias_scale is not None and not float_output and _requantizes_exactly(bias, feeding, wq.scale, bias_scale):
            bias_scale = None
        elif bias_scale is None and bias is not None and bias.numel() == channels and static_grid(feeding) \
                and not self.bias_after:
            bias_scale = exact_bias_scale(bias)
        self.bias_codes = bias_scale is not None
        if self.bias_codes:
            self.register_buffer("bias_q", bias_codes(bias, bias_scale))
            self.register_buffer("bias_scale", bias_scale)
        else:
            self.register_buffer("bias", bias)

    def weight(self) -> torch.Tensor:
        if self.float16:
            return self.codes.float()
        return torch.ops.lowbit.dequantize(self.codes, self.scale, self.zero_point, self.axis)

    def bias_value(self) -> torch.Tensor | None:
        """The bias the layer's own operator adds (None where :meth:`add_bias_after` adds it)."""
        if self.float16:
            return self.bias
        if self.bias_codes:
            return torch.ops.lowbit.dequantize(self.bias_q, self.bias_scale, None, 0)
        return None if self.bias_after else self.bias

    def add_bias_after(self, y: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """``y`` plus the bias where the layer's operator does not add it (an Add node after the layer)."""
        if not self.bias_after:
            return y
        shape = [1] * y.dim()
        shape[channel_dim] = -1
        return y + self.bias.reshape(shape)
