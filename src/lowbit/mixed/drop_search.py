"""The smallest mixed-precision model whose top-1 classes stay within a given share of the float model's.

A size budget makes the user guess how small a model may get before it breaks; an accuracy target asks the
question the other way round, as accuracy-aware quantization does in other tools. lowbit answers it without
labels: images set aside from the calibration data (never used to calibrate or to score layers) are classified
by the float model, and a candidate passes when at most ``max_drop`` percent of them change class. A changed
class is the only way top-1 can drop, so the share bounds the drop from above on those images.

The candidates are the least-sensitivity allocations of one analysis at different weight compressions, so the
layers are scored once. The search first tries the smallest (every free layer at the lowest width) and the
widest; between them it bisects the compression ratio on a log scale, each step one full quantization with the
configured method, and keeps the smallest candidate that passed. Bisection assumes that a smaller allocation
does not change fewer classes, which holds in general, not for every step; the probes are recorded with the
model so that a user can see the curve the answer came from.

When even the widest weights change too many classes, the activation grids are what is left: as accuracy-aware
tools return layers to float, the search keeps the widest weights and leaves out the fewest activation grids
that meet the target, ranked by how far each alone moves the outputs on calibration images, by bisection on
their number. Those layers then read float inputs, which costs speed in a runtime, not size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lowbit.config import Override
from lowbit.device import model_device
from lowbit.errors import LowbitError
from lowbit.graph import activation_quantizers
from lowbit.mixed.allocate import Allocation, Analysis, sized_problem, solve_budget
from lowbit.mixed.budget import Budget
from lowbit.model_mode import evaluating

# bisection steps between the smallest and the widest allocation: 2^5 = 32 intervals of log-compression
SEARCH_STEPS = 5
PREDICTION_CHUNK = 256
QuantizeWith = Callable[[Allocation, tuple[Override, ...]], nn.Module]
# a budget solved exactly at a candidate's own size could round just below it and be infeasible
SLACK = 1e-9


@dataclass
class Probe:
    """One candidate the search quantized and classified."""

    weights_cr: float  # the compression the allocation was solved for
    compression: float  # the compression it reached
    changed_pct: float  # held-out images whose top-1 class differs from the float model's
    bit_cfg: list[int]
    float_activations: int = 0  # activation grids left out (the second stage, see module docstring)

    def passes(self, max_drop: float) -> bool:
        return self.changed_pct <= max_drop


def split_holdout(images: list[torch.Tensor], calib_images: int, holdout_images: int,
                  batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Calibration batches (the first ``calib_images`` inputs, as a plain run takes them) and the held-out rest."""
    pool = torch.cat(images)
    if len(pool) < calib_images + holdout_images:
        raise LowbitError(f"an accuracy target needs {holdout_images} held-out images beyond the {calib_images} "
                          f"calibration images, and the data holds {len(pool)}; pass more images (--n-images for "
                          "synthesized ones), or lower calib_images (--calib-images) or the budget's holdout_images "
                          "(--holdout-images)")
    return list(pool[:calib_images].split(batch_size)), pool[calib_images : calib_images + holdout_images]


