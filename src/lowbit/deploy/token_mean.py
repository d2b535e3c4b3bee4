"""A mean over the tokens of a quantized sequence, written as a 4-d spatial mean that OpenVINO computes right.

OpenVINO's CPU plugin (checked with 2026.4.1) returns wrong values for ``ReduceMean`` or ``ReduceSum`` over
axis 1 of a 3-d tensor that comes straight from a DequantizeLinear (the token mean that pools a transformer's
quantized outputs): wrong by as much as the result itself, with any zero point and sequence length; 4-d means
over the spatial axes, the pooling of every CNN, are right. The file is right (onnxruntime computes it as
lowbit does). :func:`reduce_tokens_in_4d` writes each such reduction as a transpose to (batch, channels,
tokens), a trailing axis of one, and the same reduction over the last two axes: the same values, which
OpenVINO computes correctly too.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.deploy.onnx_graph import initializer_array, producers

REDUCTIONS = frozenset({"ReduceMean", "ReduceSum"})


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Value name -> rank, where shape inference knows it."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}


def _axes(node: onnx.NodeProto, graph: onnx.GraphProto) -> list[int] | None:
    """The axes a reduction reads from its initializer input (None when they are not a constant)."""
    value = initializer_array(node.input[1], graph) if len(node.input) > 1 and node.input[1] else None
    return None if value is None else [int(a) for a in value.reshape(-1)]


def reduce_tokens_in_4d(proto: onnx.ModelProto) -> int:
    """Rewrite every ReduceMean/ReduceSum over axis 1 (alone) of a dequantized 3-d tensor as described above.
    Returns how many were rewritten."""
    graph = proto.graph
    written_by, ranks = producers(graph), None
    rewritten = 0
    for node in [n for n in graph.node if n.op_type in REDUCTIONS]:
        source = written_by.get(node.input[0])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        ranks = ranks if ranks is not None else _ranks(proto)
        if ranks.get(node.input[0]) != 3 or [a % 3 for a in _axes(node, graph) or []] != [1]:
            continue
        keep = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "keepdims"), 1)
        name = node.output[0]
        graph.initializer.extend([numpy_helper.from_array(np.array([3], np.int64), f"{name}.trailing"),
                                  numpy_helper.from_array(np.array([2, 3], np.int64), f"{name}.tokens")])
        steps = [helper.make_node("Transpose", [node.input[0]], [f"{name}.channels_first"], perm=[0, 2, 1]),
                 helper.make_node("Unsqueeze", [f"{name}.channels_first", f"{name}.trailing"], [f"{name}.4d"]),
                 helper.make_node(node.op_type, [f"{name}.4d", f"{name}.tokens"],
                                  [f"{name}.pooled" if keep else name], keepdims=0)]
        if keep:
            graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{name}.kept"))
            steps.append(helper.make_node("Unsqueeze", [f"{name}.pooled", f"{name}.kept"], [name]))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, step in enumerate(steps):
            graph.node.insert(at + offset, step)
        rewritten += 1
    return rewritten
