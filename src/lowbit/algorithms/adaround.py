"""AdaRound (Nagel et al. 2020): layer-by-layer learned rounding against each layer's float output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lowbit.algorithms.reconstruct import ReconstructionOptions, reconstruct


@dataclass(frozen=True)
class AdaRoundOptions(ReconstructionOptions):
    """Layer-wise; activation step sizes stay as calibrated."""

    granularity: Literal["layer", "block"] = "layer"
    learn_act_scale: bool = False


def run(qmodel: nn.Module, batches: list[torch.Tensor], options: AdaRoundOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, options, progress, name="adaround")
