"""OMPQ's ``bit_cfg``: one weight width per quantized layer, in model order.

``lowbit mixed`` prints the list it chose and ``lowbit quantize --bit-cfg`` takes one back, so an allocation
found once (by lowbit, or by OMPQ's own search written the same way) can be quantized again with any method.
The order is the order in which the prepared model lists its quantized layers, the order of the allocation
table.
"""

from __future__ import annotations

import json
from dataclasses import replace

from torch import nn

from lowbit.config import Override, QuantConfig
from lowbit.errors import LowbitError
from lowbit.graph import prepare
from lowbit.layers import quant_layers
from lowbit.spec import check_bits


def parse_bit_cfg(text: str) -> list[int]:
    """``"[8, 4, 4, 2]"`` or ``"8,4,4,2"`` as a list of widths (2-16 each)."""
    try:
        values = json.loads(text) if text.strip().startswith("[") else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if not isinstance(values, list) or not values:
        raise LowbitError(f"bad --bit-cfg {text[:60]!r}; write one width per layer, e.g. [8,4,4,2,8]")
    return [int(check_bits(v, "--bit-cfg entry")) for v in values]


def layer_order(model: nn.Module, config: QuantConfig) -> list[str]:
    """Names of the layers ``config`` quantizes in ``model``, in the order a ``bit_cfg`` lists them."""
    return [name for name, _ in quant_layers(prepare(model, config))]


def apply_bit_cfg(model: nn.Module, config: QuantConfig, bit_cfg: list[int]) -> QuantConfig:
    """``config`` with each layer's weights at its ``bit_cfg`` width (ahead of every other override)."""
    names = layer_order(model, config)
    if len(bit_cfg) != len(names):
        raise LowbitError(f"--bit-cfg has {len(bit_cfg)} widths but the model has {len(names)} quantized layers "
                          f"({names[0]} ... {names[-1]}); give one width per layer, in that order")
    overrides = tuple(Override(name, weights=config.weights_at(bits)) for name, bits in zip(names, bit_cfg))
    return replace(config, overrides=overrides + tuple(config.overrides))
