"""Export-time stand-ins for lowbit's quantized modules.

:func:`exportable` copies a frozen quantized model and swaps every ``Quantizer`` and quantized layer for a
module built from the custom ops of :mod:`lowbit.deploy.onnx_ops`: weights become integer buffers (the file's
initializers) dequantized per channel, activation quantizers become quantize-dequantize pairs on their own
grid. Everything else (the traced graph, norms, pooling, attention) is left as it is. The copy computes what
the quantized model computes, so it is also the reference the ONNX file is checked against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lowbit import qmath
from lowbit.codec.gdn import QGDN
from lowbit.deploy import onnx_ops  # noqa: F401 - registers torch.ops.lowbit
from lowbit.deploy.exported_weight import DequantizedWeight, integer_input_grid, static_grid
from lowbit.deploy.subpixel import subpixel_plans, subpixel_weight
from lowbit.errors import LowbitError
from lowbit.graph import layer_input_quantizers, set_module
from lowbit.integer_bias import INTEGER_KERNEL_GRID
from lowbit.layers import QConv1d, QConv2d, QConvTranspose2d, QLinear, QuantLayer, quant_layers
from lowbit.quantizer import Quantizer
from lowbit.timm_layers import QConv2dSame, same_padded


@dataclass
class ExportNotes:
    """What the export could not express as integer computation in onnxruntime, for the user to read."""

    float_compute: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        if line not in self.float_compute:
            self.float_compute.append(line)


class QDQ(nn.Module):
    """A static activation quantizer: quantize-dequantize on a calibrated per-tensor grid."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(()))
        self.register_buffer("zero_point", zero_point.detach().to(torch.int32).reshape(()))
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.lowbit.quantize_dequantize(x, self.scale, self.zero_point, self.qmin, self.qmax)


class DynamicQDQ(nn.Module):
    """A dynamic activation quantizer: the grid comes from each input's own range."""

    def __init__(self, qmin: int, qmax: int) -> None:
        super().__init__()
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.lowbit.dynamic_quantize_dequantize(x, self.qmin, self.qmax)


