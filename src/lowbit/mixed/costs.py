"""What each quantized layer costs: bytes in the saved file at a given width, and multiply-accumulates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.calibrate import model_device
from lowbit.graph import layer_input_quantizers
from lowbit.io.pack import packed_nbytes
from lowbit.layers import QuantLayer, quant_layers
from lowbit.spec import QuantSpec

FLOAT_BITS = 32  # width counted for the input of a layer whose activations are not quantized


def weight_bytes(numel: int, channels: int, spec: QuantSpec) -> int:
    """Bytes the ``.lowbit`` file spends on one layer's weights: codes, scales and (affine) zero points.

    Mirrors :mod:`lowbit.io.lowbit_file`: codes bit-packed up to 8 bits and int16 above; one float32 scale per
    channel; zero points stored like the codes for affine grids; fp16 weights as half floats.
    """
    if spec.is_fp16:
        return 2 * numel
    bits = int(spec.bits)
    grids = channels if spec.granularity == "per_channel" else 1
    if bits <= 8:
        codes, zero_points = packed_nbytes(numel, bits), packed_nbytes(grids, bits)
    else:
        codes, zero_points = 2 * numel, 2 * grids
    return codes + 4 * grids + (0 if spec.symmetric else zero_points)


def code_bytes(numel: int, bits: int) -> int:
    """Bytes of the weight codes alone (no scales), the size measure of HAWQ/OMPQ tables and MCT."""
    return math.ceil(numel * bits / 8)


@dataclass(frozen=True)
class LayerCost:
    """One quantized weight layer as the allocator sees it."""

    name: str
    params: int
    channels: int
    macs: int  # per input sample
    input: str | None  # module path of the activation quantizer feeding it


def _macs(layer: QuantLayer, out: torch.Tensor) -> int:
    per_output = layer.weight[0].numel()  # in_channels/groups x kernel area, or in_features
    return int(out[0].numel()) * int(per_output)


def describe_layers(qmodel: nn.Module, sample: torch.Tensor) -> list[LayerCost]:
    """Parameters, output channels, MACs per sample (measured on ``sample``) and input quantizer of each layer."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        outputs.setdefault(name, out.detach())

    hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: keep(n, out)) for name, m in quant_layers(qmodel)]
    try:
        with torch.no_grad():
            qmodel(sample[:1].to(model_device(qmodel)))
    finally:
        for h in hooks:
            h.remove()
    inputs = layer_input_quantizers(qmodel)
    return [LayerCost(name, layer.weight.numel(), layer.weight.shape[0],
                      _macs(layer, outputs[name]) if name in outputs else 0, inputs.get(name))
            for name, layer in quant_layers(qmodel)]
