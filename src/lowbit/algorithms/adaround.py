"""AdaRound (Nagel et al. 2020): each weight layer's rounding learned alone, against that layer's float output.

What makes it AdaRound: the unit is one layer, and nothing but the weight rounding is optimized (activation
step sizes stay as calibrated).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.method import RoundingMethod, RoundingOptions
from lowbit.algorithms.reconstruct import reconstruct
from lowbit.algorithms.registry import register


@dataclass(frozen=True)
class AdaRoundOptions(RoundingOptions):
    """AdaRound has only the options every learned-rounding method has."""


class AdaRound(RoundingMethod):
    name = "adaround"
    granularity = "layer"


@register("adaround", AdaRoundOptions, "learned rounding, layer by layer")
def run(qmodel: nn.Module, batches: list[torch.Tensor], options: AdaRoundOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, AdaRound(options), progress)
