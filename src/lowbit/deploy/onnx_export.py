"""``lowbit.deploy``: a frozen quantized model to an ONNX file in QDQ form.

The graph comes from PyTorch's own exporter (torch.export, then onnxscript's translation and optimizer), with
lowbit's quantizers translated by :mod:`lowbit.deploy.onnx_ops` and attention on inputs of any rank by
:mod:`lowbit.deploy.attention_onnx`. Changes made to the exporter's output: its debugging records, repeated
default attributes, generated names and constants no node reads are left out (:mod:`lowbit.deploy.compact_graph`); weight codes of 4 bits
and below are stored as
ONNX ``INT4``/``UINT4`` initializers (torch has no 4-bit tensors), each read through a ``Cast`` to 8 bits, which
onnxruntime folds when the session starts so that its integer convolution and matmul kernels take these layers
too; weight scales that are float16 numbers (4-bit grids') and float16 weights, whose cast the exporter folds
into float32, are stored as float16 the same way;
a few convolutions' biases are written as an Add for OpenVINO (:mod:`lowbit.deploy.concat_bias`); and the
pixel shuffles of transposed convolutions exported in sub-pixel form move behind the quantizer that follows
them (:mod:`lowbit.deploy.subpixel`); activations that reach a layer through data-movement operators are
quantized again in front of it (:mod:`lowbit.deploy.requantize`); means over the tokens of a quantized sequence
are written in a 4-d form for OpenVINO (:mod:`lowbit.deploy.token_mean`); and each weight reads zero points
of its own (:mod:`lowbit.deploy.unshared_grids`)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from lowbit.codec.task import is_codec
from lowbit.deploy.attention_onnx import ATTENTION_TRANSLATIONS
from lowbit.deploy.compact_graph import (drop_debug_records, drop_default_attributes, drop_unused_initializers,
                                         shorten_names)
from lowbit.deploy.concat_bias import split_concat_biases
from lowbit.deploy.export_errors import explain_export_failure
from lowbit.deploy.export_report import ExportReport, float_output_notes
from lowbit.deploy.exported_weight import DequantizedWeight
from lowbit.deploy.onnx_modules import exportable
from lowbit.deploy.onnx_ops import TRANSLATIONS
from lowbit.deploy.requantize import requantize_before_layers
from lowbit.deploy.subpixel import shuffle_after_quantizers
from lowbit.deploy.token_mean import reduce_tokens_in_4d
from lowbit.deploy.unshared_grids import unshare_weight_grids
from lowbit.errors import LowbitError, first_line
from lowbit.io.atomic import atomic_path

OPSET = 21  # the first opset with 4-bit integer types and 16-bit QuantizeLinear
INPUT_NAME, OUTPUT_NAME = "input", "output"
FOUR_BIT = {np.dtype(np.int8): ml_dtypes.int4, np.dtype(np.uint8): ml_dtypes.uint4}


def _narrow_storage(model: nn.Module) -> tuple[set[str], list[np.ndarray], set[str]]:
    """Names (as the exporter writes initializers) of the weight codes that fit in 4 bits, the values of the
    float16 weights (the exporter folds their cast to float32, so they are found again by value), and the names
    of the per-channel weight scales (float16 numbers where freezing made them so, see
    :meth:`lowbit.layers.QuantLayer.freeze`)."""
    names, halves, scales = set(), [], set()
    for name, m in model.named_modules():
        if not isinstance(m, DequantizedWeight):
            continue
        if m.float16:
            halves.append(m.codes.numpy())
            continue
        if m.bits[1] - m.bits[0] <= 15:
            names.add(f"{name}.codes")
        if m.scale.numel() > 1:
            scales.add(f"{name}.scale")
    return names, halves, scales


def _store_narrow(graph: onnx.GraphProto, init: onnx.TensorProto, narrow: np.ndarray, suffix: str) -> None:
    """Replace an initializer by its narrow-typed values, read through a Cast back to its own type."""
    wide_type = init.data_type
    wide = init.name
    init.CopyFrom(numpy_helper.from_array(narrow, f"{wide}.{suffix}"))
    graph.node.insert(0, helper.make_node("Cast", [f"{wide}.{suffix}"], [wide], name=f"{wide}.cast", to=wide_type))


def store_narrow(proto: onnx.ModelProto, four_bit: set[str], halves: list[np.ndarray],
                 scales: set[str] = frozenset()) -> int:
    """Store the named 8-bit codes as INT4/UINT4 (two codes a byte), the named float32 scales as float16 where
    every value is a float16 number, and the float32 initializers equal to a float16 weight as float16. Returns
    how many initializers were narrowed."""
    graph = proto.graph
    done = 0
    for init in list(graph.initializer):
        if init.name in four_bit and init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            values = numpy_helper.to_array(init)
            _store_narrow(graph, init, values.astype(FOUR_BIT[values.dtype]), "int4")
            done += 1
        elif init.name in scales and init.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            if np.array_equal(values.astype(np.float16).astype(np.float32), values):
                _store_narrow(graph, init, values.astype(np.float16), "fp16")
                done += 1
        elif init.data_type == onnx.TensorProto.FLOAT and halves:
            dims = tuple(init.dims)
            values = None
            for i, half in enumerate(halves):
                if half.shape == dims:
                    values = numpy_helper.to_array(init) if values is None else values
                    if np.array_equal(values, half.astype(np.float32)):
                        _store_narrow(graph, init, halves.pop(i), "fp16")
                        done += 1
                        break
    return done


def _dynamic_dims(spatial_multiple: int | None) -> dict[int, Any]:
    """The input dimensions left free in the file: the batch, and with ``spatial_multiple`` the height and width
    (any multiple of it: an image codec's transforms take images of any size, padded to their stride)."""
    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1)}
    if spatial_multiple is not None:
        height, width = torch.export.Dim("height", min=1), torch.export.Dim("width", min=1)
        dims.update({2: height, 3: width} if spatial_multiple == 1 else
                    {2: spatial_multiple * height, 3: spatial_multiple * width})
    return dims


