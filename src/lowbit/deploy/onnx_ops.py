"""The three operations a frozen lowbit model is made of when exported, as torch custom ops with their ONNX
translations.

torch.export keeps a custom op as one node, so each of lowbit's quantizers reaches the ONNX exporter whole and
becomes exactly the QuantizeLinear / DequantizeLinear nodes written here, with lowbit's own scale, zero point
and integer range; the eager implementations below are what the export-time modules compute in PyTorch, and
they follow :mod:`lowbit.qmath` (half-to-even rounding, clamping to ``[qmin, qmax]``).
"""

from __future__ import annotations

import torch
from onnxscript import ir
from onnxscript import opset21 as op

from lowbit.qmath import MIN_SCALE


# ONNX integer types whose full range equals a lowbit integer grid, so QuantizeLinear's saturation is the clamp
NATIVE_TYPES: dict[tuple[int, int], ir.DataType] = {
    (0, 255): ir.DataType.UINT8, (-128, 127): ir.DataType.INT8,
    (0, 15): ir.DataType.UINT4, (-8, 7): ir.DataType.INT4,
    (0, 65535): ir.DataType.UINT16, (-32768, 32767): ir.DataType.INT16,
}


def storage_type(qmin: int, qmax: int) -> ir.DataType:
    """The narrowest 8- or 16-bit ONNX integer type that holds every code of ``[qmin, qmax]``."""
    for (lo, hi), dtype in sorted(NATIVE_TYPES.items(), key=lambda kv: kv[0][1] - kv[0][0]):
        if hi - lo == 15:
            continue
        if (lo < 0) == (qmin < 0) and lo <= qmin and qmax <= hi:
            return dtype
    raise ValueError(f"no ONNX integer type holds the grid [{qmin}, {qmax}]")


@torch.library.custom_op("lowbit::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                        qmax: int) -> torch.Tensor:
    """Per-tensor static fake quantization (a lowbit activation quantizer)."""
    zp = zero_point.to(x.dtype)
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


@quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("lowbit::dynamic_quantize_dequantize", mutates_args=())
def dynamic_quantize_dequantize(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Per-tensor fake quantization on the grid of this tensor's own range (0 included)."""
    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((hi - lo) / (qmax - qmin), min=MIN_SCALE)
    zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return (torch.clamp(torch.round(x / scale) + zp, qmin, qmax) - zp) * scale


@dynamic_quantize_dequantize.register_fake
def _(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("lowbit::dequantize", mutates_args=())
def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int) -> torch.Tensor:
    """Per-channel integer codes (weights, biases) to float, along ``axis``; no ``zero_point`` means zeros
    (ONNX's default, so symmetric grids store none)."""
    shape = [1] * codes.dim()
    shape[axis] = -1
    centred = codes.float() if zero_point is None else codes.float() - zero_point.float().reshape(shape)
    return centred * scale.reshape(shape)


@dequantize.register_fake
def _(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int) -> torch.Tensor:
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


def _quantize_linear(x, scale, zp_float, qmin: int, qmax: int):
    """QuantizeLinear in the grid's own 8- or 16-bit integer type. A narrower grid (2-7 bits) is stored in the
    next wider 8-bit type, and ``x`` is first clipped to the float values of ``qmin`` and ``qmax``, which quantize
    to exactly those codes: onnxruntime clips no integer type below 8 bits, and its fusion of a Clip (ReLU6) into
    the QuantizeLinear after it cannot read a 4-bit zero point (the session fails to load)."""
    native = NATIVE_TYPES.get((qmin, qmax)) if qmax - qmin > 15 else None
    dtype = native or storage_type(qmin, qmax)
    if native is None:
        lo = op.Mul(op.Sub(op.Constant(value_float=float(qmin)), zp_float), scale)
        hi = op.Mul(op.Sub(op.Constant(value_float=float(qmax)), zp_float), scale)
        x = op.Clip(x, lo, hi)
    zp = op.Cast(zp_float, to=dtype)
    return op.QuantizeLinear(x, scale, zp), zp


def quantize_dequantize_onnx(x, scale, zero_point, qmin: int, qmax: int):
    """QuantizeLinear -> DequantizeLinear on lowbit's grid."""
    q, zp = _quantize_linear(x, scale, op.Cast(zero_point, to=ir.DataType.FLOAT), qmin, qmax)
    return op.DequantizeLinear(q, scale, zp)


def dynamic_quantize_dequantize_onnx(x, qmin: int, qmax: int):
    """8-bit: ONNX's DynamicQuantizeLinear (which onnxruntime fuses into integer kernels); other widths: the
    same range computation written out, with the scale and zero point computed in the graph."""
    if (qmin, qmax) == (0, 255):
        q, scale, zp = op.DynamicQuantizeLinear(x)
        return op.DequantizeLinear(q, scale, zp)
    zero = op.Constant(value_float=0.0)
    lo = op.Min(op.ReduceMin(x, keepdims=0), zero)
    hi = op.Max(op.ReduceMax(x, keepdims=0), zero)
    scale = op.Max(op.Div(op.Sub(hi, lo), op.Constant(value_float=float(qmax - qmin))),
                   op.Constant(value_float=MIN_SCALE))
    zp_float = op.Sub(op.Constant(value_float=float(qmin)), op.Round(op.Div(lo, scale)))
    zp_float = op.Clip(zp_float, op.Constant(value_float=float(qmin)), op.Constant(value_float=float(qmax)))
    q, zp = _quantize_linear(x, scale, zp_float, qmin, qmax)
    return op.DequantizeLinear(q, scale, zp)


def dequantize_onnx(codes, scale, zero_point, axis: int):
    if zero_point is None:
        return op.DequantizeLinear(codes, scale, axis=axis)
    return op.DequantizeLinear(codes, scale, zero_point, axis=axis)


TRANSLATIONS = {
    torch.ops.lowbit.quantize_dequantize.default: quantize_dequantize_onnx,
    torch.ops.lowbit.dynamic_quantize_dequantize.default: dynamic_quantize_dequantize_onnx,
    torch.ops.lowbit.dequantize.default: dequantize_onnx,
}