class Float16Cast(nn.Module):
    """An fp16 activation quantizer: rounding to half precision and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return qmath.fake_quantize_fp16(x)


def export_quantizer(q: Quantizer | None, notes: ExportNotes) -> nn.Module:
    """The export-time module of an activation quantizer (identity when it is off)."""
    if q is None or q.state != "quantize":
        return nn.Identity()
    if q.spec.is_fp16:
        return Float16Cast()
    qmin, qmax = q.qrange
    if q.spec.dynamic:
        if (qmin, qmax) != INTEGER_KERNEL_GRID:
            notes.add(f"{q.spec.bits}-bit dynamic activations: quantized and dequantized in the graph, then "
                      "computed in float (onnxruntime's dynamic integer kernels take 8 bits only)")
        return DynamicQDQ(qmin, qmax)
    if (qmin, qmax) != INTEGER_KERNEL_GRID:
        notes.add(f"{q.spec.bits}-bit activations: exact {q.spec.bits}-bit grid, computed in float after "
                  "dequantization (onnxruntime has integer kernels for 8-bit activations only)")
    return QDQ(q.scale, q.zero_point, qmin, qmax)


def _wrap(x: torch.Tensor, pad: tuple[int, ...]) -> torch.Tensor:
    """Circular padding as slices and a concatenation, which every runtime reads (OpenVINO's ONNX reader has no
    ``Pad`` mode "wrap"). ``pad`` lists (before, after) pairs from the last dimension back, as ``F.pad`` does."""
    for back, (before, after) in enumerate(zip(pad[0::2], pad[1::2])):
        dim = x.dim() - 1 - back
        index = (slice(None),) * dim
        parts = ([x[index + (slice(-before, None),)]] if before else []) + [x] \
            + ([x[index + (slice(0, after),)]] if after else [])
        x = torch.cat(parts, dim)
    return x


class _ExportedLayer(nn.Module):
    """What code around a layer may read from it besides calling it (timm's Fourier position encoding takes its
    device and dtype from ``token_projection.weight``): the sizes, and the weight and bias as float tensors."""

    SIZES = ("in_channels", "out_channels", "kernel_size", "in_features", "out_features")

    def __init__(self, layer: QuantLayer, weight: DequantizedWeight, input_quant: nn.Module) -> None:
        super().__init__()
        self.w, self.input_quant = weight, input_quant
        for size in self.SIZES:
            if hasattr(layer, size):
                setattr(self, size, getattr(layer, size))

    @property
    def weight(self) -> torch.Tensor:
        return self.w.weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.w.bias_value() if not self.w.bias_after else self.w.bias


class ExportedConv2d(_ExportedLayer):
    def __init__(self, layer: QConv2d | QConv1d | QConvTranspose2d, weight: DequantizedWeight,
                 input_quant: nn.Module) -> None:
        super().__init__(layer, weight, input_quant)
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        # Reflect, replicate and circular padding copy input values, so padding before the input quantizer (see
        # exportable) gives the codes lowbit's layer pads, and Q -> DQ -> Conv stays together for integer kernels.
        self.pad_mode = layer.padding_mode if layer.padding_mode != "zeros" else None
        if self.pad_mode is not None:
            self.pad = layer._reversed_padding_repeated_twice
            self.padding = (0,) * len(layer.padding)
        self.same = isinstance(layer, QConv2dSame)  # pads by the input's size first (its kernel_size is kept)

    def padded_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = same_padded(x, self)
        if self.pad_mode == "circular":
            x = _wrap(x, self.pad)
        elif self.pad_mode is not None:
            x = F.pad(x, self.pad, mode=self.pad_mode)
        return self.input_quant(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.add_bias_after(F.conv2d(self.padded_input(x), self.w.weight(), self.w.bias_value(),
                                              self.stride, self.padding, self.dilation, self.groups))


class ExportedConv1d(ExportedConv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.add_bias_after(F.conv1d(self.padded_input(x), self.w.weight(), self.w.bias_value(),
                                              self.stride, self.padding, self.dilation, self.groups))


class ExportedConvTranspose2d(ExportedConv2d):
    def __init__(self, layer: QConvTranspose2d, weight: DequantizedWeight, input_quant: nn.Module) -> None:
        super().__init__(layer, weight, input_quant)
        self.output_padding = layer.output_padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.add_bias_after(F.conv_transpose2d(self.input_quant(x), self.w.weight(), self.w.bias_value(),
                                                        self.stride, self.padding, self.output_padding, self.groups,
                                                        self.dilation))


class ExportedSubpixelConvTranspose2d(ExportedConv2d):
    """A transposed convolution as a convolution over its output phases and a pixel shuffle (see
    :mod:`lowbit.deploy.subpixel`)."""

    def __init__(self, layer: QConvTranspose2d, weight: DequantizedWeight, input_quant: nn.Module,
                 plans: tuple[tuple[int, int], tuple[int, int]]) -> None:
        super().__init__(layer, weight, input_quant)
        self.factor = layer.stride[0]
        self.padding = (plans[0][0], plans[1][0])
        phases = self.factor ** 2
        weight.codes = subpixel_weight(weight.codes, self.factor, layer.padding, plans, weight.zero_point)
        weight.scale = weight.scale.repeat_interleave(phases)
        weight.zero_point = weight.zero_point.repeat_interleave(phases)
        weight.axis = 0
        if weight.bias_codes:
            weight.bias_q = weight.bias_q.repeat_interleave(phases)
            weight.bias_scale = weight.bias_scale.repeat_interleave(phases)
        elif weight.bias is not None:
            weight.bias = weight.bias.repeat_interleave(phases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phases = F.conv2d(self.input_quant(x), self.w.weight(), self.w.bias_value(), 1, self.padding)
        return F.pixel_shuffle(self.w.add_bias_after(phases), self.factor)


class ExportedGDN(nn.Module):
    """A codec's GDN (or IGDN): ``x * rsqrt(beta + gamma * x^2)``, gamma on its integer grid as a 1x1 convolution."""

    def __init__(self, layer: QGDN, weight: DequantizedWeight, input_quant: nn.Module) -> None:
        super().__init__()
        self.w, self.input_quant, self.inverse = weight, input_quant, layer.inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        norm = F.conv2d(x * x, self.w.weight(), self.w.bias_value())
        return x * (torch.sqrt(norm) if self.inverse else torch.rsqrt(norm))


