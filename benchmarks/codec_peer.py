"""The peer row of the codec benchmark: onnxruntime's dynamic int8 quantization of the same codec.

onnxruntime quantizes ONNX graphs, not a codec's entropy coder, so the codec's transforms (``g_a``, ``g_s``
and, for a hyperprior, ``h_a``, ``h_s``) are exported to ONNX, quantized with ``quantize_dynamic`` (int8
weights per channel; activations quantized per call, in onnxruntime's integer Conv kernels), and run by
onnxruntime inside the otherwise unchanged CompressAI model, whose entropy models code the latents as before.
onnxruntime's dynamic quantization covers Conv (and GDN's 1x1 Conv) but not ConvTranspose, which stays float.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic
from torch import nn

from lowbit.codec.onnx_transforms import OnnxTransform, input_channels

TRANSFORMS = ("g_a", "g_s", "h_a", "h_s")


def _export(module: nn.Module, channels: int, path: Path) -> None:
    example = torch.rand(1, channels, 8, 8)
    # the TorchScript exporter, whose dynamic_axes give one graph for every image size
    torch.onnx.export(module.eval(), (example,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}}, dynamo=False)


def ort_dynamic_int8(codec: nn.Module, folder: Path | None = None) -> nn.Module:
    """A copy of ``codec`` whose transforms run in onnxruntime after ``quantize_dynamic`` (QInt8 weights)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="ort_codec_"))
    peer = copy.deepcopy(codec).eval()
    for name in TRANSFORMS:
        module = getattr(peer, name, None)
        if module is None:
            continue
        float_path, ready_path, int8_path = (folder / f"{name}{suffix}.onnx" for suffix in ("", ".pre", ".int8"))
        _export(module, input_channels(module), float_path)
        # onnxruntime's own pre-processing folds GDN's reparametrized gamma into a constant Conv weight
        quant_pre_process(str(float_path), str(ready_path), skip_symbolic_shape=True)
        quantize_dynamic(str(ready_path), str(int8_path), weight_type=QuantType.QInt8, per_channel=True)
        setattr(peer, name, OnnxTransform(int8_path, threads=1))
    return peer


def int8_files_bytes(folder: Path) -> int:
    """Bytes of the quantized ONNX transforms (the peer's model size, entropy model not included)."""
    return sum(p.stat().st_size for p in folder.glob("*.int8.onnx"))
