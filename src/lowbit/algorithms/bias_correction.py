"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization"; on by default in peer tools).

Rounding weights shifts each output channel's mean by ``E[conv(x, W_q - W)]``. Measured on the calibration
inputs each layer actually receives in the quantized model, that shift is subtracted from the layer's bias,
so the quantized layer is unbiased on average. One pass over the data corrects every layer, at about the
cost of one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.layers import QConv1d, QConv2d, QConvTranspose2d, QLinear, QuantLayer, quant_layers


def mean_weight_error_output(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of the output of the layer's weight rounding error alone, ``op(x, W_q - W)``.

    The op and the mean are both linear, so the op is applied to the input already averaged over the batch
    (and, for a linear layer, over every position): exact, at the cost of one sample instead of a batch. The
    op is the layer's own (:meth:`weight_op`), so a transposed convolution produces, and averages over, the
    positions its forward pass produces.
    """
    delta = (layer.fake_quant_weight() - layer.weight).detach()
    if isinstance(layer, QLinear):
        return layer.weight_op(x.reshape(-1, x.shape[-1]).mean(0), delta)
    out = layer.weight_op(x.mean(0, keepdim=True), delta)
    return out.mean(dim=[0, *range(2, out.dim())])


def correct_biases(qmodel: nn.Module, batches: list[torch.Tensor]) -> None:
    """Fold the mean output shift of each layer's weight quantization into its bias (in place)."""
    linear = (QConv1d, QConv2d, QConvTranspose2d, QLinear)
    layers = [(n, l) for n, l in quant_layers(qmodel) if isinstance(l, linear)
              and not l.weight_quant.spec.is_fp16 and l.weight_quant.state == "quantize"]
    if not layers:
        return
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: QuantLayer, inputs: tuple, _output: torch.Tensor) -> None:
            x = module.quantize_input(inputs[0])
            sums[name] = sums.get(name, 0) + mean_weight_error_output(module, x) * len(x)
            counts[name] = counts.get(name, 0) + len(x)
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers]
    device = next(qmodel.parameters()).device
    try:
        with torch.no_grad():
            for x in batches:
                qmodel(x.to(device))
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, layer in layers:
            if name not in sums:
                continue
            shift = sums[name] / counts[name]
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros_like(shift))
            layer.bias -= shift.to(layer.bias.dtype)
