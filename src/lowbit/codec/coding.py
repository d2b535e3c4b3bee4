"""Coding one image with a codec's real entropy coder: pad, ``compress``, ``decompress``, crop.

Works with any ``nn.Module`` with CompressAI's interface (``update``, ``compress(x) -> {"strings", "shape"}``,
``decompress(strings, shape) -> {"x_hat"}``), a quantized codec included, so that rates are always measured
from bitstreams rather than from the likelihoods of the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from lowbit.codec.images import crop, pad_to_stride

# What ``compress`` says ``decompress`` needs besides the strings: one latent size for most CompressAI models; a
# size per latent, or a list of them (one per channel group), for its latent-codec models (checkerboard, ELIC).
LatentShape = Union[tuple[int, ...], dict[str, "LatentShape"], list["LatentShape"]]
MAX_SHAPE_DEPTH = 3  # a dict of lists of sizes at most
MAX_SHAPE_ENTRIES = 64
MAX_SIDE = 1 << 16


def plain_shape(shape: Any) -> LatentShape:
    """``compress``'s shape with torch sizes as tuples (what :class:`Encoded` keeps and a bitstream stores)."""
    if isinstance(shape, dict):
        return {str(k): plain_shape(v) for k, v in shape.items()}
    if isinstance(shape, (list, tuple)) and not all(isinstance(s, int) for s in shape):
        return [plain_shape(s) for s in shape]
    return tuple(int(s) for s in shape)


def torch_shape(shape: LatentShape) -> Any:
    """A plain shape with its sizes as ``torch.Size`` again, as ``decompress`` takes it."""
    if isinstance(shape, dict):
        return {k: torch_shape(v) for k, v in shape.items()}
    if isinstance(shape, list):
        return [torch_shape(s) for s in shape]
    return torch.Size(shape)


def shape_from_json(value: Any, depth: int = 0) -> LatentShape | None:
    """A latent shape read from a file (lists of sizes, lists and objects of them), or None when it is not one:
    sizes of 1-4 positive integers up to ``MAX_SIDE``, nesting and entries bounded."""
    if depth > MAX_SHAPE_DEPTH:
        return None
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
        return tuple(value) if len(value) <= 4 and all(0 < s <= MAX_SIDE for s in value) else None
    if isinstance(value, list) and 0 < len(value) <= MAX_SHAPE_ENTRIES:
        parts = [shape_from_json(v, depth + 1) for v in value]
        return None if any(p is None for p in parts) else parts
    if isinstance(value, dict) and 0 < len(value) <= MAX_SHAPE_ENTRIES:
        parts = {k: shape_from_json(v, depth + 1) for k, v in value.items()}
        return None if any(p is None or len(k) > 64 for k, p in parts.items()) else parts
    return None


@dataclass
class Encoded:
    """The output of a codec's ``compress`` for one image, with the size it had before padding."""

    strings: list[list[bytes]]  # one list per entropy model, one string per batch item (here always one)
    shape: LatentShape  # what ``decompress`` needs besides the strings
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
    return Encoded(strings, plain_shape(out["shape"]), int(height), int(width))


@torch.no_grad()
def decode(model: nn.Module, encoded: Encoded) -> torch.Tensor:
    """The ``(3, H, W)`` reconstruction in [0, 1] (clamped) of :func:`encode` 's output."""
    x_hat = model.decompress(encoded.strings, torch_shape(encoded.shape))["x_hat"]
    return crop(x_hat, encoded.height, encoded.width)[0].clamp(0, 1)
