"""Quantized activations that reach a layer through data-movement operators, quantized again in front of it.

lowbit quantizes a layer's input where its traced graph computes it, which can lie before operators that only
move values: a vision transformer's class token taken out of the token sequence (Gather), the queries, keys
and values taken out of one projection (Reshape, Transpose, Gather) before the attention matmuls, a flatten.
onnxruntime fuses a convolution or matmul into an integer kernel only when it reads a DequantizeLinear
directly, so such a layer ran in float. :func:`requantize_before_layers` adds a QuantizeLinear
/ DequantizeLinear pair on the same grid after the data movement: exact, since moving values keeps them on the
grid. A product with a positive constant on the way (the exporter writes the ``1 / sqrt(d)`` of
``scaled_dot_product_attention`` as such a product on the queries and keys) scales the grid by that constant,
which keeps the values on it. onnxruntime then moves the integer codes themselves (its QDQ form of a
data-movement operator) and runs the layer on integers; other runtimes read the pair as the usual QDQ form.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.deploy.onnx_graph import producers, readers, scalar_initializer

DATA_MOVEMENT = frozenset({"Gather", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
                           "DepthToSpace", "SpaceToDepth"})
# layers onnxruntime runs on integers when their (first) input comes from a DequantizeLinear
LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


def _reads_as_data(reader: onnx.NodeProto, value: str) -> bool:
    """Whether a layer reads ``value`` as a data input (a matmul either side, a convolution or Gemm its first)."""
    return reader.op_type in LAYERS and value in reader.input[:1 + (reader.op_type == "MatMul")]


def _carried(value: str, factor: float, after: list[onnx.NodeProto],
             graph: onnx.GraphProto) -> list[tuple[str, float]]:
    """The values that ``after`` (the readers of ``value``) carry it on to, each with the factor its grid's scale
    has grown by: data movement keeps the scale, a product with (or quotient by) a positive constant scales it
    (the exporter writes attention's ``1 / sqrt(d)`` as such a product on the queries and keys)."""
    carried = []
    for reader in after:
        if reader.op_type in DATA_MOVEMENT and reader.input[0] == value:
            carried += [(out, factor) for out in reader.output]
        elif reader.op_type in ("Mul", "Div") and value in reader.input[:2]:
            other = reader.input[1] if reader.input[0] == value else reader.input[0]
            constant = scalar_initializer(other, graph)
            if constant is not None and math.isfinite(constant) and constant > 0 \
                    and (reader.op_type == "Mul" or reader.input[0] == value):
                carried.append((reader.output[0], factor * constant if reader.op_type == "Mul" else factor / constant))
    return carried


def requantize_before_layers(proto: onnx.ModelProto) -> int:
    """Quantize again, on the grid they were dequantized from (scaled where a positive constant multiplied them),
    the activations that data movement carries from a per-tensor DequantizeLinear to the data inputs of
    convolutions and matmuls (the queries, keys and values split out of one projection included). Returns how
    many pairs were added."""
    graph = proto.graph
    written_by, read_by = producers(graph), readers(graph)
    added = 0
    for dequantize in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        quantize = written_by.get(dequantize.input[0])
        base = scalar_initializer(dequantize.input[1], graph)
        if quantize is None or quantize.op_type != "QuantizeLinear" or base is None:
            continue
        moved = _carried(dequantize.output[0], 1.0, read_by.get(dequantize.output[0], []), graph)
        while moved:
            value, factor = moved.pop()
            after = read_by.get(value, [])
            moved += _carried(value, factor, after, graph)
            layers = [r for r in after if _reads_as_data(r, value)]
            if not layers:
                continue
            scale = dequantize.input[1]
            if factor != 1.0:
                scaled = numpy_helper.from_array(np.array(base * factor, np.float32), f"{value}.scale")
                graph.initializer.append(scaled)
                scale = scaled.name
            codes, requantized = f"{value}.codes", f"{value}.requantized"
            pair = [helper.make_node("QuantizeLinear", [value, scale, *quantize.input[2:]], [codes]),
                    helper.make_node("DequantizeLinear", [codes, scale, *dequantize.input[2:]], [requantized])]
            for reader in layers:
                reader.input[:] = [requantized if name == value else name for name in reader.input]
            at = list(graph.node).index(written_by[value]) + 1
            for offset, node in enumerate(pair):
                graph.node.insert(at + offset, node)
            added += 1
    return added