def _torch_export(model: nn.Module, example: torch.Tensor, spatial_multiple: int | None = None) -> onnx.ModelProto:
    sink = io.StringIO()  # the exporter prints progress, and on failure whole graphs, meant for its developers
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=(_dynamic_dims(spatial_multiple),),
                                        verbose=False,
                                        custom_translation_table={**TRANSLATIONS, **ATTENTION_TRANSLATIONS})
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs the first line
        raise LowbitError(f"the ONNX exporter could not export this model: {explain_export_failure(exc)}") from None
    proto = program.model_proto
    drop_debug_records(proto)
    drop_default_attributes(proto)
    return proto


def export(qmodel: nn.Module, path: str | os.PathLike, example_input: torch.Tensor, *,
           signed_weights: bool = True, metadata: dict[str, str] | None = None,
           spatial_multiple: int | None = None) -> ExportReport:
    """Write the frozen quantized ``qmodel`` to ``path`` as ONNX (opset 21, QDQ form) and say what runs in float.

    ``example_input`` is one batch of model inputs (its batch size is not fixed in the file; with
    ``spatial_multiple``, neither are its height and width, which may then be any multiple of it). The file needs
    only onnxruntime (or any runtime that reads QDQ ONNX) to run. Weight codes are signed (int8, INT4), as
    TensorRT requires, OpenVINO needs to run the layers on integers, and onnxruntime's fastest kernels take;
    ``signed_weights=False`` stores 8-bit codes as uint8 (offset by 128, the same values), which onnxruntime
    computes exactly on x86 CPUs without VNNI, where its int8-weight kernel can saturate (see
    :func:`lowbit.deploy.exported_weight.store_unsigned`). ``metadata`` is written into the file's metadata
    properties.
    """
    if not isinstance(example_input, torch.Tensor) or not example_input.is_floating_point():
        raise LowbitError("example_input must be a float tensor shaped like one batch of model inputs")
    if is_codec(qmodel):
        raise LowbitError("an image codec exports its transforms, one file each, while its entropy models stay in "
                          "lowbit: lowbit.codec.onnx_transforms.export_transforms, or `lowbit export FILE.lowbit`")
    model, notes = exportable(qmodel, signed_weights)
    example = example_input.detach().float().cpu()
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        raise LowbitError(f"the model does not run on an input of shape {tuple(example.shape)} ({first_line(exc)}); "
                          "pass an example input of the shape it was quantized for") from None
    proto = _torch_export(model, example, spatial_multiple)
    packed = store_narrow(proto, *_narrow_storage(model))
    if split_concat_biases(proto):
        notes.add("a convolution whose output reaches a Concat through reshapes (a patch embedding before a class "
                  "token): its bias is an Add after it, which OpenVINO needs; onnxruntime runs it in float")
    shuffle_after_quantizers(proto)
    requantize_before_layers(proto)
    reduce_tokens_in_4d(proto)
    drop_unused_initializers(proto.graph)
    unshare_weight_grids(proto.graph)
    for line in float_output_notes(proto):
        notes.add(line)
    shorten_names(proto.graph)
    onnx.helper.set_model_props(proto, {"producer": "lowbit", **(metadata or {})})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return ExportReport(path, path.stat().st_size, packed, notes.float_compute)


def export_float(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """The float model as ONNX (the baseline for size and speed, and the input of onnxruntime's quantizer)."""
    proto = _torch_export(model.cpu().eval(), example_input.detach().float().cpu())
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


__all__ = ["export", "export_float", "ExportReport", "OPSET"]
