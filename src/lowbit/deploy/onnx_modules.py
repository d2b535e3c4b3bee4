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
from lowbit.deploy.subpixel import subpixel_plans, subpixel_weight
from lowbit.errors import LowbitError
from lowbit.graph import layer_input_quantizers, set_module
from lowbit.integer_bias import INTEGER_KERNEL_GRID, bias_codes, bias_grid
from lowbit.layers import QConv1d, QConv2d, QConvTranspose2d, QLinear, QuantLayer, quant_layers
from lowbit.quantizer import Quantizer
from lowbit.timm_layers import QConv2dSame, same_padded

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
        narrow = _static_grid(feeding) and feeding.qrange[1] - feeding.qrange[0] < 255
        self.bias_after = bias_scale is None and bias is not None and (
            (_input_grid(feeding) is not None and weighted) or (isinstance(layer, nn.Linear) and narrow))
        if bias_scale is not None and not float_output and _requantizes_exactly(bias, feeding, wq.scale, bias_scale):
            bias_scale = None
        elif bias_scale is None and bias is not None and bias.numel() == channels and _static_grid(feeding) \
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


def _static_grid(q: Quantizer | None) -> bool:
    """Whether ``q`` quantizes to a calibrated integer grid (any width), the grids onnxruntime sees as constants."""
    return q is not None and q.state == "quantize" and not q.spec.is_fp16 and not q.spec.dynamic


def _input_grid(q: Quantizer | None) -> tuple[torch.Tensor, int, int] | None:
    """The static 8-bit grid feeding a layer, the one case where onnxruntime runs the layer on integers."""
    if not _static_grid(q) or q.qrange != INTEGER_KERNEL_GRID:
        return None
    return q.scale, *q.qrange


def exportable(qmodel: nn.Module, signed_weights: bool = True) -> tuple[nn.Module, ExportNotes]:
    """A copy of the frozen ``qmodel`` made of exportable modules, and what will run in float.

    ``signed_weights=False`` stores 8-bit symmetric weight codes as uint8 (see :func:`store_unsigned`)."""
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
        if _input_grid(feeding) is None and not layer.weight_quant.spec.is_fp16:
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
        if pads and layer.input_quant is None and _static_grid(feeding):
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
