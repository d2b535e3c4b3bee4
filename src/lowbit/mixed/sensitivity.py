"""Sensitivity of the network to quantizing each layer's weights, or each layer input, at each candidate width.

Every metric is registered in ``METRICS`` with :func:`metric` next to its code and receives one
:class:`ScoringTask`: the model prepared and calibrated once per candidate width (``copies``, bits -> quantized
model; all copies share layer and quantizer names), a batch of images, the weight layers and activations to
score with their candidate widths, which activation feeds each layer, and a seed. It returns a score per
(layer, bits) and per (activation, bits); lower is better and scores of one metric add up across layers, which
is what the integer program minimizes.

- ``measured`` quantizes one layer (or activation) at a time and measures how far the network output moves,
  as the Model Compression Toolkit does;
- ``hessian`` (:mod:`lowbit.mixed.hessian_sensitivity`) predicts the loss increase from a label-free Hessian;
- ``orthogonality`` (:mod:`lowbit.mixed.orthogonality`) is OMPQ's layer importance from feature orthogonality.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

from lowbit.device import model_device
from lowbit.quantizer import Quantizer
from lowbit.registry import Registry


@dataclass
class Scores:
    weights: dict[str, dict[int, float]]
    activations: dict[str, dict[int, float]]


@dataclass(frozen=True)
class ScoringTask:
    """What a sensitivity metric scores (see the module docstring)."""

    copies: dict[int, nn.Module]
    images: torch.Tensor
    layers: list[str]
    weight_bits: tuple[int, ...]
    activations: list[str] = field(default_factory=list)
    activation_bits: tuple[int, ...] = ()
    layer_inputs: dict[str, str | None] = field(default_factory=dict)  # layer -> the activation feeding it
    seed: int = 0


Metric = Callable[..., Scores]  # (task: ScoringTask, **metric options) -> Scores
METRICS: Registry[Metric] = Registry("sensitivity")


def metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator registering a sensitivity metric under ``name`` (the CLI's ``--sensitivity`` choices)."""
    return METRICS.decorator(name)


@contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every quantizer of ``model`` passes values through until the block ends (then states are restored)."""
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    states = [q.state for q in quantizers]
    for q in quantizers:
        q.state = "off"
    try:
        yield model
    finally:
        for q, s in zip(quantizers, states):
            q.state = s


def _relative_change(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12))


@metric("measured")
def measured_scores(task: ScoringTask, chunk: int = 128) -> Scores:
    """Relative squared change of the network output, ``|f_q(x) - f(x)|^2 / |f(x)|^2``, with only one layer's
    weights (or one activation) quantized at a time. Deterministic: the seed is not used."""
    layers, acts, weight_bits, act_bits = task.layers, task.activations, task.weight_bits, task.activation_bits
    weights: dict[str, dict[int, float]] = {name: {} for name in layers}
    activations: dict[str, dict[int, float]] = {name: {} for name in acts}
    for bits, qmodel in task.copies.items():
        device = model_device(qmodel)
        x = task.images.to(device)
        modules = dict(qmodel.named_modules())
        probes = [(weights, name, modules[name].weight_quant) for name in layers if bits in weight_bits]
        if bits in act_bits:
            probes += [(activations, name, modules[name]) for name in acts]
        with torch.no_grad(), float_mode(qmodel):
            ref = torch.cat([qmodel(x[i : i + chunk]) for i in range(0, len(x), chunk)])
            for table, name, quantizer in probes:
                quantizer.state = "quantize"
                out = torch.cat([qmodel(x[i : i + chunk]) for i in range(0, len(x), chunk)])
                quantizer.state = "off"
                table[name][bits] = _relative_change(out, ref)
    return Scores(weights, activations)
