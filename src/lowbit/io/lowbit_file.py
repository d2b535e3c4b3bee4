"""The ``.lowbit`` file: one safetensors file holding packed integer weights, grids and float parameters,
with the quantization metadata as JSON in the safetensors header. It contains no pickles.

Tensors, per quantized weight layer ``L``:
- ``L.qweight``: codes minus ``qmin`` bit-packed into uint8 for 2-8 bits (8 codes in 3 bytes at 3 bits),
  int16 codes for 9-16 bits, or the float16 weight in fp16 mode;
- ``L.scale`` (one per channel; float16 where every scale is a float16 number, as freezing makes them) and,
  for affine grids, ``L.zero_point`` packed like the codes.
Activation quantizers store ``act.scale`` / ``act.zero_point``; everything else in the state dict (biases,
unfolded norms, embeddings, layers kept float) is stored as it is, float32 tensors as float16 when every value is
exact in float16 (weights read from float16 files). Loading rebuilds the architecture, prepares it with the saved
config, and dequantizes the codes with the same function the quantizer used, so outputs are bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit import qmath
from lowbit.coverage import coverage
from lowbit.errors import LowbitError
from lowbit.graph import QuantInfo, activation_quantizers, prepare
from lowbit.io import payload
from lowbit.io.atomic import atomic_path
from lowbit.io.pack import pack_bits, unpack_bits
from lowbit.io.payload import ACT_SCALES, ACT_ZERO_POINTS, Layout
from lowbit.io.run_record import RunRecord
from lowbit.layers import QuantLayer, quant_layers

META_KEY = "lowbit"
DIGEST_KEY = "lowbit_sha256"
INT16_OFFSET = 2**15
# An architecture to load into: an instance, or a builder from the header's architecture record
Architecture = nn.Module | Callable[[dict], nn.Module]


def _to_int16(codes: torch.Tensor, qmin: int) -> torch.Tensor:
    """9-16 bit codes as int16: shifted to ``[0, 2^b)`` then centred on zero (16-bit affine codes reach 65535)."""
    return (codes.to(torch.int32) - qmin - INT16_OFFSET).to(torch.int16).contiguous()


def _from_int16(stored: torch.Tensor, qmin: int) -> torch.Tensor:
    return stored.to(torch.int32) + INT16_OFFSET + qmin


def _weight_tensors(name: str, layer: QuantLayer) -> dict[str, torch.Tensor]:
    spec = layer.weight_quant.spec
    if not layer.frozen:
        raise LowbitError(f"layer {name} is not frozen; save models returned by lowbit.quantize")
    if spec.is_fp16:
        return {f"{name}.qweight": layer.qweight.contiguous()}
    bits = int(spec.bits)
    qmin, _ = layer.weight_quant.qrange
    out = {f"{name}.scale": payload.narrowed(layer.weight_quant.scale.float().contiguous())}
    if bits <= 8:
        out[f"{name}.qweight"] = pack_bits((layer.qweight.int() - qmin).to(torch.uint8), bits)
        if not spec.symmetric:
            out[f"{name}.zero_point"] = pack_bits((layer.weight_quant.zero_point - qmin).to(torch.uint8), bits)
    else:
        out[f"{name}.qweight"] = _to_int16(layer.qweight, qmin)
        if not spec.symmetric:
            out[f"{name}.zero_point"] = _to_int16(layer.weight_quant.zero_point, qmin)
    return out


def _activation_grids(qmodel: nn.Module) -> tuple[list[str], dict[str, torch.Tensor]]:
    """All calibrated activation grids as two vectors (one header entry each instead of two per quantizer)."""
    calibrated = [(n, q) for n, q in activation_quantizers(qmodel) if q.needs_calibration and q.state == "quantize"]
    if not calibrated:
        return [], {}
    return [n for n, _ in calibrated], {
        ACT_SCALES: torch.cat([q.scale.float().reshape(-1) for _, q in calibrated]),
        ACT_ZERO_POINTS: torch.cat([q.zero_point.int().reshape(-1) for _, q in calibrated])}


def state_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor the file stores for ``qmodel``, and the names of the calibrated activation quantizers."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in quant_layers(qmodel):
        tensors.update(_weight_tensors(name, layer))
    act_names, act_tensors = _activation_grids(qmodel)
    tensors.update(act_tensors)
    skip = payload.stored_separately(qmodel)
    for key, value in qmodel.state_dict().items():
        if key not in skip and value is not None:
            tensors[key] = payload.narrowed(value.detach().contiguous())
    return {k: v.cpu() for k, v in tensors.items()}, act_names


def save(qmodel: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``qmodel`` (as returned by :func:`lowbit.quantize`) to ``path`` atomically. Returns the path.

    ``extra`` adds what the caller measured: ``dataset``, ``float_metrics``, ``quant_metrics`` become typed
    fields of the :class:`RunRecord`; anything else is kept as provenance.
    """
    info: QuantInfo | None = getattr(qmodel, "lowbit_info", None)
    if info is None:
        raise LowbitError("this model was not produced by lowbit.quantize; quantize it first, then save")
    tensors, act_names = state_tensors(qmodel)
    payload.check_finite(tensors)
    bits = {n: layer.weight_quant.spec.bits for n, layer in quant_layers(qmodel)}
    extra = {"coverage": coverage(qmodel), **(extra or {})}
    header = json.dumps(RunRecord.of(info, bits, act_names, extra).to_dict(), separators=(",", ":"))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: header, DIGEST_KEY: payload.file_digest(header, tensors)})
    return path


