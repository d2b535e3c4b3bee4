"""Quantized activations that reach a layer through data-movement operators, quantized again in front of it.

lowbit quantizes a layer's input where its traced graph computes it, which can lie before operators that only
move values: a vision transformer's class token taken out of the token sequence (Gather), the queries, keys
and values taken out of one projection (Reshape, Transpose, Gather) before the attention matmuls, a flatten. onnxruntime fuses a convolution or matmul into an integer kernel only when it reads a
DequantizeLinear directly, so such a layer ran in float. :func:`requantize_before_layers` adds a QuantizeLinear
/ DequantizeLinear pair on the same grid after the data movement: exact, since moving values keeps them on the
grid. onnxruntime then moves the integer codes themselves (its QDQ form of a data-movement operator) and runs
the layer on integers; other runtimes read the pair as the usual QDQ form.
"""

from __future__ import annotations

import onnx
from onnx import helper

from lowbit.deploy.onnx_graph import is_scalar_initializer, producers, readers

DATA_MOVEMENT = frozenset({"Gather", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
                           "DepthToSpace", "SpaceToDepth"})
# layers onnxruntime runs on integers when their (first) input comes from a DequantizeLinear
LAYERS = frozenset({"Conv", "Gemm", "MatMul"})


def _reads_as_data(reader: onnx.NodeProto, value: str) -> bool:
    """Whether a layer reads ``value`` as a data input (a matmul either side, a convolution or Gemm its first)."""
    return reader.op_type in LAYERS and value in reader.input[:1 + (reader.op_type == "MatMul")]


def requantize_before_layers(proto: onnx.ModelProto) -> int:
    """Quantize again, on the grid they were dequantized from, the activations that data-movement operators
    carry from a per-tensor DequantizeLinear to the data inputs of convolutions and matmuls (the queries, keys
    and values split out of one projection included). Returns how many pairs were added."""
    graph = proto.graph
    written_by, read_by = producers(graph), readers(graph)
    added = 0
    for dequantize in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        quantize = written_by.get(dequantize.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" \
                or not is_scalar_initializer(dequantize.input[1], graph):
            continue
        moved = [out for r in read_by.get(dequantize.output[0], []) if r.op_type in DATA_MOVEMENT
                 and r.input[0] == dequantize.output[0] for out in r.output]
        while moved:
            value = moved.pop()
            after = read_by.get(value, [])
            moved += [out for r in after if r.op_type in DATA_MOVEMENT and r.input[0] == value for out in r.output]
            layers = [r for r in after if _reads_as_data(r, value)]
            if not layers:
                continue
            codes, requantized = f"{value}.codes", f"{value}.requantized"
            pair = [helper.make_node("QuantizeLinear", [value, *quantize.input[1:]], [codes]),
                    helper.make_node("DequantizeLinear", [codes, *dequantize.input[1:]], [requantized])]
            for reader in layers:
                reader.input[:] = [requantized if name == value else name for name in reader.input]
            at = list(graph.node).index(written_by[value]) + 1
            for offset, node in enumerate(pair):
                graph.node.insert(at + offset, node)
            added += 1
    return added
