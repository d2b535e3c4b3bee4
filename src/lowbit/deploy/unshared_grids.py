"""Each quantized weight's codes and zero points in initializers of its own.

onnxscript's optimizer writes equal constants once, so the all-zero per-channel zero points of layers with the
same number of channels become one initializer read by several weights' DequantizeLinear nodes. On x86 CPUs
without VNNI, onnxruntime's integer kernels add int8 x uint8 products in pairs with 16-bit saturation; its
session option ``session.x64quantprecision`` keeps them exact by converting each int8 weight and its zero point
to uint8 when the session starts, naming the converted tensors after the initializers they come from. A zero
point read by two weights is converted twice under one name, and the session fails to load. Here every
weight's DequantizeLinear reads its own copy (a few bytes per layer)."""

from __future__ import annotations

import onnx

from lowbit.deploy.onnx_graph import producers

SIGNED_8_BIT = onnx.TensorProto.INT8
CODES, ZERO_POINT = 0, 2  # DequantizeLinear's inputs that the conversion rewrites


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers, and the outputs of Casts that read one (how 4-bit codes reach their DequantizeLinear)."""
    names = {init.name for init in graph.initializer}
    return names | {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] in names}


def _free_name(base: str, taken: set[str]) -> str:
    count = 1
    while f"{base}.{count}" in taken:
        count += 1
    return f"{base}.{count}"


def unshare_weight_grids(graph: onnx.GraphProto) -> int:
    """Give every constant (weight) DequantizeLinear its own copy of an int8 codes or zero-point initializer that
    an earlier one reads too. Returns how many copies were added."""
    initializers = {init.name: init for init in graph.initializer}
    constants = _constant_names(graph)
    taken = constants | set(producers(graph))
    read: set[str] = set()
    copies = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[CODES] not in constants:
            continue
        for index in (CODES, ZERO_POINT):
            name = node.input[index] if index < len(node.input) else ""
            init = initializers.get(name)
            if init is None or init.data_type != SIGNED_8_BIT:
                continue
            if name not in read:
                read.add(name)
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(init)
            copy.name = _free_name(name, taken)
            taken.add(copy.name)
            graph.initializer.append(copy)
            node.input[index] = copy.name
            copies += 1
    return copies
