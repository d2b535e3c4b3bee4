"""``rate-distortion`` sensitivity: how much quantizing one layer of a codec costs in rate and distortion.

A classifier's sensitivities watch its logits; a codec's output is an image and the bits it takes, so a layer
is scored by the change of the codec's own rate-distortion cost, ``J = bpp + lambda * 255^2 * MSE`` (the
training objective, with bpp estimated from the likelihoods of ``forward``), with only that layer's weights (or
one activation) quantized at the candidate width, relative to the float model's ``J``. Without a ``lmbda``, the
rate and the distortion are weighted equally in relative terms (``lambda`` chosen so that both terms of the float
model's ``J`` are equal): one percent more bits costs as much as one percent more squared error. Lower is better
and scores add up across layers, as the integer program requires. Registered when a codec is first prepared.
"""

from __future__ import annotations

import torch

from lowbit.codec.train import rate_distortion_loss
from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.mixed.sensitivity import METRICS, Scores, ScoringTask, float_mode, metric

NAME = "rate-distortion"


def _rate_and_distortion(model: torch.nn.Module, images: torch.Tensor, chunk: int) -> tuple[float, float]:
    """Mean estimated bpp and MSE of ``model`` over ``images``."""
    bpp = mse = 0.0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk]
        _, d, r = rate_distortion_loss(model(x), x, 0.0)
        bpp, mse = bpp + float(r) * len(x), mse + float(d) * len(x)
    return bpp / len(images), mse / len(images)


def rate_distortion_scores(task: ScoringTask, lmbda: float | None = None, chunk: int = 8) -> Scores:
    """Relative increase of the rate-distortion cost with one layer (or activation) quantized at a time."""
    if lmbda is not None and lmbda <= 0:
        raise LowbitError(f"lmbda must be positive, got {lmbda}")
    weights: dict[str, dict[int, float]] = {name: {} for name in task.layers}
    activations: dict[str, dict[int, float]] = {name: {} for name in task.activations}
    for bits, qmodel in task.copies.items():
        x = task.images.to(model_device(qmodel))
        modules = dict(qmodel.named_modules())
        probes = [(weights, name, modules[name].weight_quant) for name in task.layers if bits in task.weight_bits]
        if bits in task.activation_bits:
            probes += [(activations, name, modules[name]) for name in task.activations]
        with torch.no_grad(), float_mode(qmodel):
            rate0, distortion0 = _rate_and_distortion(qmodel, x, chunk)
            weight = distortion0 * 255**2 * lmbda / rate0 if lmbda is not None else 1.0  # share of distortion in J
            for table, name, quantizer in probes:
                quantizer.state = "quantize"
                rate, distortion = _rate_and_distortion(qmodel, x, chunk)
                quantizer.state = "off"
                table[name][bits] = ((rate - rate0) / rate0 + weight * (distortion - distortion0) / distortion0) \
                    / (1 + weight)
    return Scores(weights, activations)


def register() -> None:
    """Add the metric to the sensitivity registry (once)."""
    if NAME not in METRICS:
        metric(NAME)(rate_distortion_scores)