def _open_error(path: Path, exc: BaseException) -> LowbitError:
    if path.suffix.lower() == ".onnx":
        return LowbitError(f"{path} is an ONNX model, not a .lowbit file; give the .lowbit file it was exported "
                           "from (lowbit eval also runs the .onnx file)")
    return LowbitError(f"{path} is not a readable .lowbit file ({str(exc).strip()[:200] or type(exc).__name__}); "
                       "it may be truncated or damaged — save it again")


def _read_index(path: Path) -> tuple[str, str, Layout]:
    """Header text, stored digest and tensor index (dtype name and shape per tensor), reading no tensor data."""
    if not path.is_file():
        raise LowbitError(f"file not found: {path}; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            slices = {k: f.get_slice(k) for k in f.keys()}
            index = {k: (s.get_dtype(), tuple(s.get_shape())) for k, s in slices.items()}
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as exc:
        raise _open_error(path, exc) from None
    if META_KEY not in meta:
        raise LowbitError(f"{path} is a safetensors file without lowbit metadata; pass a file written by `lowbit quantize`")
    return meta[META_KEY], meta.get(DIGEST_KEY, ""), index


def _parse_header(path: Path, header: str) -> RunRecord:
    try:
        raw = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise LowbitError(f"{path} has a damaged header (not JSON: {str(exc)[:100]}); save the model again") from None
    try:
        return RunRecord.from_dict(raw)
    except LowbitError as exc:
        raise LowbitError(f"{path} has an invalid header ({exc}); save the model again with this lowbit") from None
    except RecursionError:
        raise LowbitError(f"{path} has an invalid header (nested too deeply); save the model again") from None


def _read_tensors(path: Path, header: str, digest: str) -> dict[str, torch.Tensor]:
    """Every tensor of a file whose index was already checked, verified against the stored digest."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _open_error(path, exc) from None
    if payload.file_digest(header, tensors) != digest:
        raise LowbitError(f"{path} fails its integrity check (its bytes changed after it was written); "
                          "the file is damaged or was edited — save the model again")
    return tensors


def read_record(path: str | Path, verify: bool = True) -> RunRecord:
    """The validated run record of a ``.lowbit`` file; ``verify`` also checks the whole file's digest."""
    path = Path(path)
    header, digest, _ = _read_index(path)
    record = _parse_header(path, header)
    if verify:
        _read_tensors(path, header, digest)
    return record


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated header of a ``.lowbit`` file as plain JSON data (for scripts; see :func:`read_record`)."""
    return read_record(path).to_dict()


def _load_layer(name: str, layer: QuantLayer, tensors: dict[str, torch.Tensor]) -> None:
    wq, shape = layer.weight_quant, layer.weight.shape
    if wq.spec.is_fp16:
        layer.qweight = tensors.pop(f"{name}.qweight").to(torch.float16)
        if not bool(torch.isfinite(layer.qweight).all()):
            raise payload.PayloadError(f"{name}.qweight holds non-finite weights; the file is damaged, save it again")
        layer.weight.data = layer.qweight.float().reshape(shape)
        wq.state = "quantize"
        return
    bits = int(wq.spec.bits)
    qmin, qmax = wq.qrange
    scale = tensors.pop(f"{name}.scale").float()
    payload.check_scales(f"{name}.scale", scale)
    channels = scale.numel()
    packed = tensors.pop(f"{name}.qweight")
    codes = unpack_bits(packed, bits, shape.numel()).to(torch.int32) + qmin if bits <= 8 else _from_int16(packed, qmin)
    if wq.spec.symmetric:
        zp = torch.zeros(channels, dtype=torch.int32)
    elif bits <= 8:
        zp = unpack_bits(tensors.pop(f"{name}.zero_point"), bits, channels).to(torch.int32) + qmin
    else:
        zp = _from_int16(tensors.pop(f"{name}.zero_point"), qmin)
    payload.check_codes(f"{name}.qweight", codes, qmin, qmax)
    payload.check_codes(f"{name}.zero_point", zp, qmin, qmax)
    wq.set_qparams(scale, zp)
    wq.state = "quantize"
    layer.qweight = codes.reshape(shape).to(layer.weight.device)
    s, z = wq.grid(layer.weight.dim())
    layer.weight.data = qmath.dequantize(layer.qweight, s, z).to(layer.weight.dtype)


def _load_activation_grids(qmodel: nn.Module, names: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> None:
    quantizers = dict(activation_quantizers(qmodel))
    scales = tensors.pop(ACT_SCALES, torch.empty(0))
    zero_points = tensors.pop(ACT_ZERO_POINTS, torch.empty(0, dtype=torch.int32))
    payload.check_scales(ACT_SCALES, scales)
    for name, q in quantizers.items():
        # dynamic and fp16 quantizers need no grid; a calibrated one absent from the list saw no data
        q.state = "quantize" if not q.needs_calibration or name in names else "off"
    for i, name in enumerate(names):
        payload.check_codes(f"{ACT_ZERO_POINTS}[{name}]", zero_points[i : i + 1], *quantizers[name].qrange)
        quantizers[name].set_qparams(scales[i : i + 1], zero_points[i : i + 1])


def _add_corrected_biases(qmodel: nn.Module, index: Layout) -> None:
    """Bias correction gives a layer without a bias one: give it back (zeros, filled when the tensors are read)
    where the file's index holds one. Its shape is then checked with every other tensor's."""
    for name, layer in quant_layers(qmodel):
        key = f"{name}.bias" if name else "bias"
        channels = getattr(layer, "out_channels", getattr(layer, "out_features", None))
        if layer.bias is None and key in index and channels is not None:
            layer.bias = nn.Parameter(torch.zeros(channels, device=layer.weight.device, dtype=layer.weight.dtype))


def _prepared(path: Path, record: RunRecord, architecture: Architecture, device: str | torch.device,
              index: Layout) -> nn.Module:
    # a model prepared in parts (or swapped) is prepared the same way again, without trying to trace it whole
    mode = record.mode if record.mode in ("parts", "swap") else None
    if isinstance(architecture, nn.Module):
        qmodel = prepare(architecture, record.config, mode)
    elif record.arch is None:
        raise LowbitError(f"{path} holds a custom architecture; pass model=YourNet() (the float architecture) to load it")
    else:
        with torch.device(device):
            qmodel = prepare(architecture(record.arch.to_dict()), record.config, mode)
    _add_corrected_biases(qmodel, index)
    return qmodel


def _check_against(path: Path, qmodel: nn.Module, record: RunRecord, index: Layout) -> None:
    """Refuse a file whose header or tensor index does not fit the prepared architecture."""
    layers = {n: layer.weight_quant.spec.bits for n, layer in quant_layers(qmodel)}
    try:
        if layers.keys() != record.bits.keys():
            names = sorted(layers.keys() ^ record.bits.keys())
            raise payload.PayloadError(f"does not match this architecture (layers {names[:3]} differ); load it "
                                       "with the model it was saved from")
        if layers != dict(record.bits):
            raise payload.PayloadError("the header's per-layer bits differ from what its config gives each layer; "
                                       "the file was edited, save the model again")
        payload.check_calibrated_names(qmodel, record.calibrated_activations)
        payload.check_layout(index, payload.expected_layout(qmodel, record.calibrated_activations))
    except payload.PayloadError as exc:
        raise LowbitError(f"{path}: {exc}") from None


def load(path: str | Path, architecture: Architecture, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized model from a ``.lowbit`` file into ``architecture``.

    ``architecture`` is the float model's structure (an instance; its weights are ignored), or a function that
    builds one from the header's architecture record. With a builder, the model is first built on the ``meta``
    device, so a header that asks for more than the file holds is refused before anything is allocated. Every
    tensor is checked against the header, the digest and the ranges a quantizer can produce.
    """
    path = Path(path)
    header, digest, index = _read_index(path)
    record = _parse_header(path, header)
    if isinstance(architecture, nn.Module):  # the caller's model: checked as prepared, before any tensor is read
        qmodel = _prepared(path, record, architecture, "cpu", index)
        _check_against(path, qmodel, record, index)
    else:  # a zoo builder: checked on the meta device first, so nothing the header asks for is allocated
        try:
            on_meta = _prepared(path, record, architecture, "meta", index)
        except NotImplementedError:  # the builder runs an op with no meta kernel (older timm's RegNet widths);
            on_meta = None  # the header's architecture record is already held to the zoo's sizes, so build it
        if on_meta is not None:
            _check_against(path, on_meta, record, index)
        qmodel = _prepared(path, record, architecture, "cpu", index)
        if on_meta is None:
            _check_against(path, qmodel, record, index)
    tensors = _read_tensors(path, header, digest)
    try:
        payload.check_finite(tensors)
        for name, layer in quant_layers(qmodel):
            _load_layer(name, layer, tensors)
        _load_activation_grids(qmodel, record.calibrated_activations, tensors)
    except payload.PayloadError as exc:
        raise LowbitError(f"{path}: {exc}") from None
    try:
        qmodel.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a buffer the architecture holds empty, stored with a shape it cannot take
        raise LowbitError(f"{path}: {str(exc).splitlines()[-1].strip()[:200]}; load it with the model it was saved "
                          "from") from None
    qmodel.lowbit_info.extra = {k: v for k in ("float_metrics", "quant_metrics", "dataset", "mixed", "coverage")
                                if (v := getattr(record, k)) is not None}
    qmodel.lowbit_record = record
    return qmodel.to(device).eval()
