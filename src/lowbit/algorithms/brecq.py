"""BRECQ (Li et al. 2021): block reconstruction of residual, inverted-residual and transformer blocks, with the
activation step sizes inside each block learned jointly with the weight rounding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.reconstruct import ReconstructionOptions, reconstruct


@dataclass(frozen=True)
class BrecqOptions(ReconstructionOptions):
    learn_act_scale: bool = True


def run(qmodel: nn.Module, batches: list[torch.Tensor], options: BrecqOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, options, progress, name="brecq")
