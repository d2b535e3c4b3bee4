"""The ``.lowbit`` file: one safetensors file holding packed integer weights, grids and float parameters,
with the quantization metadata as JSON in the safetensors header. It contains no pickles.

Tensors, per quantized weight layer ``L``:
- ``L.qweight``: codes minus ``qmin`` bit-packed into uint8 for 2-8 bits (8 codes in 3 bytes at 3 bits),
  int16 codes for 9-16 bits, or the float16 weight in fp16 mode;
- ``L.scale`` (float32, one per channel) and, for affine grids, ``L.zero_point`` packed like the codes.
Activation quantizers store ``act.scale`` / ``act.zero_point``; everything else in the state dict (biases,
unfolded norms, embeddings) is stored as it is. Loading rebuilds the architecture, prepares it with the saved
config, and dequantizes the codes with the same function the quantizer used, so outputs are bit-identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit import __version__, qmath
from lowbit.config import QuantConfig
from lowbit.errors import LowbitError
from lowbit.graph import QuantInfo, activation_quantizers, prepare
from lowbit.io.atomic import atomic_path
from lowbit.io.pack import pack_bits, unpack_bits
from lowbit.layers import QuantLayer, quant_layers
from lowbit.quantizer import Quantizer

FORMAT = "lowbit"
FORMAT_VERSION = 1
META_KEY = "lowbit"
INT16_OFFSET = 2**15
ACT_SCALES, ACT_ZERO_POINTS = "activations.scale", "activations.zero_point"


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
    out = {f"{name}.scale": layer.weight_quant.scale.float().contiguous()}
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


def _skipped_keys(model: nn.Module) -> set[str]:
    """State-dict entries stored in packed form (or not at all) rather than as plain tensors."""
    skip = set()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, QuantLayer):
            skip |= {prefix + "weight", prefix + "qweight"}
        if isinstance(m, Quantizer):
            skip |= {prefix + "scale", prefix + "zero_point"}
    return skip


def state_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every tensor the file stores for ``qmodel``, and the names of the calibrated activation quantizers."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in quant_layers(qmodel):
        tensors.update(_weight_tensors(name, layer))
    act_names, act_tensors = _activation_grids(qmodel)
    tensors.update(act_tensors)
    skip = _skipped_keys(qmodel)
    for key, value in qmodel.state_dict().items():
        if key not in skip and value is not None:
            tensors[key] = value.detach().contiguous()
    return {k: v.cpu() for k, v in tensors.items()}, act_names


def save(qmodel: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``qmodel`` (as returned by :func:`lowbit.quantize`) to ``path`` atomically. Returns the path."""
    info: QuantInfo | None = getattr(qmodel, "lowbit_info", None)
    if info is None:
        raise LowbitError("this model was not produced by lowbit.quantize; quantize it first, then save")
    tensors, act_names = state_tensors(qmodel)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "lowbit_version": __version__,
            "config": info.config.to_dict(), "mode": info.mode, "arch": info.arch,
            "bits": {n: l.weight_quant.spec.bits for n, l in quant_layers(qmodel)},
            "calibrated_activations": act_names, **info.extra, **(extra or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, separators=(",", ":"))})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a ``.lowbit`` file, with clear errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise LowbitError(f"file not found: {path}; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise LowbitError(f"{path} is not a readable .lowbit file ({exc}); it may be truncated — save it again") from None
    if raw is None:
        raise LowbitError(f"{path} is a safetensors file without lowbit metadata; pass a file written by `lowbit quantize`")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise LowbitError(f"{path} has an unsupported format version {meta.get('format_version')}; upgrade lowbit")
    return meta


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LowbitError(f"{path} is damaged ({exc}); it may be truncated — save it again") from None


def _load_layer(name: str, layer: QuantLayer, tensors: dict[str, torch.Tensor]) -> None:
    wq, shape = layer.weight_quant, layer.weight.shape
    if wq.spec.is_fp16:
        layer.qweight = tensors.pop(f"{name}.qweight").to(torch.float16)
        layer.weight.data = layer.qweight.float().reshape(shape)
        wq.state = "quantize"
        return
    bits = int(wq.spec.bits)
    qmin, _ = wq.qrange
    scale = tensors.pop(f"{name}.scale")
    channels = scale.numel()
    packed = tensors.pop(f"{name}.qweight")
    if bits <= 8:
        codes = unpack_bits(packed, bits, shape.numel()).to(torch.int32) + qmin
    else:
        codes = _from_int16(packed, qmin)
    if wq.spec.symmetric:
        zp = torch.zeros(channels, dtype=torch.int32)
    elif bits <= 8:
        zp = unpack_bits(tensors.pop(f"{name}.zero_point"), bits, channels).to(torch.int32) + qmin
    else:
        zp = _from_int16(tensors.pop(f"{name}.zero_point"), qmin)
    wq.set_qparams(scale, zp)
    wq.state = "quantize"
    layer.qweight = codes.reshape(shape).to(layer.weight.device)
    s, z = wq.grid(layer.weight.dim())
    layer.weight.data = qmath.dequantize(layer.qweight, s, z).to(layer.weight.dtype)


def _load_activation_grids(qmodel: nn.Module, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    quantizers = dict(activation_quantizers(qmodel))
    scales = tensors.pop(ACT_SCALES, torch.empty(0))
    zero_points = tensors.pop(ACT_ZERO_POINTS, torch.empty(0, dtype=torch.int32))
    if len(names) != scales.numel() or len(names) != zero_points.numel():
        raise ValueError(f"{len(names)} activation quantizers listed but {scales.numel()} grids stored")
    for name, q in quantizers.items():
        # dynamic and fp16 quantizers need no grid; a calibrated one absent from the list saw no data
        q.state = "quantize" if not q.needs_calibration or name in names else "off"
    for i, name in enumerate(names):
        quantizers[name].set_qparams(scales[i : i + 1], zero_points[i : i + 1])


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a quantized model from a ``.lowbit`` file.

    Zoo models are rebuilt from the file alone; for other architectures pass an instance as ``model``
    (its weights are ignored: only its structure is used).
    """
    path = Path(path)
    meta = read_metadata(path)
    if model is None:
        if not meta.get("arch"):
            raise LowbitError(f"{path} holds a custom architecture; pass model=YourNet() (the float architecture) to load it")
        from lowbit.models import rebuild
        model = rebuild(meta["arch"])
    config = QuantConfig.from_dict(meta["config"])
    qmodel = prepare(model, config)
    tensors = _read_tensors(path)
    try:
        for name, layer in quant_layers(qmodel):
            _load_layer(name, layer, tensors)
        _load_activation_grids(qmodel, meta.get("calibrated_activations", []), tensors)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise LowbitError(f"{path} does not match this architecture ({exc}); load it with the model it was saved from") from None
    missing, unexpected = qmodel.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k not in _skipped_keys(qmodel)]
    if missing or unexpected:
        raise LowbitError(f"{path} does not match this architecture (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); load it with the model it was saved from")
    qmodel.lowbit_info.extra = {k: v for k, v in meta.items() if k in ("float_metrics", "quant_metrics", "dataset", "mixed")}
    return qmodel.to(device).eval()
