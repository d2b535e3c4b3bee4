"""Gain correction: rounded weights that keep each output channel's gain.

A range chosen for the least output error clips a channel's largest weights a little. The error it leaves is
not noise: it points against the weights themselves, so the channel's output comes out systematically smaller
than the float one, and the shrinkage compounds from layer to layer (bias correction removes the mean shift
only). With the covariance ``H`` of the layer's inputs, the float output's projection on the quantized one is
``<w, w_q>_H / <w, w>_H``; scaling the channel's grid step by ``<w, w>_H / <w_q, w>_H`` (the integer codes kept)
makes it one. The codes stay those of round-to-nearest on the original grid, so the corrected layer is a
plain integer layer with a slightly different per-channel scale.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit import qmath
from lowbit.input_covariance import InputCovariance
from lowbit.layers import QuantLayer, quant_layers

MAX_GAIN_CHANGE = 0.5  # a gain outside [1/(1+c), 1+c] means a degenerate channel, not a clipped one


class GainRounding(nn.Module):
    """Round to nearest on the grid the codes were chosen on, dequantize on the layer's (gain-corrected) grid:
    installed as ``layer.rounding`` until the layer is frozen."""

    def __init__(self, code_scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("code_scale", code_scale)

    def forward(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                qmax: int) -> torch.Tensor:
        zp = zero_point.to(weight.dtype)
        codes = torch.clamp(torch.round(weight / self.code_scale) + zp, qmin, qmax)
        return (codes - zp) * scale


def channel_gains(layer: QuantLayer, covariance: InputCovariance) -> torch.Tensor:
    """Per output channel, the factor that makes the rounded channel's output gain one (see the module)."""
    axis = layer.weight_quant.spec.channel_axis(layer.weight.dim())
    rows = layer.weight.detach().float().movedim(axis, 0).flatten(1)
    wq = layer.fake_quant_weight().detach().float().movedim(axis, 0).flatten(1)
    covariance = covariance.to(rows)
    energy, overlap = covariance.quadratic(rows), covariance.inner(rows, wq)
    gain = energy / overlap.clamp_min(torch.finfo(torch.float32).tiny)
    usable = (energy > 0) & (overlap > 0) & torch.isfinite(gain)
    gain = torch.where(usable, gain, torch.ones_like(gain))
    return gain.clamp(1 / (1 + MAX_GAIN_CHANGE), 1 + MAX_GAIN_CHANGE)


def correct_gains(qmodel: nn.Module, covariances: dict[str, InputCovariance]) -> None:
    """Rescale the per-channel grid of every layer with a measured input covariance (in place)."""
    for name, layer in quant_layers(qmodel):
        wq = layer.weight_quant
        if name not in covariances or wq.state != "quantize" or wq.spec.granularity != "per_channel":
            continue
        axis = wq.spec.channel_axis(layer.weight.dim())
        if wq.scale.numel() != layer.weight.shape[axis]:
            continue
        code_scale = qmath.channel_view(wq.scale.clone(), axis, layer.weight.dim())
        wq.set_qparams(wq.scale * channel_gains(layer, covariances[name]), wq.zero_point)
        layer.rounding = GainRounding(code_scale)
