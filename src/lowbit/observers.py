"""Observers: turn the values a tensor takes into a clipping range and then into (scale, zero point).

- ``minmax``: the full observed range.
- ``percentile``: the range between the p-th and (100-p)-th percentiles (outliers clipped).
- ``mse``: a grid search over shrunken ranges, keeping the one with the least squared quantization
  error (per channel for weights).
- ``output`` (weights only): the same search, keeping the range with the least squared error in the layer's
  output over the calibration inputs (see :mod:`lowbit.input_covariance`); ``mse`` where there are none.
Activation observers keep running extremes plus a bounded random sample of values, so memory stays
constant however many calibration batches are seen. Whatever the observer, an activation whose values all lie on
one evenly spaced lattice that fits in the grid (8-bit pixels, rounded latents) gets that lattice as its grid
(see :mod:`lowbit.lattice`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Callable

import torch

from lowbit import qmath
from lowbit.input_covariance import InputCovariance
from lowbit.lattice import LatticeTracker
from lowbit.spec import QuantSpec

SAMPLE_PER_BATCH = 1 << 16
SAMPLE_LIMIT = 1 << 20
# Candidate ranges of the MSE search: the observed range shrunk by each factor (the last, 1.0, keeps it, so the
# search never does worse than min/max). See mse_search for which of them are evaluated.
MSE_GRID = torch.linspace(0.2, 1.0, 81)
COARSE_STRIDE = 4
REFINED_BASINS = 3
# Up to this many candidate factors are all evaluated: about as many as the coarse-to-fine search would.
EXHAUSTIVE_LIMIT = 2 * COARSE_STRIDE * REFINED_BASINS


def _reduce_dims(x: torch.Tensor, spec: QuantSpec) -> tuple[int, ...] | None:
    if spec.granularity == "per_tensor":
        return None
    return tuple(d for d in range(x.dim()) if d != spec.channel_axis(x.dim()))


def tensor_range(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x`` (per channel along ``spec.axis`` when per-channel)."""
    dims = _reduce_dims(x, spec)
    if dims is None:
        return x.min(), x.max()
    return x.amin(dim=dims), x.amax(dim=dims)


def percentile_range(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile clipping range; per channel when the spec is per-channel."""
    q = torch.tensor([1.0 - spec.percentile / 100.0, spec.percentile / 100.0], dtype=torch.float32)
    dims = _reduce_dims(x, spec)
    if dims is None:
        lo, hi = torch.quantile(x.flatten().float(), q)
        return lo, hi
    flat = x.movedim(spec.channel_axis(x.dim()), 0).reshape(x.shape[spec.axis], -1).float()
    lo, hi = torch.quantile(flat, q, dim=1)
    return lo, hi


def _channel_rows(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` as ``(channels, values)`` (one row when per-tensor)."""
    if spec.granularity == "per_tensor":
        return x.reshape(1, -1)
    return x.movedim(spec.channel_axis(x.dim()), 0).reshape(x.shape[spec.axis], -1)


def _candidate_errors(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, index: torch.Tensor, *, bits: int,
                      symmetric: bool) -> torch.Tensor:
    """Squared error of each row on the grids of shrink factors ``MSE_GRID[index]`` (``index`` is ``(N, C)``)."""
    a = MSE_GRID.to(rows.device)[index]
    scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, symmetric)
    return qmath.grid_errors(rows, scale, None if symmetric else zp, *qmath.qrange(bits, symmetric))


def _first_useful_factor(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, full_error: torch.Tensor, bits: int,
                         symmetric: bool) -> int:
    """Index of the smallest factor whose grid may still beat the full range on some row.

    A grid's error on a row is at least that of the row's most extreme value alone, which lands on the grid's
    end: ``gap^2``, where ``gap`` is how far the value lies beyond the end. Where that already reaches the full
    range's error the factor cannot win, and smaller factors have ends further in. With many levels this leaves
    only factors near 1 (at 16 bits, 1 alone); at a few bits it rules out nothing.
    """
    if rows.is_meta:  # shapes without values: nothing can be ruled out
        return 0
    qmin, qmax = qmath.qrange(bits, symmetric)
    a = MSE_GRID.to(rows.device)[:, None]
    scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, symmetric)
    top, bottom = (qmax - zp) * scale, (qmin - zp) * scale
    gap = torch.maximum(rows.amax(dim=1) - top, bottom - rows.amin(dim=1)).clamp_min(0)
    useful = (gap.square() < full_error).any(dim=1)
    return int(useful.nonzero()[0]) if useful.any() else len(MSE_GRID) - 1


