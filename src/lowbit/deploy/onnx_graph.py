"""Who reads and who writes each value of an ONNX graph: what the export's graph rewrites walk."""

from __future__ import annotations

import numpy as np
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


def initializer_array(name: str, graph: onnx.GraphProto) -> np.ndarray | None:
    """The value of the initializer ``name``, or None where ``name`` is not an initializer."""
    found = next((init for init in graph.initializer if init.name == name), None)
    return None if found is None else numpy_helper.to_array(found)


def scalar_initializer(name: str, graph: onnx.GraphProto) -> float | None:
    """The value of ``name`` where it is an initializer holding one value (a per-tensor scale), else None."""
    value = initializer_array(name, graph)
    return float(value.reshape(())) if value is not None and value.size == 1 else None
