"""Deployable files from quantized models: ONNX in QDQ form, run by onnxruntime; formats listed in ``EXPORTERS``."""

from lowbit.deploy.exporters import EXPORTERS, Exporter, ExportReport, export_as
from lowbit.deploy.onnx_export import export, export_float

__all__ = ["EXPORTERS", "Exporter", "ExportReport", "export", "export_as", "export_float"]
