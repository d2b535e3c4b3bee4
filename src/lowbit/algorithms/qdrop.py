"""QDrop (Wei et al. 2022): block reconstruction in which activation quantization is randomly dropped
(each element keeps its float value with probability ``drop_prob``), inside the block and at its input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.reconstruct import ReconstructionOptions, reconstruct


@dataclass(frozen=True)
class QDropOptions(ReconstructionOptions):
    drop_prob: float = 0.5
    learn_act_scale: bool = True


def run(qmodel: nn.Module, batches: list[torch.Tensor], options: QDropOptions, progress: bool = False) -> None:
    reconstruct(qmodel, batches, options, progress, name="qdrop")
