"""Deployable files from quantized models: ONNX in QDQ form, run by onnxruntime; formats listed in ``EXPORTERS``.

The ONNX translation pulls in torch.onnx and onnxscript (seconds to import), so ``export`` and ``export_float``
are imported on first use: the CLI lists the formats without paying for them.
"""

from typing import Any

from lowbit.deploy.export_report import ExportReport
from lowbit.deploy.exporters import EXPORTERS, Exporter, export_as

__all__ = ["EXPORTERS", "Exporter", "ExportReport", "export", "export_as", "export_float"]


def __getattr__(name: str) -> Any:
    if name in ("export", "export_float"):
        from lowbit.deploy import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'lowbit.deploy' has no attribute {name!r}")
