"""Coding one image with a codec's real entropy coder: pad, ``compress``, ``decompress``, crop.

Works with any ``nn.Module`` with CompressAI's interface (``update``, ``compress(x) -> {"strings", "shape"}``,
``decompress(strings, shape) -> {"x_hat"}``), a quantized codec included, so that rates are always measured
from bitstreams rather than from the likelihoods of the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.codec.images import crop, pad_to_stride


@dataclass
class Encoded:
    """The output of a codec's ``compress`` for one image, with the size it had before padding."""

    strings: list[list[bytes]]  # one list per entropy model, one string per batch item (here always one)
    shape: tuple[int, ...]  # the latent shape ``decompress`` needs
    height: int
    width: int

    @property
    def num_bytes(self) -> int:
        return sum(len(s) for group in self.strings for s in group)


def prepare(model: nn.Module) -> nn.Module:
    """Eval mode, with entropy tables built where the model has none (``update(force=False)``).

    Tables a model already holds are kept: they are what its bitstreams were encoded with, and rebuilding them
    on another machine could change them. Whatever changes the entropy parameters rebuilds the tables itself
    (codec training before saving, ``lowbit.quantize`` after freezing).
    """
    model.eval()
    model.update(force=False)
    return model


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor, stride: int) -> Encoded:
    """Compress ``(3, H, W)`` (or ``(1, 3, H, W)``) in [0, 1]; the model must have been :func:`prepare` d."""
    x = x if x.dim() == 4 else x[None]
    height, width = x.shape[-2:]
    out = model.compress(pad_to_stride(x, stride))
    strings = [list(group) for group in out["strings"]]
    return Encoded(strings, tuple(int(s) for s in out["shape"]), int(height), int(width))


@torch.no_grad()
def decode(model: nn.Module, encoded: Encoded) -> torch.Tensor:
    """The ``(3, H, W)`` reconstruction in [0, 1] (clamped) of :func:`encode` 's output."""
    x_hat = model.decompress(encoded.strings, torch.Size(encoded.shape))["x_hat"]
    return crop(x_hat, encoded.height, encoded.width)[0].clamp(0, 1)
