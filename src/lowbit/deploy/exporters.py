"""The export formats: one registry entry per kind of file a runtime executes, listed by ``lowbit export --format``.

An entry names its file suffix, what it is for, and the function that writes it. The ONNX translation pulls in
torch.onnx and onnxscript (seconds to import), so each entry imports its writer only when an export runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lowbit.deploy.export_report import ExportReport
from lowbit.errors import LowbitError
from lowbit.registry import Registry


# (frozen quantized model, output path, example input batch, format options) -> report
Writer = Callable[[nn.Module, Path, torch.Tensor, dict[str, Any]], ExportReport]


@dataclass(frozen=True)
class Exporter:
    """One export format."""

    suffix: str
    summary: str
    write: Writer
    options: tuple[str, ...] = ()  # the keyword options the writer understands


EXPORTERS: Registry[Exporter] = Registry("export format")


def export_as(fmt: str, qmodel: nn.Module, path: str | os.PathLike, example_input: torch.Tensor,
              **options: Any) -> ExportReport:
    """Write ``qmodel`` to ``path`` in the registered format ``fmt``; an option the format lacks is an error."""
    exporter = EXPORTERS.get(fmt)
    unknown = sorted(set(options) - set(exporter.options))
    if unknown:
        raise LowbitError(f"export format {fmt!r} has no option {', '.join(unknown)}; it takes: "
                          f"{', '.join(exporter.options) or 'none'}")
    return exporter.write(qmodel, Path(path), example_input, options)


def _onnx_qdq(qmodel: nn.Module, path: Path, example: torch.Tensor, options: dict[str, Any]) -> ExportReport:
    from lowbit.deploy.onnx_export import export

    return export(qmodel, path, example, **options)


EXPORTERS.add("onnx-qdq", Exporter(
    ".onnx", "ONNX opset 21 in QDQ form (onnxruntime, TensorRT, OpenVINO): integer kernels where the runtime has "
    "them, 4-bit weights stored as INT4", _onnx_qdq, options=("signed_weights", "metadata")))
