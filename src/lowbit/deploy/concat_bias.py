"""A convolution's bias written as a separate Add where OpenVINO would miscompute it.

OpenVINO's CPU plugin (checked with 2026.4.1) adds the first channel's bias to every channel of a convolution
whose output reaches a Concat through reshapes and transposes only, as a vision transformer's patch embedding
does before its class token is prepended: the file is right (onnxruntime computes it as lowbit does), the
result is not. With the bias added after the convolution, OpenVINO computes the same values, still on
integers. The cost falls on onnxruntime, which then runs that one convolution in float (its integer kernel
needs the quantizer right after the convolution); a patch embedding is a small share of a transformer's work.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.deploy.onnx_graph import producers, readers

# operators that move a tensor's values without mixing its channels, through which the pattern is followed
SHAPE_ONLY = frozenset({"QuantizeLinear", "DequantizeLinear", "Reshape", "Transpose", "Flatten", "Squeeze",
                        "Unsqueeze"})


def _reaches_concat(value: str, consumers: dict[str, list[onnx.NodeProto]]) -> bool:
    """Whether ``value`` flows, one consumer at a time and through shape-only operators of which at least one
    changes the shape, into a Concat (a Concat reading the quantized output directly is computed correctly)."""
    reshaped = False
    for _ in range(len(SHAPE_ONLY) + 8):
        after = consumers.get(value, [])
        if len(after) != 1:
            return False
        reader = after[0]
        if reader.op_type == "Concat":
            return reshaped
        if reader.op_type not in SHAPE_ONLY or reader.input[0] != value:
            return False
        reshaped = reshaped or reader.op_type not in ("QuantizeLinear", "DequantizeLinear")
        value = reader.output[0]
    return False


def _weight_rank(weight: str, graph: onnx.GraphProto) -> int | None:
    """The rank of a convolution's weight: that of the initializer it is dequantized (and cast) from."""
    written_by = producers(graph)
    initializers = {init.name: init for init in graph.initializer}
    while weight not in initializers:
        node = written_by.get(weight)
        if node is None or node.op_type not in ("DequantizeLinear", "Cast"):
            return None
        weight = node.input[0]
    return len(initializers[weight].dims)


def split_concat_biases(proto: onnx.ModelProto) -> int:
    """Move the bias of each convolution whose output reaches a Concat through shape-only operators into an
    Add after it (see the module's docstring). Returns how many convolutions were rewritten."""
    graph = proto.graph
    consumers = readers(graph)
    rewritten = 0
    for index in reversed(range(len(graph.node))):
        conv = graph.node[index]
        if conv.op_type != "Conv" or len(conv.input) < 3 or not conv.input[2]:
            continue
        if not _reaches_concat(conv.output[0], consumers):
            continue
        rank = _weight_rank(conv.input[1], graph)
        if rank is None:
            continue
        bias, output = conv.input[2], conv.output[0]
        shape = numpy_helper.from_array(np.array([-1] + [1] * (rank - 2), np.int64), f"{output}.bias_shape")
        graph.initializer.append(shape)
        del conv.input[2]
        conv.output[0] = f"{output}.unbiased"
        graph.node.insert(index + 1, helper.make_node("Reshape", [bias, shape.name], [f"{output}.bias"]))
        graph.node.insert(index + 2, helper.make_node("Add", [conv.output[0], f"{output}.bias"], [output]))
        rewritten += 1
    return rewritten
