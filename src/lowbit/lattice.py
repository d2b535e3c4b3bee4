"""Activations that take only evenly spaced values get a grid that represents them exactly.

Some tensors are discrete before any quantizer sees them: an image read from 8-bit pixels takes the values
``k/255``, and a learned codec's decoder reads rounded latents, which are integers. A range-based grid (min/max,
MSE) spreads its levels over the observed range and so puts most of these values *between* grid points: on a
codec's decoder input that costs more than any other activation of the network. When every calibration value
lies on one lattice ``k * step`` (0 included) whose span fits in the integer grid, the grid with that step
reproduces the tensor exactly; the spare levels are split on both sides, so values beyond the calibrated range
stay exact too.

Detection keeps the set of distinct values seen, and gives up (for good) as soon as there are more of them than
the grid has levels; a continuous activation is ruled out on its first batch by small samples.
"""

from __future__ import annotations

import torch

# Evenly strided samples of each batch looked at first, smallest first; more than PROBE_DISTINCT distinct values
# in one (or more than the grid has levels) rule a lattice out without sorting the whole batch: a continuous
# activation fails the first, a sparse one (mostly zeros after a ReLU) the second. Wider lattices go undetected:
# they only occur with 16-bit grids, whose rounding error is negligible anyway.
PROBE_SIZES = (4096, 65536)
PROBE_DISTINCT = 1024
# How far from an integer ``value / step`` may land (float rounding of e.g. k/255) and still be on the lattice.
TOLERANCE = 1e-3


class LatticeTracker:
    """Whether the values observed so far all lie on one evenly spaced lattice through 0, and its step."""

    def __init__(self, qmin: int, qmax: int, symmetric: bool) -> None:
        """The integer grid a lattice must fit in: codes ``qmin..qmax``, zero point 0 when ``symmetric``."""
        self.qmin, self.qmax, self.symmetric = qmin, qmax, symmetric
        self.levels = qmax - qmin + 1
        self.values: torch.Tensor | None = None
        self.possible = True

    def observe(self, x: torch.Tensor) -> None:
        """Add the distinct values of ``x`` (flat, float, on any device); stop tracking once too many are seen."""
        if not self.possible:
            return
        for size in PROBE_SIZES:
            if x.numel() > size and torch.unique(x[::x.numel() // size]).numel() > min(self.levels, PROBE_DISTINCT):
                self.possible, self.values = False, None
                return
        distinct = torch.unique(x).cpu()
        seen = distinct if self.values is None else torch.unique(torch.cat([self.values, distinct]))
        if seen.numel() > self.levels or not bool(torch.isfinite(seen).all()):
            self.possible, self.values = False, None
            return
        self.values = seen

    def step(self) -> float | None:
        """The lattice's step, or None when the values are not evenly spaced through 0 (or fewer than two)."""
        if not self.possible or self.values is None or self.values.numel() < 2:
            return None
        values = self.values.double()
        smallest = float((values[1:] - values[:-1]).min())
        span = float(values[-1] - values[0])
        step = span / round(span / smallest)  # the span's average gap: more precise than one difference
        k = values / step
        if bool(((k - k.round()).abs() > TOLERANCE).any()):
            return None
        return step

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Scale and zero point of the grid holding every lattice point seen (centred in the integer range
        when affine), or None when there is no lattice or its span does not fit in the integer grid."""
        step = self.step()
        if step is None:
            return None
        assert self.values is not None
        low = min(round(float(self.values[0]) / step), 0)
        high = max(round(float(self.values[-1]) / step), 0)
        if self.symmetric:
            if low < self.qmin or high > self.qmax:
                return None
            zero_point = 0
        else:
            spare = (self.qmax - self.qmin) - (high - low)
            if spare < 0:
                return None
            zero_point = self.qmin - low + spare // 2
        return torch.tensor(step, dtype=torch.float32), torch.tensor(zero_point, dtype=torch.int32)