@torch.no_grad()
def top1_classes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The predicted class of each image (the model's device, in chunks)."""
    device = model_device(model)
    with evaluating(model):
        out = [model(x.to(device)).argmax(dim=1).cpu() for x in images.split(PREDICTION_CHUNK)]
    return torch.cat(out)


def changed_share(model: nn.Module, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Percentage of ``images`` whose top-1 class under ``model`` differs from ``reference``."""
    return 100.0 * (top1_classes(model, images) != reference).float().mean().item()


def smallest_within_drop(float_model: nn.Module, analysis: Analysis, budget: Budget, holdout: torch.Tensor,
                         ranking_images: torch.Tensor, quantize_with: QuantizeWith) -> nn.Module:
    """The quantized model of the smallest probed candidate that changes at most ``budget.max_drop`` percent of
    ``holdout``'s classes. ``quantize_with`` turns an allocation and extra overrides into a calibrated, frozen
    model; ``ranking_images`` (calibration images) rank activation grids when even the widest weights fail."""
    search = _Search(float_model, analysis, budget, holdout, quantize_with)
    if not search.passes(search.smallest):
        if search.passes(search.widest):
            search.bisect_compression()
        else:
            search.leave_activations_float(ranking_images)
    return search.result()


class _Search:
    """The candidates probed so far and the best that passed: most compressed, then fewest float activations."""

    def __init__(self, float_model: nn.Module, analysis: Analysis, budget: Budget, holdout: torch.Tensor,
                 quantize_with: QuantizeWith) -> None:
        self.float_model, self.analysis, self.budget, self.holdout = float_model, analysis, budget, holdout
        self.quantize_with = quantize_with
        self.reference = top1_classes(float_model, holdout)
        sizes = sized_problem(analysis, budget.size_measure).weight_bytes.values()
        self.smallest = analysis.float_bytes / sum(min(options.values()) for options in sizes)
        self.widest = analysis.float_bytes / sum(max(options.values()) for options in sizes)
        self.probes: list[Probe] = []
        self.seen: dict[tuple, Probe] = {}
        self.best: tuple[Probe, nn.Module, Allocation] | None = None
        self.last: nn.Module | None = None  # the last model quantized

    def passes(self, cr: float, kept_float: list[str] | tuple[str, ...] = ()) -> bool:
        """Whether the least-sensitivity allocation at compression ``cr``, with the activation grids
        ``kept_float`` left out, changes few enough held-out classes."""
        budget = Budget(weights_cr=cr * (1 - SLACK), bits=self.budget.bits, size_measure=self.budget.size_measure)
        allocation = solve_budget(self.analysis, budget)
        key = (tuple(allocation.bit_cfg), tuple(kept_float))
        if key not in self.seen:  # the same widths as an earlier probe would give the same model
            qmodel = self.quantize_with(allocation, tuple(Override(name, keep_float=True) for name in kept_float))
            probe = Probe(cr, allocation.compression, changed_share(qmodel, self.holdout, self.reference),
                          allocation.bit_cfg, len(kept_float))
            self.seen[key], self.last = probe, qmodel
            self.probes.append(probe)
            rank = (probe.compression, -probe.float_activations)
            if probe.passes(self.budget.max_drop) and (
                    self.best is None or rank > (self.best[0].compression, -self.best[0].float_activations)):
                self.best = (probe, qmodel, allocation)
        return self.seen[key].passes(self.budget.max_drop)

    def bisect_compression(self) -> None:
        """Between the widest allocation (passed) and the smallest (failed), on a log scale."""
        low, high = math.log(self.widest), math.log(self.smallest)
        for _ in range(SEARCH_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if self.passes(math.exp(middle)) else (low, middle)

    def leave_activations_float(self, images: torch.Tensor) -> None:
        """The widest weights with the fewest activation grids left out, those that move the outputs most first
        (ranked on ``images`` in the widest model, which the last probe quantized)."""
        order = activation_ranking(self.last, self.float_model, images)
        if not self.passes(self.widest, order):
            raise LowbitError(f"even with {max(self.budget.bits)}-bit weights and float activations the model "
                              f"changes the class of {self.probes[-1].changed_pct:.2f}% of the {len(self.holdout)} "
                              f"held-out images, more than max_drop {self.budget.max_drop}; allow wider weights "
                              "(add 16 to the bits) or a larger max_drop")
        low, high = 0, len(order)  # how many of the first grids to leave out: too few / enough
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if self.passes(self.widest, order[:middle]) else (middle, high)

    def result(self) -> nn.Module:
        assert self.best is not None  # every path above either found a passing candidate or raised
        chosen, qmodel, allocation = self.best
        record = {**allocation.to_dict(), "budget": self.budget.to_dict()}
        record["search"] = {"max_drop": self.budget.max_drop, "holdout_images": len(self.holdout),
                            "changed_pct": chosen.changed_pct, "float_activations": chosen.float_activations,
                            "probes": [vars(p) for p in self.probes]}
        qmodel.lowbit_info.extra["mixed"] = record
        return qmodel


@torch.no_grad()
def activation_ranking(qmodel: nn.Module, float_model: nn.Module, images: torch.Tensor) -> list[str]:
    """``qmodel``'s activation quantizers, the one whose grid moves the outputs furthest from the float model's
    first: each is switched off alone and the mean squared distance of the outputs measured again."""
    images = images.to(model_device(qmodel))

    def distance() -> float:
        return (qmodel(images) - target).pow(2).mean().item()

    with evaluating(qmodel, float_model):
        target = float_model(images)
        base, gains = distance(), {}
        for name, quantizer in activation_quantizers(qmodel):
            if quantizer.state != "quantize":
                continue
            quantizer.state = "off"
            gains[name] = base - distance()
            quantizer.state = "quantize"
    return sorted(gains, key=lambda name: -gains[name])


def probes_of(mixed: dict) -> list[Probe]:
    """The probes recorded with a model found by :func:`smallest_within_drop` (empty for a size budget)."""
    return [Probe(**p) for p in mixed.get("search", {}).get("probes", [])]

