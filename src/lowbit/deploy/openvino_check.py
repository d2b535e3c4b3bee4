"""Running lowbit's ONNX files in OpenVINO, a second runtime that reads the QDQ form, to check that they agree
and see which layers it computes on integers. OpenVINO is an optional dependency (the test extra installs it)."""

from __future__ import annotations

import os
from typing import Any

from lowbit.errors import LowbitError

INTEGER_PRECISIONS = frozenset({"u8", "i8"})
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul")


def compile_openvino(path: str | os.PathLike, threads: int = 1) -> tuple[Any, list[str]]:
    """OpenVINO's CPU model for ``path`` (float parts in f32, so that it is compared with lowbit as exactly as
    onnxruntime is) and the runtime precision of each convolution and matmul it runs."""
    try:
        import openvino
    except ImportError:
        raise LowbitError("OpenVINO is not installed; install it with `pip install openvino`") from None
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    precisions = [op.get_rt_info()["runtimePrecision"].astype(str)
                  for op in compiled.get_runtime_model().get_ordered_ops()
                  if op.get_rt_info()["layerType"].astype(str) in COMPUTE_LAYERS]
    return compiled, precisions


def openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]