class ExportedLinear(_ExportedLayer):

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.add_bias_after(F.linear(self.input_quant(x), self.w.weight(), self.w.bias_value()), -1)


EXPORTED_LAYERS = (QConvTranspose2d, QConv1d, QConv2d, QLinear, QGDN)


def _exported(layer: QuantLayer, weight: DequantizedWeight, input_quant: nn.Module) -> nn.Module:
    """The export-time stand-in of one quantized layer (one of :data:`EXPORTED_LAYERS`)."""
    if isinstance(layer, QConvTranspose2d):
        plans = subpixel_plans(layer) if not weight.float16 else None
        if plans is not None:
            return ExportedSubpixelConvTranspose2d(layer, weight, input_quant, plans)
        return ExportedConvTranspose2d(layer, weight, input_quant)
    if isinstance(layer, QConv1d):
        return ExportedConv1d(layer, weight, input_quant)
    if isinstance(layer, QConv2d):
        return ExportedConv2d(layer, weight, input_quant)
    if isinstance(layer, QGDN):
        return ExportedGDN(layer, weight, input_quant)
    return ExportedLinear(layer, weight, input_quant)


def exportable(qmodel: nn.Module, signed_weights: bool = True) -> tuple[nn.Module, ExportNotes]:
    """A copy of the frozen ``qmodel`` made of exportable modules, and what will run in float.

    ``signed_weights=False`` stores 8-bit symmetric weight codes as uint8 (see :func:`lowbit.deploy.exported_weight.store_unsigned`)."""
    notes = ExportNotes()
    model = copy.deepcopy(qmodel).cpu().eval()
    inputs = layer_input_quantizers(model)
    for name, layer in list(quant_layers(model)):
        if not isinstance(layer, EXPORTED_LAYERS):
            raise LowbitError(f"layer {name} ({type(layer).__name__}) has no ONNX export; only convolutions, "
                              "transposed convolutions, linear layers and GDN export")
        if layer.weight_quant.state != "quantize":
            notes.add(f"{name}: weights left in float")
            continue
        if not layer.frozen:
            raise LowbitError(f"layer {name} is not frozen; export models returned by lowbit.quantize or lowbit.load")
        feeding = model.get_submodule(inputs[name]) if name in inputs else None
        if integer_input_grid(feeding) is None and not layer.weight_quant.spec.is_fp16:
            notes.add(f"{name}: input not on an 8-bit static grid, so the layer computes in float on its "
                      "dequantized integer weights")
        if layer.weight_quant.spec.is_fp16:
            notes.add("fp16 weights: stored as float16 and computed in float32 (onnxruntime's CPU kernels "
                      "have no float16 convolution)")
        weight = DequantizedWeight(layer, feeding, signed_weights)
        if weight.bias_after:
            notes.add(f"{name}: its bias does not fit int32 codes on the input-times-weight grid (the input's grid "
                      "step is tiny): added after the layer, which then computes in float")
        own_input = export_quantizer(layer.input_quant, notes)
        pads = getattr(layer, "padding_mode", "zeros") != "zeros" or isinstance(layer, QConv2dSame)
        if pads and layer.input_quant is None and static_grid(feeding):
            own_input = export_quantizer(feeding, notes)  # padding copies values: on the same grid after it
        if isinstance(layer, QConvTranspose2d) and not layer.weight_quant.spec.is_fp16 \
                and subpixel_plans(layer) is None:
            notes.add(f"{name}: ConvTranspose2d computed in float on its dequantized integer weights (onnxruntime's "
                      "CPU provider has no integer transposed convolution, and this one has no sub-pixel form)")
        swapped = _exported(layer, weight, own_input)
        set_module(model, name, swapped)
    for name, q in [(n, m) for n, m in model.named_modules() if isinstance(m, Quantizer)]:
        set_module(model, name, export_quantizer(q, notes))
    return model, notes
