"""QDrop (Wei et al. 2022): block reconstruction in which activation quantization is randomly dropped.

What makes it QDrop: on top of BRECQ, while a block is optimized each element of each activation inside it
keeps its unquantized value with probability ``drop_prob``, and each element of the block's input is taken
from the float model with the same probability, so the rounding is learned for a flatter neighbourhood of
the quantized activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ContextManager

import torch
from torch import nn

from lowbit.algorithms.brecq import Brecq, BrecqOptions
from lowbit.algorithms.reconstruct import reconstruct
from lowbit.algorithms.registry import register
from lowbit.errors import LowbitError
from lowbit.hooks import removed_on_exit
from lowbit.quantizer import Quantizer


@dataclass(frozen=True)
class QDropOptions(BrecqOptions):
    drop_prob: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.drop_prob, bool) or not isinstance(self.drop_prob, (int, float)) \
                or not 0.0 <= self.drop_prob < 1.0:
            raise LowbitError(f"drop_prob must be in [0, 1), got {self.drop_prob!r}")


def _drop(quantizer: Quantizer, args: tuple, out: torch.Tensor, p: float) -> torch.Tensor:
    """Forward hook: each element of a static quantizer's output goes back to its input value with prob. p."""
    x = args[0]
    if quantizer.state != "quantize" or not isinstance(x, torch.Tensor) or not x.is_floating_point() \
            or quantizer.spec.is_fp16 or quantizer.spec.dynamic:
        return out
    return torch.where(torch.rand_like(x) < p, x, out)


class QDrop(Brecq):
    name = "qdrop"
    options: QDropOptions

    def step_input(self, x_q: torch.Tensor, x_fp: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        if self.options.drop_prob == 0 or x_fp is None:
            return x_q
        keep_float = torch.rand(x_q.shape, generator=gen).to(x_q.device) < self.options.drop_prob
        return torch.where(keep_float, x_fp, x_q)

    def during_optimization(self, quantizers: list[Quantizer]) -> ContextManager:
        p = self.options.drop_prob
        return removed_on_exit([q.register_forward_hook(lambda m, a, o: _drop(m, a, o, p)) for q in quantizers]
                               if p > 0 else [])


@register("qdrop", QDropOptions, "block reconstruction with randomly dropped activation quantization")
def run(qmodel: nn.Module, batches: list[torch.Tensor], options: QDropOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, QDrop(options), progress)
