"""Rounding / range-refinement algorithms, registered by name.

Each algorithm is one file with an options dataclass and ``run(qmodel, batches, options, progress)``; it
receives a calibrated model (weight and activation grids set) and improves its rounding in place.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from torch import nn

from lowbit.algorithms import adaround, brecq, eptq, nearest, qdrop
from lowbit.errors import LowbitError


@dataclass(frozen=True)
class Algorithm:
    """A registered method: its options type and its entry point."""

    options_type: type
    run: Callable[[nn.Module, list[torch.Tensor], Any, bool], None]


ALGORITHMS: dict[str, Algorithm] = {
    "nearest": Algorithm(nearest.NearestOptions, nearest.run),
    "adaround": Algorithm(adaround.AdaRoundOptions, adaround.run),
    "brecq": Algorithm(brecq.BrecqOptions, brecq.run),
    "qdrop": Algorithm(qdrop.QDropOptions, qdrop.run),
    "eptq": Algorithm(eptq.EptqOptions, eptq.run),
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``, or a one-line error listing the known ones."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise LowbitError(f"unknown method {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None


def make_options(name: str, options: Mapping[str, Any], seed: int = 0) -> Any:
    """Build the options dataclass of ``name`` from keyword options, rejecting unknown keys clearly.

    A method with a ``seed`` option takes the run's seed unless one is given explicitly.
    """
    algo = get_algorithm(name)
    if "seed" in {f.name for f in fields(algo.options_type)}:
        options = {"seed": seed, **options}
    try:
        return algo.options_type(**options)
    except TypeError as exc:
        raise LowbitError(f"bad option for method {name!r} ({exc}); see `lowbit quantize --help`") from None
