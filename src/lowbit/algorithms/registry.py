"""The rounding-method registry: every method registers itself, with its options type, next to its code.

A method receives a calibrated model (weight and activation grids set) and improves its rounding in place.
CLI choices and help are read from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

import torch
from torch import nn

from lowbit.errors import LowbitError
from lowbit.registry import Registry

# (calibrated quantized model, calibration batches, the method's options, show progress) -> None
Runner = Callable[[nn.Module, list[torch.Tensor], Any, bool], None]


@dataclass(frozen=True)
class Algorithm:
    """A registered method: its options type, its entry point, and one line for ``--help``."""

    options_type: type
    run: Runner
    summary: str


ALGORITHMS: Registry[Algorithm] = Registry("method")


def register(name: str, options_type: type, summary: str) -> Callable[[Runner], Runner]:
    """Decorator adding ``run(qmodel, batches, options, progress)`` as the method ``name``."""
    def add(run: Runner) -> Runner:
        ALGORITHMS.add(name, Algorithm(options_type, run, summary))
        return run
    return add


def get_algorithm(name: str) -> Algorithm:
    """The method called ``name``, or a one-line error listing the known ones."""
    return ALGORITHMS.get(name)


def make_options(name: str, options: Mapping[str, Any], seed: int = 0) -> Any:
    """Build the options dataclass of ``name`` from keyword options, rejecting unknown keys clearly.

    A method with a ``seed`` option takes the run's seed unless one is given explicitly.
    """
    algo = get_algorithm(name)
    known = {f.name for f in fields(algo.options_type)}
    if "seed" in known:
        options = {"seed": seed, **options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LowbitError(f"method {name!r} has no option {', '.join(unknown)}; its options: "
                          f"{', '.join(sorted(known)) or 'none'}")
    return algo.options_type(**options)
