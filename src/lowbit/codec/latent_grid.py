"""Activation grids that hold a synthesis network's input latents exactly.

A codec's synthesis networks (``g_s``, and a hyperprior's ``h_s``) read what the entropy model decoded:
integers, plus a constant offset per channel where the entropy bottleneck centres its symbols on learned
medians. A calibrated grid spaces its levels by ``range / (levels - 1)``, which does not fall on the
integers, so every latent moves by up to half a step: noise added at the one place the codec has no spare
precision. A grid whose step is a power of two no larger than 1 holds every integer of its range exactly; the
per-channel offsets are then rounded the same way at every position, a constant error that the first layer's
bias takes back (the mean output shift it causes is subtracted from the bias, as bias correction does for
rounded weights). Round-to-nearest only, as bias correction: learned rounding
(BRECQ, QDrop) reconstructs each layer against its input's quantization error itself, and measured worse on
these grids (the bias shift holds for quantized inputs, not for the float ones QDrop mixes in).

The latents are recognised by what they are, not by the architecture: the first quantized layer of each
synthesis network is watched on calibration images, and its grid is replaced only where every channel's
values are integers plus one offset, and the range fits the width with a step of at most 1. Integers without
offsets (a Gaussian conditional's output) need nothing here: the activation observer already gives any
lattice through 0 an exact grid (:mod:`lowbit.lattice`); the per-channel offsets are what it cannot see.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.device import model_device
from lowbit.hooks import watching_inputs
from lowbit.layers import QuantLayer
from lowbit.quantizer import Quantizer

SYNTHESIS_NETWORKS = ("g_s", "h_s")  # CompressAI's names for the networks that read decoded latents
# The grid spans this many times the calibrated range where the width allows: images beyond the calibration
# crops have larger latents, and a clipped latent costs far more than a coarser (still exact) step.
HEADROOM = 2.0
OFFSET_TOLERANCE = 1e-4  # how far apart one channel's fractional parts may be and still count as one offset
LINEAR_LAYERS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def first_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """The first quantized layer of each synthesis network whose input has a static integer grid."""
    found = []
    for part in SYNTHESIS_NETWORKS:
        network = getattr(model, part, None)
        if network is None:
            continue
        for name, module in network.named_modules():
            if isinstance(module, QuantLayer):
                q = module.input_quant
                if q is not None and q.needs_calibration and q.state == "quantize" and not q.spec.symmetric:
                    found.append((f"{part}.{name}", module))
                break
    return found


def channel_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, channels, ...) as one row of values per channel."""
    return x.detach().float().transpose(0, 1).reshape(x.shape[1], -1)


def lattice_offsets(rows: torch.Tensor) -> torch.Tensor | None:
    """Per-channel offsets ``o`` such that each row of ``rows`` (one channel's values) less ``o`` is integer, or
    None where some channel's values are not integers plus one offset."""
    frac = rows - torch.floor(rows)
    offsets = frac[:, 0]
    spread = (frac - offsets[:, None]).abs()
    spread = torch.minimum(spread, 1 - spread)  # 0.99999 and 0.00001 are the same offset
    if not bool((spread <= OFFSET_TOLERANCE).all()):
        return None
    return offsets


def exact_grid(low: float, high: float, q: Quantizer) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A power-of-two step of at most 1 whose grid spans ``HEADROOM`` times [low, high] (zero included) where
    the width allows, else the range itself, centred on it; None where even the range needs a step above 1."""
    qmin, qmax = q.qrange
    low, high = min(low, 0.0), max(high, 0.0)
    levels = qmax - qmin
    wanted = 2.0 ** math.ceil(math.log2(max(HEADROOM * (high - low) / levels, 1e-12)))
    least = 2.0 ** math.ceil(math.log2(max((high - low) / (levels - 1), 1e-12)))
    step = min(wanted, 1.0) if least <= 1.0 else least
    if step > 1.0:
        return None
    zero_point = round((qmin + qmax) / 2 - (low + high) / (2 * step))
    zero_point = min(max(zero_point, qmin), qmax)
    if (qmin - zero_point) * step > low or (qmax - zero_point) * step < high:
        return None
    return torch.tensor([step]), torch.tensor([zero_point], dtype=torch.int32)


@torch.no_grad()
def constant_input_shift(layer: QuantLayer, error: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Mean output shift per channel of adding ``error[c]`` to every value of input channel ``c``."""
    q = layer.input_quant
    saved = q.state
    q.set_state("off")
    try:
        view = [1, -1] + [1] * (len(shape) - 2)
        zero = torch.zeros((1, *shape[1:]), device=error.device)
        shifted = layer(zero + error.reshape(view)) - layer(zero)
    finally:
        q.set_state(saved)
    return channel_rows(shifted).mean(1)


@torch.no_grad()
def align_latent_grids(qmodel: nn.Module, batches: list[torch.Tensor]) -> list[str]:
    """Give each synthesis network's input an exact grid where its latents allow it; the layers changed."""
    layers = first_layers(qmodel)
    if not layers or not batches:
        return []
    seen: dict[str, list[torch.Tensor]] = {}
    device = model_device(qmodel)
    with watching_inputs(layers, lambda name, x: seen.setdefault(name, []).append(x.detach())):
        for batch in batches[:4]:
            qmodel(batch.to(device))
    changed = []
    for name, layer in layers:
        if name not in seen:
            continue
        rows = torch.cat([channel_rows(x) for x in seen[name]], 1)
        offsets = lattice_offsets(rows)
        if offsets is None or bool((torch.minimum(offsets, 1 - offsets) <= OFFSET_TOLERANCE).all()):
            continue  # not a lattice, or integers alone: the lattice observer's grid holds those already
        grid = exact_grid(float(rows.min()), float(rows.max()), layer.input_quant)
        if grid is None:
            continue
        step, zero_point = grid
        layer.input_quant.set_qparams(step, zero_point)
        error = torch.round(offsets / step.item()) * step.item() - offsets
        if isinstance(layer, LINEAR_LAYERS) and layer.bias is not None and bool(error.abs().max() > 0):
            layer.bias.sub_(constant_input_shift(layer, error.to(layer.bias.device), seen[name][0].shape))
        changed.append(name)
    return changed
