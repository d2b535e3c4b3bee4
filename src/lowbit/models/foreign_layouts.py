"""Checkpoints saved by other projects for a zoo architecture, renamed into the zoo's own keys.

BRECQ (and the QDrop and OMPQ code built on it) publishes ImageNet weights for its own MobileNet-V2, whose
inverted-residual blocks keep convolutions and batch-norms in one flat ``conv`` Sequential (``features.3.conv.4``)
where torchvision nests them (``features.3.conv.1.1``); every tensor is the same, only the names differ. A
layout is recognised from the keys alone and only renames them: shapes and values are then checked as for any
checkpoint.
"""

from __future__ import annotations

import re

import torch

# flat BRECQ index -> torchvision path, for blocks without expansion (dw, bn, relu, pw, bn) and with it
# (pw, bn, relu, dw, bn, relu, pw, bn); the ReLU6 positions hold no tensors
_NO_EXPANSION = {0: "0.0", 1: "0.1", 3: "1", 4: "2"}
_EXPANSION = {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
_BLOCK_KEY = re.compile(r"features\.(\d+)\.conv\.(\d+)\.(.+)")


def _is_brecq_mobilenet_v2(state: dict[str, torch.Tensor]) -> bool:
    """BRECQ's layout has a 4-D convolution weight directly at ``features.1.conv.0``."""
    weight = state.get("features.1.conv.0.weight")
    return weight is not None and weight.dim() == 4 and "features.1.conv.0.0.weight" not in state


def from_brecq_mobilenet_v2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BRECQ's MobileNet-V2 keys as torchvision's (other keys, the stem, last conv and classifier, already agree)."""
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)) and int(m.group(2)) > 4}
    renamed = {}
    for key, value in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match is None:
            renamed[key] = value
            continue
        block, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        table = _EXPANSION if block in expanded else _NO_EXPANSION
        renamed[f"features.{block}.conv.{table.get(index, index)}.{rest}"] = value
    return renamed


def to_zoo_layout(architecture: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` renamed into the zoo's keys when it is a known foreign layout of ``architecture``."""
    if architecture == "mobilenet_v2" and _is_brecq_mobilenet_v2(state):
        return from_brecq_mobilenet_v2(state)
    return state
