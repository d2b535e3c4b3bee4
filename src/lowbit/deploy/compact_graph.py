"""What the ONNX exporter writes that no runtime reads, left out of lowbit's files.

In a small 4-bit model these records weigh as much as the weights: the exporter's debugging records, repeated
default attributes, and long generated names written once per use. Runtimes infer shapes again and fill
defaults from each operator's schema; names of values that only link two nodes carry nothing a reader needs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.defs
from onnx import helper

TORCH_EXPORT_RECORDS = "pkg.torch."  # graph properties torch.export writes about the program it traced


def drop_debug_records(proto: onnx.ModelProto) -> None:
    """Remove the exporter's debugging records: per-node Python stack traces and module paths, the inferred
    shape of every intermediate tensor and torch.export's description of the traced program (its buffer names
    and shape constraints, kept in the graph's properties). In a small model they weigh more than the 4-bit
    weights; runtimes infer shapes again when they load a model, and none reads the other two."""
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    kept = [p for p in proto.graph.metadata_props if not p.key.startswith(TORCH_EXPORT_RECORDS)]
    del proto.graph.metadata_props[:]
    proto.graph.metadata_props.extend(kept)


def _has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node holds a subgraph, which reads its outer graph's values by name."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)


def shorten_names(graph: onnx.GraphProto) -> None:
    """Name the values that only link two nodes by a short counter, and leave node names out (ONNX makes them
    optional): the exporter's names (``quantize_dequantize_8``, ``node_QuantizeLinear_27``) say nothing a
    reader of the graph needs, and each is written once per use, which in a small 4-bit model weighs several
    percent of the file. Initializers (the weights' and grids' names) and the graph's inputs and outputs keep
    theirs."""
    if _has_subgraphs(graph):
        return  # a subgraph reads its outer graph's values by name
    kept = {init.name for init in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    short: dict[str, str] = {}
    counter = 0
    for node in graph.node:
        for name in node.output:
            if name and name not in kept and name not in short:
                while (candidate := np.base_repr(counter, 36).lower()) in kept:
                    counter += 1
                short[name] = candidate
                counter += 1
    for node in graph.node:
        node.name = ""
        node.input[:] = [short.get(name, name) for name in node.input]
        node.output[:] = [short.get(name, name) for name in node.output]


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove the initializers no node reads (a rewritten node's constants, such as a reduction's axes): each
    costs the file its bytes, and onnxruntime warns about it every time a session loads the model. Returns how
    many were removed. (onnx_ir's RemoveUnusedNodesPass does this on its own graph type; the file is a
    ModelProto here, and a round trip through onnx_ir for this alone would rewrite everything else too.)"""
    if _has_subgraphs(graph):
        return 0  # a subgraph reads its outer graph's values by name
    read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
    kept = [init for init in graph.initializer if init.name in read]
    removed = len(graph.initializer) - len(kept)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return removed


def _is_default(attribute: onnx.AttributeProto, schema: onnx.defs.OpSchema) -> bool:
    known = schema.attributes.get(attribute.name)
    default = known.default_value if known is not None else None
    if default is None or default.type == onnx.AttributeProto.UNDEFINED:
        return False
    return helper.get_attribute_value(default) == helper.get_attribute_value(attribute)


def drop_default_attributes(proto: onnx.ModelProto) -> int:
    """Remove every node attribute that repeats its operator's default (the exporter writes them all out:
    ``block_size=0`` and ``saturate=1`` on each Q/DQ node, ``group=1`` on each convolution). Every reader
    fills defaults in from the operator's schema; in a small 4-bit model these copies weigh several percent
    of the file. onnx ships the opposite pass only (onnx_ir's AddDefaultAttributesPass). Returns how many
    were removed."""
    opset = {entry.domain: entry.version for entry in proto.opset_import}
    removed = 0
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            schema = onnx.defs.get_schema(node.op_type, opset[domain], domain)
        except (KeyError, onnx.defs.SchemaError):  # a custom or function op: its attributes are left as written
            continue
        kept = [a for a in node.attribute if not _is_default(a, schema)]
        removed += len(node.attribute) - len(kept)
        del node.attribute[:]
        node.attribute.extend(kept)
    return removed
