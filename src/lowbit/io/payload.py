"""The tensors of a ``.lowbit`` file checked against its header and its architecture, before and after reading.

Before any tensor is read, :func:`expected_layout` says which tensors a prepared model needs, with their dtypes
and shapes (packed byte counts follow from the bits the header claims), and :func:`check_layout` compares that
with the file's index, so an edited width or class count is refused without allocating what it asks for.
After reading, :func:`file_digest` detects damaged or edited bytes anywhere in the header or the payload, and
:func:`check_values` refuses grids no quantizer could have produced (non-finite or non-positive scales, codes
and zero points outside their range), so a file either loads into the model that was saved or is refused.
The digest guards against accidental damage and careless edits, not against a forger who recomputes it.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.graph import activation_quantizers
from lowbit.io.pack import packed_nbytes
from lowbit.layers import FLOAT16_SCALE_BITS, QuantLayer, quant_layers
from lowbit.quantizer import Quantizer
from lowbit.spec import QuantSpec

ACT_SCALES, ACT_ZERO_POINTS = "activations.scale", "activations.zero_point"
# safetensors' dtype names, as its index reports them
DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
Layout = dict[str, tuple[str, tuple[int, ...]]]
# the expected dtype of a plain float32 state entry: stored as F16 when every value is exact in it
FLOAT_STATE = "F32/F16"
# the scales of a weight grid of at most 4 bits: float16 numbers once frozen (see lowbit.layers.QuantLayer.freeze),
# so stored as F16; F32 where a scale lies outside float16's normal range (sizes budgeted from the layout count F16)
WEIGHT_SCALE = "F16/F32"


class PayloadError(LowbitError):
    """The tensors of a file do not match its header or its architecture, or hold impossible values."""


def weight_channels(layer: QuantLayer) -> int:
    """How many scales the layer's weight grid has (one per output channel, or one)."""
    spec, shape = layer.weight_quant.spec, layer.weight.shape
    return shape[spec.channel_axis(len(shape))] if spec.granularity == "per_channel" else 1


ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def weight_tensors(name: str, spec: QuantSpec, shape: tuple[int, ...], channels: int) -> Layout:
    """The tensors a weight of ``shape`` on ``spec``'s grid (``channels`` scales) is stored as: the one
    statement of the file's weight layout, which the loader checks and the size budget counts."""
    if spec.is_fp16:
        return {f"{name}.qweight": ("F16", shape)}
    bits = int(spec.bits)
    out: Layout = {f"{name}.scale": (WEIGHT_SCALE if bits <= FLOAT16_SCALE_BITS else FLOAT_STATE, (channels,))}
    if bits <= 8:
        out[f"{name}.qweight"] = ("U8", (packed_nbytes(math.prod(shape), bits),))
        if not spec.symmetric:
            out[f"{name}.zero_point"] = ("U8", (packed_nbytes(channels, bits),))
    else:
        out[f"{name}.qweight"] = ("I16", shape)
        if not spec.symmetric:
            out[f"{name}.zero_point"] = ("I16", (channels,))
    return out


def layout_nbytes(layout: Layout) -> int:
    """Bytes the tensors of ``layout`` take in the file, counting the first of the dtypes an entry may have."""
    return sum(ITEM_BYTES[dtype.split("/")[0]] * math.prod(shape) for dtype, shape in layout.values())


def narrowed(value: torch.Tensor) -> torch.Tensor:
    """A float32 tensor as float16 when that loses nothing (weights kept float that came from float16 files,
    such as the bundled codecs' transforms), so that they take half the bytes and reload bit-exactly."""
    if value.dtype != torch.float32 or value.numel() == 0:
        return value
    half = value.half()
    return half if torch.equal(half.float(), value) else value


def weight_layout(name: str, layer: QuantLayer) -> Layout:
    """The tensors one frozen weight layer is stored as (see :mod:`lowbit.io.lowbit_file`)."""
    return weight_tensors(name, layer.weight_quant.spec, tuple(layer.weight.shape), weight_channels(layer))


def stored_separately(model: nn.Module) -> set[str]:
    """State-dict entries stored in packed form (or not at all) rather than as plain tensors."""
    skip = set()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, QuantLayer):
            skip |= {prefix + "weight", prefix + "qweight"}
        if isinstance(m, Quantizer):
            skip |= {prefix + "scale", prefix + "zero_point"}
    return skip


def expected_layout(qmodel: nn.Module, calibrated: Iterable[str]) -> Layout:
    """Every tensor a file for the prepared ``qmodel`` holds, with its dtype name and shape (no data needed)."""
    layout: Layout = {}
    for name, layer in quant_layers(qmodel):
        layout.update(weight_layout(name, layer))
    n = len(list(calibrated))
    if n:
        layout[ACT_SCALES], layout[ACT_ZERO_POINTS] = ("F32", (n,)), ("I32", (n,))
    skip = stored_separately(qmodel)
    for key, value in qmodel.state_dict().items():
        if key not in skip and value is not None:
            dtype = FLOAT_STATE if value.dtype == torch.float32 else DTYPE_NAMES.get(value.dtype, str(value.dtype))
            layout[key] = (dtype, tuple(value.shape))
    return layout


def check_calibrated_names(qmodel: nn.Module, names: tuple[str, ...]) -> None:
    """The calibrated activations must be the model's own quantizers, in the order the model lists them."""
    order = [n for n, q in activation_quantizers(qmodel) if q.needs_calibration]
    position = {n: i for i, n in enumerate(order)}
    indices = [position.get(n, -1) for n in names]
    if -1 in indices or indices != sorted(set(indices)):
        raise PayloadError("the header's list of calibrated activations does not fit the architecture (unknown, "
                           "repeated or reordered names); the file was edited, belongs to another model or was "
                           "written by a lowbit that placed activation quantizers elsewhere: quantize the float "
                           "model again")


def check_layout(found: Layout, expected: Layout) -> None:
    """Refuse a file whose tensor index differs from what the header and architecture imply."""
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing or unexpected:
        raise PayloadError(f"does not match this architecture (tensors missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); load the file with the model it was saved from")
    for key, want in expected.items():
        dtype_fits = found[key][0] in want[0].split("/")
        if 0 in want[1] and dtype_fits:
            continue  # a buffer the model holds empty until loading fills it (a codec's entropy tables)
        if not dtype_fits or found[key][1] != want[1]:
            raise PayloadError(f"tensor {key} is {found[key][0]} {list(found[key][1])} but the header implies "
                               f"{want[0]} {list(want[1])}; the file was edited or damaged, save it again")


def file_digest(header: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the header text and every tensor (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_scales(name: str, scale: torch.Tensor) -> None:
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        raise PayloadError(f"{name} holds non-finite or non-positive scales; the file is damaged, save it again")


def check_codes(name: str, codes: torch.Tensor, qmin: int, qmax: int) -> None:
    if codes.numel() and (int(codes.min()) < qmin or int(codes.max()) > qmax):
        raise PayloadError(f"{name} holds values outside {qmin}..{qmax}; the file is damaged, save it again")


def check_finite(tensors: Mapping[str, torch.Tensor]) -> None:
    """No NaN in any stored float tensor (an unquantized parameter with NaN makes every output NaN)."""
    for key, t in tensors.items():
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise PayloadError(f"tensor {key} holds NaN; the file is damaged or was saved from a broken model")
