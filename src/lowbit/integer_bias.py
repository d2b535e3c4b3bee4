"""Biases on the grid integer runtimes add them on.

An integer runtime (onnxruntime's QLinearConv and QGemm, TensorRT, TFLite) adds a layer's bias to the int32
accumulator of input codes times weight codes, so it stores the bias as int32 on that accumulator's scale:
input scale times weight scale, per output channel. A float bias is rounded to that grid on export; when the
simulated model keeps the float value, the two models differ by up to half a grid step per channel, which
shifts some activations across a rounding boundary and changes a few predictions. Freezing a model therefore
puts each bias on that grid, so the simulated model computes what the deployed one computes.

Only layers fed by an 8-bit (uint8) static grid are concerned: those are the ones onnxruntime runs on integer
kernels. Narrower inputs run in float on the dequantized weights there, and their coarse grids would make the
int32 bias grid coarse too (at 4-bit inputs and 2-bit weights, a sizeable share of an output step).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.graph import layer_input_quantizers
from lowbit.layers import QuantLayer, quant_layers
from lowbit.quantizer import Quantizer

INT32_MAX = 2**31 - 1
INTEGER_KERNEL_GRID = (0, 255)  # the activation grid onnxruntime's CPU integer kernels take (uint8)


def integer_bias_scale(input_scale: torch.Tensor, weight_scale: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel scale of a layer's int32 bias: its input's (per-tensor) scale times its weight scale, exactly
    (a runtime assumes that product; quantizer scales are at least 1e-8, so it stays a normal float32)."""
    return input_scale.detach().float().reshape(()) * weight_scale.detach().float().expand(channels)


def fits_int32(bias: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether every channel's bias is an int32 code on ``scale`` without clamping."""
    return bool((bias.detach().float().abs() / scale).max() <= INT32_MAX)


def bias_grid(layer: QuantLayer, feeding: Quantizer | None) -> torch.Tensor | None:
    """The scale of ``layer``'s int32 bias, or None where the runtime does not add it in integers: no bias,
    weights not on an integer grid, an input that is not on a static per-tensor uint8 grid, a bias whose
    channels are not the weight grid's (a transposed convolution with groups shares grids across groups), or a
    bias too large for int32 codes on that grid (behind an input grid with a tiny step; the export then adds it
    after the layer, see :mod:`lowbit.deploy.exported_weight`)."""
    bias, wq = getattr(layer, "bias", None), layer.weight_quant
    if bias is None or not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        return None
    if wq.state != "quantize" or wq.spec.is_fp16 or feeding is None or feeding.state != "quantize":
        return None
    if feeding.spec.is_fp16 or feeding.spec.dynamic or feeding.qrange != INTEGER_KERNEL_GRID \
            or feeding.scale.numel() != 1:
        return None
    channels = layer.weight.shape[wq.spec.channel_axis(layer.weight.dim())]
    if bias.numel() != channels:
        return None
    scale = integer_bias_scale(feeding.scale, wq.scale, channels)
    return scale if fits_int32(bias, scale) else None


def bias_codes(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A bias as int32 codes on ``scale``."""
    return torch.round(bias.detach().float() / scale).clamp(-INT32_MAX, INT32_MAX).to(torch.int32)


def snap_biases(model: nn.Module) -> int:
    """Put every bias that a runtime adds in integers on its int32 grid (see the module's docstring).
    Returns how many layers' biases were snapped."""
    modules = dict(model.named_modules())
    inputs = layer_input_quantizers(model)
    snapped = 0
    for name, layer in quant_layers(model):
        scale = bias_grid(layer, modules.get(inputs[name]) if name in inputs else None)
        if scale is None:
            continue
        with torch.no_grad():
            layer.bias.copy_(bias_codes(layer.bias, scale).to(scale.dtype) * scale)
        snapped += 1
    return snapped
