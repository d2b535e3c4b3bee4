"""What each quantized layer costs: bytes in the saved file at a given width, and multiply-accumulates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.device import model_device
from lowbit.graph import layer_input_quantizers
from lowbit.hooks import watching_inputs, watching_outputs
from lowbit.io.payload import layout_nbytes, weight_channels, weight_tensors
from lowbit.layers import QuantLayer, quant_layers
from lowbit.spec import QuantSpec

FLOAT_BITS = 32  # width counted for the input of a layer whose activations are not quantized


def weight_bytes(numel: int, channels: int, spec: QuantSpec) -> int:
    """Bytes the ``.lowbit`` file spends on one layer's weights (codes, scales, zero points), as the file's
    own layout (:func:`lowbit.io.payload.weight_tensors`) says."""
    grids = channels if spec.granularity == "per_channel" else 1
    return layout_nbytes(weight_tensors("w", spec, (numel,), grids))


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
    input_elements: int = 0  # size of its input, per sample: what that activation costs in memory


def _macs(layer: QuantLayer, out: torch.Tensor, input_elements: int) -> int:
    if isinstance(layer, nn.ConvTranspose2d):  # each input element is spread over out/groups x kernel area
        return input_elements * int(layer.weight[0].numel())
    per_output = layer.weight[0].numel()  # in_channels/groups x kernel area, or in_features
    return int(out[0].numel()) * int(per_output)


def describe_layers(qmodel: nn.Module, sample: torch.Tensor) -> list[LayerCost]:
    """Parameters, output channels, MACs per sample (measured on ``sample``) and input quantizer of each layer."""
    outputs: dict[str, torch.Tensor] = {}
    input_elements: dict[str, int] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        outputs.setdefault(name, out.detach())

    def count(name: str, x: torch.Tensor) -> None:
        input_elements.setdefault(name, int(x[0].numel()))

    layers = list(quant_layers(qmodel))
    with watching_outputs(layers, keep), watching_inputs(layers, count), torch.no_grad():
        qmodel(sample[:1].to(model_device(qmodel)))
    inputs = layer_input_quantizers(qmodel)
    return [LayerCost(name, layer.weight.numel(), weight_channels(layer),
                      _macs(layer, outputs[name], input_elements[name]) if name in outputs else 0, inputs.get(name),
                      input_elements.get(name, 0))
            for name, layer in quant_layers(qmodel)]
