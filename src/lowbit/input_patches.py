"""The input patches of each weight layer, and their covariance measured on calibration inputs.

Patches are the rows of ``F.unfold`` (conv) or the input's last dimension (linear), split by group: a grouped
or depthwise convolution has one matrix per group. A transposed convolution is the convolution of its input with
zeros inserted between pixels, by the flipped kernel: its patches are unfolded from that input and flipped back,
so that they line up with its own weight rows. A random sample of patches is kept (``MATRIX_ROWS`` over
the images, or ``FACTOR_ROWS`` for rows longer than ``MATRIX_LIMIT``, kept as patches rather than a d x d
matrix), so large feature maps and wide layers cost about what small ones do. What the covariance is for:
:mod:`lowbit.input_covariance`.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.device import model_device
from lowbit.input_covariance import InputCovariance
from lowbit.layers import QConv1d, QConv2d, QConvTranspose2d, QLinear, QuantLayer

COVARIANCE_IMAGES = 128
MATRIX_ROWS = 8192  # patches sampled from those images for a covariance matrix
MATRIX_LIMIT = 1024  # longer rows keep FACTOR_ROWS patches instead of a d x d matrix
FACTOR_ROWS = 1024
IMAGES_PER_UNFOLD = 8  # unfolded patches of a whole batch at 224x224 would take gigabytes


def supports_covariance(layer: QuantLayer) -> bool:
    """Layers whose output is a plain product of patches and weight rows (not GDN)."""
    if type(layer) is QLinear:
        return True
    if type(layer) is QConvTranspose2d:  # one weight row per output channel only without groups
        return layer.groups == 1 and layer.padding_mode == "zeros"
    # unfold pads with zeros by a number of pixels: other padding modes and "same"/"valid" are left out
    return type(layer) in (QConv2d, QConv1d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def layer_patches(layer: QuantLayer, x: torch.Tensor) -> torch.Tensor:
    """The input vectors the layer's weight rows multiply, as ``(groups, rows, values per row)`` (for layers
    that :func:`supports_covariance`)."""
    if isinstance(layer, QLinear):
        return x.reshape(1, -1, x.shape[-1])
    if isinstance(layer, QConvTranspose2d):
        return _transposed_patches(layer, x)
    if isinstance(layer, QConv1d):
        x = x.unsqueeze(-1)
        kernel, dilation, stride = ((v[0], 1) for v in (layer.kernel_size, layer.dilation, layer.stride))
        padding = (layer.padding[0], 0)
    else:
        kernel, dilation, padding, stride = layer.kernel_size, layer.dilation, layer.padding, layer.stride
    if all(v == 1 for v in (*kernel, *stride)) and not any(padding):  # a 1x1 conv: the pixels are the patches
        rows = x.movedim(1, -1).reshape(-1, x.shape[1])
    else:
        cols = F.unfold(x, kernel, dilation, padding, stride)  # (N, C_in * k, positions)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return rows.reshape(rows.shape[0], layer.groups, -1).transpose(0, 1)


def _transposed_patches(layer: QConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """Patches of a transposed convolution (groups 1), ordered like its weight rows ``weight[:, out]``."""
    n, channels, height, width = x.shape
    (sh, sw), (kh, kw), (dh, dw) = layer.stride, layer.kernel_size, layer.dilation
    spread = x.new_zeros(n, channels, (height - 1) * sh + 1, (width - 1) * sw + 1)
    spread[:, :, ::sh, ::sw] = x
    # what the transposed conv pads (negative: crops) on each side; output padding adds rows at the far end only
    top, left = dh * (kh - 1) - layer.padding[0], dw * (kw - 1) - layer.padding[1]
    spread = F.pad(spread, (left, left + layer.output_padding[1], top, top + layer.output_padding[0]))
    cols = F.unfold(spread, (kh, kw), (dh, dw))  # (N, C_in * kh * kw, positions), flipped kernel order
    cols = cols.reshape(n, channels, kh, kw, -1).flip(2, 3).reshape(n, channels * kh * kw, -1)
    return cols.transpose(1, 2).reshape(1, -1, channels * kh * kw)


def _positions(layer: QuantLayer, x: torch.Tensor) -> int:
    """How many patches one input gives the layer (output positions; a linear layer's leading dimensions)."""
    if isinstance(layer, QLinear):
        return max(1, x[0].numel() // x.shape[-1])
    count = 1
    if isinstance(layer, QConvTranspose2d):
        for size, k, d, p, s, extra in zip(x.shape[2:], layer.kernel_size, layer.dilation, layer.padding,
                                           layer.stride, layer.output_padding):
            count *= max(1, (size - 1) * s - 2 * p + d * (k - 1) + extra + 1)
        return count
    for size, k, d, p, s in zip(x.shape[2:], layer.kernel_size, layer.dilation, layer.padding, layer.stride):
        count *= max(1, (size + 2 * p - d * (k - 1) - 1) // s + 1)
    return count


class _Accumulator:
    """Sampled patches of one layer: running sums of ``p p^T`` and ``p``, or for long rows the patches themselves."""

    def __init__(self, generator: torch.Generator) -> None:
        self.gen = generator
        self.outer: torch.Tensor | None = None
        self.total: torch.Tensor | None = None
        self.kept: list[torch.Tensor] = []
        self.count = 0

    def add(self, layer: QuantLayer, x: torch.Tensor) -> None:
        x = x.detach().float()
        d = _row_length(layer)
        budget = (MATRIX_ROWS if d <= MATRIX_LIMIT else FACTOR_ROWS) * len(x) / COVARIANCE_IMAGES
        # unfold only as many images as the sample needs (twice over, so rows still come from several images)
        wanted = min(len(x), max(1, math.ceil(2 * budget / _positions(layer, x))))
        if wanted < len(x):
            x = x[torch.randperm(len(x), generator=self.gen)[:wanted].to(x.device)]
        for chunk in x.split(IMAGES_PER_UNFOLD):
            p = layer_patches(layer, chunk)
            keep = max(1, math.ceil(budget * len(chunk) / len(x)))
            if p.shape[1] > keep:
                p = p[:, torch.randperm(p.shape[1], generator=self.gen)[:keep].to(p.device)]
            self.count += p.shape[1]
            if d > MATRIX_LIMIT:
                self.kept.append(p)
                continue
            outer, total = p.transpose(1, 2) @ p, p.sum(dim=1)
            self.outer = outer if self.outer is None else self.outer + outer
            self.total = total if self.total is None else self.total + total

    def covariance(self) -> InputCovariance | None:
        if self.count == 0:
            return None
        if self.kept:
            p = torch.cat(self.kept, dim=1)
            return InputCovariance(factor=(p - p.mean(dim=1, keepdim=True)) / math.sqrt(p.shape[1]))
        mean = self.total / self.count  # type: ignore[operator]
        return InputCovariance(matrix=self.outer / self.count - mean[:, :, None] * mean[:, None, :])


def _row_length(layer: QuantLayer) -> int:
    """Values per weight row: the weight's size over its output channels (on the grid's axis: 1 for a
    transposed conv)."""
    weight = layer.weight
    return weight.numel() // weight.shape[layer.weight_quant.spec.channel_axis(weight.dim())]


def input_covariances(model: nn.Module, batches: Iterable[torch.Tensor], layers: list[tuple[str, QuantLayer]],
                      seed: int = 0) -> dict[str, InputCovariance]:
    """Per named layer, the covariance of its input patches over up to
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
