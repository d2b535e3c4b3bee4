"""Who reads and who writes each value of an ONNX graph: what the export's graph rewrites walk."""

from __future__ import annotations

import onnx
from onnx import numpy_helper


def readers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Value name -> the nodes that read it, in graph order."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Value name -> the node that writes it (initializers and graph inputs have none)."""
    return {name: node for node in graph.node for name in node.output}


def is_scalar_initializer(name: str, graph: onnx.GraphProto) -> bool:
    """Whether ``name`` is an initializer holding one value (a per-tensor scale)."""
    found = next((init for init in graph.initializer if init.name == name), None)
    return found is not None and numpy_helper.to_array(found).size == 1
