"""A model in eval mode for a block of code, then in the mode it was in: evaluation, calibration checks and
image synthesis read a user's model without changing how it behaves afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """``models`` in eval mode (batch-norm statistics and dropout fixed) for the block, as they were after it."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
