"""Round-to-nearest: the calibrated grids are used as they are (nothing to optimize)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.registry import register


@dataclass(frozen=True)
class NearestOptions:
    """Round-to-nearest has no options."""


@register("nearest", NearestOptions, "round to nearest (default; with bias correction)")
def run(qmodel: nn.Module, batches: list[torch.Tensor], options: NearestOptions, progress: bool = False) -> None:
    """Nothing to do: each weight is rounded to its nearest grid point when the model is frozen."""
