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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.mixed.allocate import Allocation, Analysis, sized_problem, solve_budget
from lowbit.mixed.budget import Budget

# bisection steps between the smallest and the widest allocation: 2^5 = 32 intervals of log-compression
SEARCH_STEPS = 5
PREDICTION_CHUNK = 256
# a budget solved exactly at a candidate's own size could round just below it and be infeasible
SLACK = 1e-9


@dataclass
class Probe:
    """One candidate the search quantized and classified."""

    weights_cr: float  # the compression the allocation was solved for
    compression: float  # the compression it reached
    changed_pct: float  # held-out images whose top-1 class differs from the float model's
    bit_cfg: list[int]

    def passes(self, max_drop: float) -> bool:
        return self.changed_pct <= max_drop


def split_holdout(images: list[torch.Tensor], calib_images: int, holdout_images: int,
                  batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Calibration batches (the first ``calib_images`` inputs, as a plain run takes them) and the held-out rest."""
    pool = torch.cat(images)
    if len(pool) < calib_images + holdout_images:
        raise LowbitError(f"an accuracy target needs {holdout_images} held-out images beyond the {calib_images} "
                          f"calibration images, and the data holds {len(pool)}; pass more images, or lower "
                          "calib_images or the budget's holdout_images")
    return list(pool[:calib_images].split(batch_size)), pool[calib_images : calib_images + holdout_images]


@torch.no_grad()
def top1_classes(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The predicted class of each image (the model's device, in chunks)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        out = [model(x.to(device)).argmax(dim=1).cpu() for x in images.split(PREDICTION_CHUNK)]
    finally:
        model.train(was_training)
    return torch.cat(out)


def changed_share(model: nn.Module, images: torch.Tensor, reference: torch.Tensor) -> float:
    """Percentage of ``images`` whose top-1 class under ``model`` differs from ``reference``."""
    return 100.0 * (top1_classes(model, images) != reference).float().mean().item()


def smallest_within_drop(float_model: nn.Module, analysis: Analysis, budget: Budget, holdout: torch.Tensor,
                         quantize_with: Callable[[Allocation], nn.Module]) -> nn.Module:
    """The quantized model of the smallest probed allocation that changes at most ``budget.max_drop`` percent of
    ``holdout``'s classes; ``quantize_with`` turns an allocation into a calibrated, frozen model."""
    reference = top1_classes(float_model, holdout)
    sizes = sized_problem(analysis, budget.size_measure).weight_bytes.values()
    smallest = analysis.float_bytes / sum(min(options.values()) for options in sizes)
    widest = analysis.float_bytes / sum(max(options.values()) for options in sizes)
    probes: list[Probe] = []
    seen: dict[tuple[int, ...], Probe] = {}
    best: tuple[Probe, nn.Module, Allocation] | None = None

    def passes(cr: float) -> bool:
        nonlocal best
        allocation = solve_budget(analysis, Budget(weights_cr=cr * (1 - SLACK), bits=budget.bits, size_measure=budget.size_measure))
        key = tuple(allocation.bit_cfg)
        if key not in seen:  # the same widths as an earlier probe would give the same model
            qmodel = quantize_with(allocation)
            seen[key] = Probe(cr, allocation.compression, changed_share(qmodel, holdout, reference), allocation.bit_cfg)
            probes.append(seen[key])
            if seen[key].passes(budget.max_drop) and (best is None or seen[key].compression > best[0].compression):
                best = (seen[key], qmodel, allocation)
        return seen[key].passes(budget.max_drop)

    if not passes(smallest):
        if not passes(widest):
            raise LowbitError(f"with every layer's weights at {max(budget.bits)} bits the model changes the class "
                              f"of {probes[-1].changed_pct:.2f}% of the {len(holdout)} held-out images, more than "
                              f"max_drop {budget.max_drop}; allow wider weights (add 16 to the bits) or activations "
                              "(their width is the config's), or a larger max_drop")
        low, high = math.log(widest), math.log(smallest)  # log-compressions known to pass / to fail
        for _ in range(SEARCH_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if passes(math.exp(middle)) else (low, middle)
    assert best is not None  # the smallest or the widest probe passed
    chosen, qmodel, allocation = best
    record = {**allocation.to_dict(), "budget": budget.to_dict()}
    record["search"] = {"max_drop": budget.max_drop, "holdout_images": len(holdout),
                        "changed_pct": chosen.changed_pct, "probes": [vars(p) for p in probes]}
    qmodel.lowbit_info.extra["mixed"] = record
    return qmodel


def probes_of(mixed: dict) -> list[Probe]:
    """The probes recorded with a model found by :func:`smallest_within_drop` (empty for a size budget)."""
    return [Probe(**p) for p in mixed.get("search", {}).get("probes", [])]