def mse_search(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Per row, the index into ``MSE_GRID`` of the shrink factor with the least squared error.

    Factors that provably cannot beat the full range are skipped (see :func:`_first_useful_factor`); the rest
    are searched by :func:`search_factors`.
    """
    errors_of = partial(_candidate_errors, rows, lo, hi, bits=bits, symmetric=symmetric)
    full = torch.full((1, rows.shape[0]), len(MSE_GRID) - 1, device=rows.device)
    full_error = errors_of(full)
    first = _first_useful_factor(rows, lo, hi, full_error[0], bits, symmetric)
    return search_factors(errors_of, rows.shape[0], first, rows.device, full_error)


def search_factors(errors_of: Callable[[torch.Tensor], torch.Tensor], n_rows: int, first: int,
                   device: torch.device, full_error: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the index into ``MSE_GRID[first:]`` with the least error; ``errors_of`` maps ``(N, rows)``
    indices to errors (``full_error``: that of the full range, when already known).

    When many factors remain, every ``COARSE_STRIDE``-th is tried, then every factor between the neighbours of
    the ``REFINED_BASINS`` best ones. The error is a smooth trend (clipping against step size) plus rounding
    ripples; on short rows and at a few bits the ripples make several dips of similar depth, and refining only
    the best coarse factor would sometimes settle in the wrong one. Refining a few keeps the result on the
    exhaustive search's factor, or within a fraction of a percent of its error, in under half the evaluations.
    """
    last = len(MSE_GRID) - 1
    index = torch.full((1, n_rows), last, device=device)
    err = errors_of(index) if full_error is None else full_error
    exhaustive = last - first <= EXHAUSTIVE_LIMIT
    step = 1 if exhaustive else COARSE_STRIDE
    coarse = torch.arange(last - step, first - 1, -step, device=device)  # steps counted from the full range
    index, err = _extend(index, err, coarse[:, None].expand(-1, n_rows), errors_of)
    if not exhaustive:
        index, err = _extend(index, err, _around_best(index, err, first, last), errors_of)
    return index.gather(0, err.argmin(dim=0, keepdim=True))[0]


def _around_best(index: torch.Tensor, err: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Per row, the factors between the coarse neighbours of its ``REFINED_BASINS`` best tried ones."""
    best = index.gather(0, err.topk(min(REFINED_BASINS, len(index)), dim=0, largest=False).indices)
    offsets = torch.tensor([o for o in range(1 - COARSE_STRIDE, COARSE_STRIDE) if o], device=index.device)
    return (best[None] + offsets[:, None, None]).reshape(-1, index.shape[1]).clamp(first, last)


def _extend(index: torch.Tensor, err: torch.Tensor, more: torch.Tensor,
            errors_of: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tried factors ``index`` and their errors (both ``(N, C)``), with the factors ``more`` tried too."""
    if more.numel() == 0:
        return index, err
    return torch.cat([index, more]), torch.cat([err, errors_of(more)])


def mse_qparams(x: torch.Tensor, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero point minimizing ``mean((x - fq(x))^2)`` over ranges ``[a*lo, a*hi]`` (see :func:`mse_search`)."""
    bits = int(spec.bits)
    shape = lo.shape
    lo, hi = lo.reshape(-1).float(), hi.reshape(-1).float()
    a = MSE_GRID.to(lo.device)[mse_search(_channel_rows(x, spec).float(), lo, hi, bits, spec.symmetric)]
    scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, spec.symmetric)
    return scale.reshape(shape), zp.reshape(shape)


def _output_errors(weight_rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, covariance: InputCovariance,
                   index: torch.Tensor, *, bits: int, symmetric: bool) -> torch.Tensor:
    """Output error ``dw^T cov dw`` of each weight row on the grids of shrink factors ``MSE_GRID[index]``.

    ``index`` is ``(N, R)``: R is the number of rows, or 1 when one grid serves them all (then the errors are
    summed over rows). Rows are output channels, in group order.
    """
    a = MSE_GRID.to(weight_rows.device)[index]
    scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, symmetric)
    qmin, qmax = qmath.qrange(bits, symmetric)
    n, channels = len(index), weight_rows.shape[0]
    scale, zp = scale.expand(n, channels)[..., None], zp.expand(n, channels)[..., None]
    err = covariance.quadratic(qmath.fake_quantize_no_grad(weight_rows.expand(n, -1, -1), scale, zp, qmin, qmax)
                               - weight_rows)
    return err if index.shape[1] == channels else err.sum(dim=1, keepdim=True)


def output_qparams(w: torch.Tensor, spec: QuantSpec,
                   covariance: InputCovariance) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero point of the range (shrunk from min/max by a factor of ``MSE_GRID``) whose rounded weights
    change the layer's output least on the inputs ``covariance`` describes (output channels on ``spec.axis``)."""
    bits = int(spec.bits)
    rows = _channel_rows(w, replace(spec, granularity="per_channel"))
    lo, hi = tensor_range(w, spec)
    shape = lo.shape
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    errors_of = partial(_output_errors, rows, lo, hi, covariance.to(rows), bits=bits, symmetric=spec.symmetric)
    a = MSE_GRID.to(lo.device)[search_factors(errors_of, len(lo), 0, rows.device)]
    scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, spec.symmetric)
    return scale.reshape(shape), zp.reshape(shape)


def static_qparams(x: torch.Tensor, spec: QuantSpec,
                   covariance: InputCovariance | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization parameters of a fully known tensor (weights) with the spec's observer; ``covariance`` is
    that of the layer's inputs (the ``output`` observer's, which without it searches like ``mse``)."""
    x = x.detach().float()
    if spec.observer == "output" and covariance is not None:
        return output_qparams(x, spec, covariance)
    if spec.observer == "percentile":
        lo, hi = percentile_range(x, spec)
    else:
        lo, hi = tensor_range(x, spec)
    if spec.observer in ("mse", "output"):
        return mse_qparams(x, spec, lo, hi)
    return qmath.choose_qparams(lo, hi, int(spec.bits), spec.symmetric)


class ActivationObserver:
    """Accumulates per-tensor statistics of an activation over calibration batches."""

    def __init__(self, spec: QuantSpec, seed: int = 0, lattice: bool = True) -> None:
        """``lattice``: give values on an evenly spaced lattice the grid that holds them (see :mod:`lowbit.lattice`)."""
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.n_sampled = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.lattice = LatticeTracker(*qmath.qrange(int(spec.bits), spec.symmetric), spec.symmetric) if lattice \
            else None

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        lo, hi = x.min().cpu(), x.max().cpu()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.lattice is not None:
            self.lattice.observe(x)
        if self.spec.observer != "minmax" and self.n_sampled < SAMPLE_LIMIT:
            take = min(SAMPLE_PER_BATCH, x.numel(), SAMPLE_LIMIT - self.n_sampled)
            idx = torch.randint(0, x.numel(), (take,), generator=self.gen)
            self.samples.append(x.cpu()[idx])
            self.n_sampled += take

    @property
    def seen(self) -> bool:
        return self.lo is not None

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point from everything observed so far."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("observer saw no data")
        bits = int(self.spec.bits)
        exact = self.lattice.qparams() if self.lattice is not None else None
        if exact is not None:  # every observed value is representable: no range beats that (see lowbit.lattice)
            return exact
        if self.spec.observer == "minmax":
            return qmath.choose_qparams(self.lo, self.hi, bits, self.spec.symmetric)
        sample = torch.cat(self.samples)
        if self.spec.observer == "percentile":
            lo, hi = percentile_range(sample, self.spec)
            return qmath.choose_qparams(lo, hi, bits, self.spec.symmetric)
        return mse_qparams(sample, self.spec, self.lo, self.hi)
