"""Calibration images on the wrong scale, caught before they set every activation range.

Images scaled differently from the training data (pixels in 0-255 instead of normalized, or worse) calibrate
grids that real inputs never fill, and the quantized model then predicts one class, with nothing to say why. A
trained model records what its training inputs looked like in its batch-norm running statistics: if the
calibration images' variance at the first batch-norm layer is far outside the recorded one, they are refused
with a message naming the likely cause.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.data.bn_statistics import batchnorm_layers
from lowbit.errors import LowbitError
from lowbit.model_mode import evaluating

# Variance ratio (about 30x in standard deviation) beyond which images cannot come from the training pipeline;
# the spread of real batches around the running statistics is within a few times.
MAX_VARIANCE_RATIO = 1e3


def check_input_scale(model: nn.Module, batch: torch.Tensor) -> None:
    """Refuse ``batch`` when its statistics at the model's first batch-norm layer are off by orders of magnitude.

    Models without batch-norm (ViT, MLP-Mixer) record no statistics, and pass unchecked.
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    name, bn = layers[0]
    seen: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float()
        seen.append(x.transpose(0, 1).reshape(x.shape[1], -1).var(dim=1))
        raise _Captured

    handle = bn.register_forward_pre_hook(capture)
    try:
        with evaluating(model), torch.no_grad():
            model(batch.to(bn.running_var.device))
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        return
    ratio = float((seen[0] / (bn.running_var.float() + bn.eps)).median())
    if not MAX_VARIANCE_RATIO ** -1 <= ratio <= MAX_VARIANCE_RATIO:
        raise LowbitError(
            f"calibration images have {ratio:.3g}x the variance the model was trained with (at {name}); they are "
            "not on the training data's scale: normalize them as in training (mean/std, pixels in 0-1)")


class _Captured(Exception):
    """Stops the forward pass once the first batch-norm input is seen."""
