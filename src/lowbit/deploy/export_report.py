"""``ExportReport``: what an exporter wrote, and what the runtime will compute in float rather than on integers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from lowbit.deploy.onnx_graph import readers

# onnxruntime's integer convolution has a quantized output; its integer matmuls (MatMulIntegerToFloat, QGemm)
# also give float outputs, so only convolutions depend on what follows them
LAYERS = ("Conv", "ConvTranspose")
# what onnxruntime folds into an integer kernel between the layer and the QuantizeLinear of its output
FOLDED = ("Relu", "Clip")


@dataclass
class ExportReport:
    """The file written, its size, how many initializers were stored narrower than the exporter wrote them, and
    one line per part of the model that runs in float."""

    path: Path
    bytes: int
    narrowed_initializers: int
    float_compute: list[str] = field(default_factory=list)


def float_output_notes(proto: onnx.ModelProto) -> list[str]:
    """Why convolutions whose inputs are quantized still compute in float: onnxruntime runs a convolution on
    integers only when its output is quantized right after it (through a ReLU or Clip at most), so one whose
    output first passes another operator (a LeakyReLU, a square root), or leaves the network unquantized, keeps a
    float kernel. One line per such operator, with the count."""
    graph = proto.graph
    read = readers(graph)
    outputs = {o.name for o in graph.output}
    after: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type not in LAYERS:
            continue
        value, next_ops = node.output[0], [r.op_type for r in read.get(node.output[0], [])]
        if len(next_ops) == 1 and next_ops[0] in FOLDED:
            value = read[value][0].output[0]
            next_ops = [r.op_type for r in read.get(value, [])]
        if next_ops and all(op == "QuantizeLinear" for op in next_ops):
            continue
        blocking = sorted({op for op in next_ops if op != "QuantizeLinear"})
        after[" / ".join(blocking) if blocking else "the network's output" if value in outputs else "nothing"] += 1
    return [f"{count} convolution{'s' if count > 1 else ''}: the output goes to {what} before any activation grid "
            "(onnxruntime runs a convolution on integers only when its output is quantized right after it, through "
            "ReLU or Clip at most)" for what, count in sorted(after.items())]
