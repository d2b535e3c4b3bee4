"""The covariance of what each weight layer multiplies its weights with, measured on calibration inputs.

A layer's output error from a weight error ``dw`` (one output channel's row) is ``dw . p`` for every input patch
``p`` it sees, so its mean square over the calibration inputs is ``dw^T E[p p^T] dw``. With that matrix, a weight
range can be chosen for the error it causes in the layer's output rather than in the weights themselves: two
weights with the same rounding error matter very differently when one multiplies a large, correlated input.
The mean of ``p`` is removed because bias correction takes out the mean part of the output error.

Patches are the rows of ``F.unfold`` (conv) or the input's last dimension (linear), split by group: a grouped
or depthwise convolution has one matrix per group. A random sample of at most ``ROWS_PER_BATCH`` patches per
batch is kept, so large feature maps cost what small ones do.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.device import model_device
from lowbit.layers import QConv1d, QConv2d, QLinear, QuantLayer

ROWS_PER_BATCH = 4096
COVARIANCE_IMAGES = 128
IMAGES_PER_UNFOLD = 8  # unfolded patches of a whole batch at 224x224 would take gigabytes


def supports_covariance(layer: QuantLayer) -> bool:
    """Layers whose output is a plain product of patches and weight rows (not transposed convs, not GDN)."""
    if type(layer) is QLinear:
        return True
    # unfold pads with zeros by a number of pixels: other padding modes and "same"/"valid" are left out
    return type(layer) in (QConv2d, QConv1d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def layer_patches(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the layer's weight rows multiply, as ``(groups, rows, values per row)`` (for layers
    that :func:`supports_covariance`)."""
    if isinstance(layer, QLinear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(layer, QConv1d):
        x = x.unsqueeze(-1)
        kernel, dilation, stride = ((v[0], 1) for v in (layer.kernel_size, layer.dilation, layer.stride))
        padding = (layer.padding[0], 0)
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if all(v == 1 for v in (*kernel, *stride)) and not any(padding):  # a 1x1 conv: the pixels are the patches
        rows = x.movedim(1, -1).reshape(-1, x.shape[1])
        return rows.reshape(rows.shape[0], layer.groups, -1).transpose(0, 1)
    cols = F.unfold(x, kernel, dilation, padding, stride)  # (N, C_in * k, positions)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return rows.reshape(rows.shape[0], layer.groups, -1).transpose(0, 1)


def _positions(layer: QuantLayer, x: torch.Tensor) -> int:
    """How many patches one input gives the layer (output positions; a linear layer's leading dimensions)."""
    if isinstance(layer, QLinear):
        return max(1, x[0].numel() // x.shape[-1])
    count = 1
    for size, k, d, p, s in zip(x.shape[2:], layer.kernel_size, layer.dilation, layer.padding, layer.stride):
        count *= max(1, (size + 2 * p - d * (k - 1) - 1) // s + 1)
    return count


class _Accumulator:
    """Running sums of ``p p^T`` and ``p`` over sampled patches of one layer."""

    def __init__(self, generator: torch.Generator) -> None:
        self.gen = generator
        self.outer: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, layer: QuantLayer, x: torch.Tensor) -> None:
        x = x.detach().float()
        per_image = _positions(layer, x)
        # unfold only as many images as the sample needs (twice over, so rows still come from several images)
        wanted = min(len(x), -(-2 * ROWS_PER_BATCH // per_image))
        if wanted < len(x):
            x = x[torch.randperm(len(x), generator=self.gen)[:wanted].to(x.device)]
        for chunk in x.split(IMAGES_PER_UNFOLD):
            p = layer_patches(layer, chunk)
            keep = max(1, ROWS_PER_BATCH * len(chunk) // len(x))
            if p.shape[1] > keep:
                p = p[:, torch.randperm(p.shape[1], generator=self.gen)[:keep].to(p.device)]
            outer, total = p.transpose(1, 2) @ p, p.sum(dim=1)
            self.outer = outer if self.outer is None else self.outer + outer
            self.total = total if self.total is None else self.total + total
            self.count += p.shape[1]

    def covariance(self) -> torch.Tensor | None:
        if self.outer is None or self.total is None or self.count == 0:
            return None
        mean = self.total / self.count
        return self.outer / self.count - mean[:, :, None] * mean[:, None, :]


def input_covariances(model: nn.Module, batches: Iterable[torch.Tensor], layers: list[tuple[str, QuantLayer]],
                      seed: int = 0) -> dict[str, torch.Tensor]:
    """Per named layer, the ``(groups, d, d)`` covariance of its input patches over up to
    ``COVARIANCE_IMAGES`` calibration images, measured through the model as it runs now (call it before any
    quantizer is switched on to measure the float model's inputs)."""
    layers = [(name, layer) for name, layer in layers if supports_covariance(layer)]
    gen = torch.Generator().manual_seed(seed)
    sums = {name: _Accumulator(gen) for name, _ in layers}

    def hook(name: str):
        def record(module: QuantLayer, inputs: tuple, _output: torch.Tensor) -> None:
            sums[name].add(module, inputs[0])
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers]
    device, seen = model_device(model), 0
    try:
        with torch.no_grad():
            for x in batches:
                if seen >= COVARIANCE_IMAGES:
                    break
                model(x[: COVARIANCE_IMAGES - seen].to(device))
                seen += len(x)
    finally:
        for h in handles:
            h.remove()
    found = {name: acc.covariance() for name, acc in sums.items()}
    return {name: cov for name, cov in found.items() if cov is not None}
