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


def scalar_initializer(name: str, graph: onnx.GraphProto) -> float | None:
    """The value of ``name`` where it is an initializer holding one value (a per-tensor scale), else None."""
    found = next((init for init in graph.initializer if init.name == name), None)
    if found is None:
        return None
    value = numpy_helper.to_array(found)
    return float(value.reshape(())) if value.size == 1 else None
