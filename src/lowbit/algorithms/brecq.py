"""BRECQ (Li et al. 2021): block reconstruction of residual, inverted-residual and transformer blocks.

What makes it BRECQ: the unit is a block, so the rounding of its layers is learned jointly against the
block's float output, and the activation step sizes inside the block are learned with it (LSQ-style).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.method import RoundingMethod, RoundingOptions, check_non_negative
from lowbit.algorithms.reconstruct import reconstruct
from lowbit.algorithms.registry import register
from lowbit.quantizer import Quantizer


@dataclass(frozen=True)
class BrecqOptions(RoundingOptions):
    act_lr: float = 4e-5  # learning rate of the activation step sizes
    learn_act_scale: bool = True  # False: the step sizes stay as calibrated

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative(self, "act_lr")


class Brecq(RoundingMethod):
    name = "brecq"
    granularity = "block"
    options: BrecqOptions

    def learned_step_sizes(self, quantizers: list[Quantizer]) -> tuple[list[nn.Parameter], float]:
        if not self.options.learn_act_scale:
            return [], 0.0
        return [q.learn_scale() for q in quantizers], self.options.act_lr


@register("brecq", BrecqOptions, "block reconstruction with learned activation step sizes")
def run(qmodel: nn.Module, batches: list[torch.Tensor], options: BrecqOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, Brecq(options), progress)
