"""Calibration: weight grids from the weights, activation grids from a few batches of data."""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from lowbit.device import model_device
from lowbit.graph import activation_quantizers
from lowbit.input_covariance import InputCovariance
from lowbit.input_patches import input_covariances
from lowbit.integer_bias import snap_biases
from lowbit.layers import quant_layers

def calibrate_weights(model: nn.Module, batches: Sequence[torch.Tensor] = (), seed: int = 0,
                      known: dict[str, InputCovariance] | None = None) -> dict[str, InputCovariance]:
    """Set every weight grid (round-to-nearest on that grid from then on); return the input covariances that
    the ``output`` observer used, by layer name (empty without batches).

    The covariances are measured through the model with every quantizer still off, on the float inputs, so
    ``known`` ones (from another quantized copy of the same model and batches) are reused, not measured again.
    """
    layers = list(quant_layers(model))
    covariances = dict(known or {})
    wanted = [(name, layer) for name, layer in layers if name not in covariances
              and layer.weight_quant.spec.observer == "output" and layer.weight_quant.needs_calibration]
    if wanted and batches:
        covariances.update(input_covariances(model, batches, wanted, seed))
    for name, layer in layers:
        layer.calibrate_weights(covariances.get(name))
    return covariances


def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor], progress: bool = False) -> None:
    """Observe activations over ``batches`` (weights already quantized) and fix their grids.

    A quantizer that never saw data (a branch the batches never reached) is switched off with a warning.
    """
    quantizers = activation_quantizers(model)
    for _, q in quantizers:
        q.set_state("observe")
    if any(q.needs_calibration for _, q in quantizers):  # float16 casts and dynamic ranges observe nothing
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


def calibrate(model: nn.Module, batches: Sequence[torch.Tensor], progress: bool = False) -> None:
    """Weights first, then activations observed through the weight-quantized model."""
    calibrate_weights(model, batches)
    calibrate_activations(model, batches, progress)


def freeze(model: nn.Module) -> None:
    """Fix every weight on its grid (see :meth:`lowbit.layers.QuantLayer.freeze`), and every bias on the int32
    grid integer runtimes add it on (see :mod:`lowbit.integer_bias`)."""
    for _, layer in quant_layers(model):
        layer.freeze()
    snap_biases(model)
