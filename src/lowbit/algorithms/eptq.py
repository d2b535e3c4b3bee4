"""EPTQ (Gordon et al. 2023, "Enhanced Post-Training Quantization via Label-Free Hessian").

What makes it EPTQ: BRECQ's block reconstruction with a loss that weights each output error by the
label-free Hessian of the task loss with respect to that activation (see :mod:`lowbit.algorithms.hessian`),
so errors the network's prediction is sensitive to cost more. The Hessian diagonals are estimated once on the float model, batched,
for every block output (per sample and channel), normalized to mean 1 per block, and cached; their cost is
recorded separately as ``hessian_seconds``. The optimization runs block by block (EPTQ optimizes the whole
network at once; blocks converge in far fewer steps on a CPU), with activation step sizes learned jointly.
Models torch.fx could not trace get the same Hessians at the outputs of their module-swapped units.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.blocks import block_module, find_blocks
from lowbit.algorithms.hessian import module_output_hessian_diagonals
from lowbit.algorithms.brecq import Brecq, BrecqOptions
from lowbit.algorithms.reconstruct import reconstruct
from lowbit.algorithms.unit import float_copy
from lowbit.algorithms.registry import register
from lowbit.algorithms.swap_reconstruct import CallKey, reconstruct_swapped
from lowbit.algorithms.swap_units import CHUNK, Unit, find_units
from lowbit.errors import LowbitError


@dataclass(frozen=True)
class EptqOptions(BrecqOptions):
    hessian_probes: int = 16  # Hutchinson probes per sample for the Hessian diagonals

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.hessian_probes, bool) or not isinstance(self.hessian_probes, int) or self.hessian_probes < 1:
            raise LowbitError(f"hessian_probes must be a positive integer, got {self.hessian_probes!r}")


class Eptq(Brecq):
    name = "eptq"
    options: EptqOptions


@register("eptq", EptqOptions, "block reconstruction weighted by a label-free Hessian of the task loss")
def run(qmodel: nn.Module, batches: list[torch.Tensor], options: EptqOptions, progress: bool = False) -> None:
    from torch import fx

    from lowbit.algorithms.hessian import activation_hessian_diagonals

    if not isinstance(qmodel, fx.GraphModule):
        _run_swapped(qmodel, batches, options, progress)
        return
    start = time.perf_counter()
    fp = float_copy(qmodel)
    blocks = find_blocks(qmodel)
    stages = [block_module(fp, b) for b in blocks]
    diagonals = activation_hessian_diagonals(stages, torch.cat(batches), options.hessian_probes, seed=options.seed)
    ndims = [out.dim() for out in _output_examples(stages, batches[0][:1])]
    # (N, dim1) diagonals, mean 1 per block, shaped to broadcast against the block outputs
    weights = {b.output: _normalized(d, n) for b, d, n in zip(blocks, diagonals, ndims)}
    hessian_seconds = time.perf_counter() - start

    def weighting(block, idx: torch.Tensor) -> torch.Tensor:
        return weights[block.output][idx].to(next(qmodel.parameters()).device)

    reconstruct(qmodel, batches, Eptq(options), progress, weighting=weighting)
    qmodel.lowbit_info.extra["hessian_seconds"] = round(hessian_seconds, 3)


def _normalized(diagonal: torch.Tensor, ndim: int) -> torch.Tensor:
    """An (N, dim1) diagonal scaled to mean 1 and shaped to broadcast against an ``ndim``-dimensional output."""
    return (diagonal / diagonal.mean().clamp_min(1e-12)).reshape(*diagonal.shape, *([1] * (ndim - 2)))


def _run_swapped(qmodel: nn.Module, batches: list[torch.Tensor], options: EptqOptions, progress: bool) -> None:
    """EPTQ on a module-swapped model: the same label-free Hessians, taken at each unit's output through
    forward hooks on the float model, for every call of the unit, then matched to the samples it caches."""
    start = time.perf_counter()
    device = next(qmodel.parameters()).device
    inputs = torch.cat(batches)
    units = find_units(qmodel, inputs, Eptq.granularity, device)
    fp = float_copy(qmodel)
    diagonals = module_output_hessian_diagonals(fp, [fp.get_submodule(u.output_of()) for u in units], inputs,
                                                options.hessian_probes, CHUNK, options.seed)
    by_unit = dict(zip((u.label for u in units), diagonals))
    del fp
    hessian_seconds = time.perf_counter() - start

    def weighting(unit: Unit, keys: list[CallKey], ndim: int) -> torch.Tensor:
        return _normalized(torch.cat([by_unit[unit.label][c][k] for c, k in keys]), ndim)

    reconstruct_swapped(qmodel, batches, Eptq(options), progress, weighting=weighting, units=units)
    qmodel.lowbit_info.extra["hessian_seconds"] = round(hessian_seconds, 3)


@torch.no_grad()
def _output_examples(stages: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for s in stages:
        x = s(x.to(next(s.parameters()).device))
        outs.append(x)
    return outs
