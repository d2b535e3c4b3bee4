"""Transposed convolutions exported as sub-pixel convolutions, so that integer kernels run them.

onnxruntime's CPU provider has no integer transposed convolution: a quantized ``ConvTranspose`` runs in float on
its dequantized weights. A transposed convolution of stride ``s`` whose output is exactly ``s`` times its input is
the same computation as an ordinary convolution with ``s * s`` times the output channels, one per output phase,
followed by a depth-to-space shuffle (the sub-pixel form): each phase reads a subset of the kernel's taps, and
the taps a phase does not read are zero codes. The products and sums are the same, so the integer codes,
per-channel scales and bias carry over exactly, repeated for each phase.

The shuffle is a permutation and the quantizer that follows the layer works per tensor, so the two commute:
:func:`shuffle_after_quantizers` moves each shuffle behind the QuantizeLinear / DequantizeLinear pair that reads
it, which leaves the pattern onnxruntime fuses into its integer convolution (dequantize, convolve, quantize),
and wraps the shuffle in a pair of its own on the same grid (exact: its values are on that grid already), the
QDQ form of a data-movement operator, which onnxruntime runs as a shuffle of integer codes so that the next
layer reads codes too.
"""

from __future__ import annotations

import math

import onnx
import torch
from onnx import helper

from lowbit.deploy.onnx_graph import readers, scalar_initializer
from lowbit.layers import QConvTranspose2d


def subpixel_plan(kernel: int, stride: int, padding: int, output_padding: int) -> tuple[int, int] | None:
    """``(padding, kernel)`` of the ordinary convolution that computes every output phase of a transposed
    convolution along one dimension, or None where the output is not ``stride`` times the input (no whole
    number of phases)."""
    if kernel + output_padding - 2 * padding != stride:
        return None
    # output t = stride * i + k - padding; phase r = t mod stride reads tap k = stride * (P - j) + r + padding
    # from input m + j - P of output position m: j - P spans the offsets -(k - r - padding) / stride that occur,
    # and a kernel centred on them (zero taps where one side reaches further) keeps the padding even
    first = math.ceil((-(stride - 1) - padding) / stride)
    last = (kernel - 1 - padding) // stride
    sub_padding = max(last, -first, 0)
    return sub_padding, 2 * sub_padding + 1


def _tap_map(kernel: int, stride: int, padding: int, sub_padding: int, sub_kernel: int) -> list[list[int | None]]:
    """For each phase r and sub-kernel position j, the transposed kernel's tap it reads (None: a zero tap)."""
    taps = []
    for r in range(stride):
        row = []
        for j in range(sub_kernel):
            k = stride * (sub_padding - j) + r + padding
            row.append(k if 0 <= k < kernel else None)
        taps.append(row)
    return taps


def subpixel_weight(weight: torch.Tensor, stride: int, padding: tuple[int, int],
                    plans: tuple[tuple[int, int], tuple[int, int]], zero: torch.Tensor) -> torch.Tensor:
    """A transposed convolution's weight (or integer codes), shaped ``(in, out, kh, kw)``, as the sub-pixel
    convolution's ``(out * stride**2, in, kh', kw')``, output channel ``c * stride**2 + rh * stride + rw``
    (the order of ``pixel_shuffle`` and ONNX's DepthToSpace in CRD mode). Zero taps hold ``zero[c]``, the
    output channel's zero point, which dequantizes to 0."""
    cin, cout, kh, kw = weight.shape
    (ph, kh2), (pw, kw2) = plans
    taps_h = _tap_map(kh, stride, padding[0], ph, kh2)
    taps_w = _tap_map(kw, stride, padding[1], pw, kw2)
    out = zero.to(weight.dtype).reshape(cout, 1, 1, 1, 1, 1).expand(cout, stride, stride, cin, kh2, kw2).clone()
    for rh in range(stride):
        for jh, th in enumerate(taps_h[rh]):
            for rw in range(stride):
                for jw, tw in enumerate(taps_w[rw]):
                    if th is not None and tw is not None:
                        out[:, rh, rw, :, jh, jw] = weight[:, :, th, tw].t()
    return out.reshape(cout * stride * stride, cin, kh2, kw2)


def subpixel_plans(layer: QConvTranspose2d) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The sub-pixel plans of both dimensions, where ``layer`` has one (same stride both ways, no groups, no
    dilation)."""
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    if sh != sw or sh < 2 or layer.groups != 1 or (dh, dw) != (1, 1):
        return None
    plans = tuple(subpixel_plan(k, sh, p, o) for k, p, o in zip(layer.kernel_size, layer.padding,
                                                                layer.output_padding))
    return None if None in plans else plans


# operators that act on each value alone (their other inputs, if any, are constants), through which a shuffle moves
ELEMENTWISE = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"})


def shuffle_after_quantizers(proto: onnx.ModelProto) -> int:
    """Move each DepthToSpace that feeds, through elementwise activations only, a per-tensor QuantizeLinear ->
    DequantizeLinear pair behind the pair, quantized again on the same grid (the same values: see the module's
    docstring). Returns how many were moved."""
    graph = proto.graph
    read_by = readers(graph)
    moved = 0
    for shuffle in [n for n in graph.node if n.op_type == "DepthToSpace"]:
        value, first = shuffle.output[0], None
        after = read_by.get(value, [])
        while len(after) == 1 and after[0].op_type in ELEMENTWISE and after[0].input[0] == value:
            first = first or after[0]
            value = after[0].output[0]
            after = read_by.get(value, [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or after[0].input[0] != value \
                or scalar_initializer(after[0].input[1], graph) is None:
            continue
        quantize = after[0]
        after = read_by.get(quantize.output[0], [])
        if len(after) != 1 or after[0].op_type != "DequantizeLinear":
            continue
        dequantize = after[0]
        (first or quantize).input[0] = shuffle.input[0]
        shuffled = dequantize.output[0]
        dequantize.output[0] = f"{shuffled}.phases"
        shuffle.input[0], shuffle.output[0] = dequantize.output[0], f"{shuffled}.shuffled"
        requantize = helper.make_node("QuantizeLinear", [shuffle.output[0], *quantize.input[1:]],
                                      [f"{shuffled}.codes"])
        dequantize_again = helper.make_node("DequantizeLinear", [requantize.output[0], *dequantize.input[1:]],
                                            [shuffled])
        graph.node.remove(shuffle)
        at = list(graph.node).index(dequantize) + 1
        for offset, node in enumerate((shuffle, requantize, dequantize_again)):
            graph.node.insert(at + offset, node)
        moved += 1
    return moved
