"""Deployable files from quantized models: ONNX in QDQ form, run by onnxruntime."""

from lowbit.deploy.onnx_export import ExportReport, export, export_float

__all__ = ["export", "export_float", "ExportReport"]
