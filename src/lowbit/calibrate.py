"""Calibration: weight grids from the weights, activation grids from a few batches of data."""

from __future__ import annotations

import warnings
from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from lowbit.device import model_device
from lowbit.graph import activation_quantizers
from lowbit.integer_bias import snap_biases
from lowbit.layers import quant_layers

def calibrate_weights(model: nn.Module) -> None:
    """Set every weight grid from its weight (round-to-nearest on that grid from then on)."""
    for _, layer in quant_layers(model):
        layer.calibrate_weights()


def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor], progress: bool = False) -> None:
    """Observe activations over ``batches`` (weights already quantized) and fix their grids.

    A quantizer that never saw data (a branch the batches never reached) is switched off with a warning.
    """
    quantizers = activation_quantizers(model)
    for _, q in quantizers:
        q.set_state("observe")
    device = model_device(model)
    with torch.no_grad():
        for x in tqdm(batches, desc="calibrating", disable=not progress, leave=False):
            model(x.to(device))
    unseen = [name for name, q in quantizers if not q.finish_calibration()]
    for name in unseen:
        dict(quantizers)[name].set_state("off")
    if unseen:
        warnings.warn(f"{len(unseen)} activation quantizer(s) saw no calibration data and stay in float: "
                      f"{', '.join(unseen[:5])}", stacklevel=2)


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor], progress: bool = False) -> None:
    """Weights first, then activations observed through the weight-quantized model."""
    calibrate_weights(model)
    calibrate_activations(model, batches, progress)


def freeze(model: nn.Module) -> None:
    """Fix every weight on its grid (see :meth:`lowbit.layers.QuantLayer.freeze`), and every bias on the int32
    grid integer runtimes add it on (see :mod:`lowbit.integer_bias`)."""
    for _, layer in quant_layers(model):
        layer.freeze()
    snap_biases(model)
