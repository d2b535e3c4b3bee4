"""The seam between the reconstruction engine and the learned-rounding methods.

Every method optimizes soft rounding variables so that a quantized unit (one layer, or a block of layers)
reproduces its float output (:mod:`lowbit.algorithms.reconstruct`). What makes AdaRound, BRECQ, QDrop or EPTQ
differ is said through a :class:`RoundingMethod`'s hooks:

- ``granularity``: what is optimized together, each layer alone or whole blocks;
- ``learned_step_sizes``: which activation step sizes are optimized with the rounding, and at what rate;
- ``step_input`` and ``during_optimization``: what happens to activations while a unit is optimized;
- the loss weights, passed to the engine by the method that computes them (EPTQ's Hessians).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ContextManager, Literal

import torch
from torch import nn

from lowbit.algorithms.activation_cache import CacheSetting, check_cache_setting
from lowbit.errors import LowbitError
from lowbit.quantizer import Quantizer

Granularity = Literal["layer", "block"]


def check_non_negative(options: object, *names: str) -> None:
    """A one-line error unless each named option is a finite number >= 0."""
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LowbitError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class RoundingOptions:
    """What every learned-rounding method takes: how long and how fast the rounding variables are optimized.

    The papers run 20k steps per block at a rounding learning rate of 1e-3; a 10x higher rate lets the
    rounding variables settle at 0/1 within ~1k steps, which is what makes CPU runs practical.
    """

    iters: int = 1000
    batch_size: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    cache: CacheSetting = "auto"  # where cached unit inputs live: auto, device, cpu or disk (memory-mapped)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise LowbitError(f"iters and batch_size must be positive, got {self.iters} and {self.batch_size}")
        check_non_negative(self, "lr", "reg_weight", "warmup", "beta_start", "beta_end")
        if self.lr == 0 or self.warmup > 1:
            raise LowbitError(f"lr must be above 0 and warmup at most 1, got lr={self.lr}, warmup={self.warmup}")
        check_cache_setting(self.cache)


class RoundingMethod:
    """The engine's hooks, each with the default of plain reconstruction: layer or block outputs matched with
    only the weight rounding optimized, activations quantized as calibrated."""

    name = "reconstruct"
    granularity: Granularity = "block"

    def __init__(self, options: RoundingOptions) -> None:
        self.options = options

    def learned_step_sizes(self, quantizers: list[Quantizer]) -> tuple[list[nn.Parameter], float]:
        """The activation step sizes optimized together with the rounding, and their learning rate."""
        return [], 0.0

    def step_input(self, x_q: torch.Tensor, x_fp: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """The unit input one optimization step sees, from the quantized model's (and the float model's,
        where the engine has it) input for the step's samples."""
        return x_q

    def during_optimization(self, quantizers: list[Quantizer]) -> ContextManager:
        """A context in force while a unit is optimized (and lifted before its result is checked)."""
        return contextlib.nullcontext()
