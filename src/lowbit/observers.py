"""Observers: turn the values a tensor takes into a clipping range and then into (scale, zero point).

- ``minmax``: the full observed range.
- ``percentile``: the range between the p-th and (100-p)-th percentiles (outliers clipped).
- ``mse``: a grid search over shrunken ranges, keeping the one with the least squared quantization
  error (per channel for weights).
Activation observers keep running extremes plus a bounded random sample of values, so memory stays
constant however many calibration batches are seen.
"""

from __future__ import annotations

import torch

from lowbit import qmath
from lowbit.spec import QuantSpec

SAMPLE_PER_BATCH = 1 << 16
SAMPLE_LIMIT = 1 << 20
MSE_GRID = torch.linspace(0.2, 1.0, 81).tolist()


def _reduce_dims(x: torch.Tensor, spec: QuantSpec) -> tuple[int, ...] | None:
    if spec.granularity == "per_tensor":
        return None
    return tuple(d for d in range(x.dim()) if d != spec.axis % x.dim())


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
    flat = x.movedim(spec.axis % x.dim(), 0).reshape(x.shape[spec.axis], -1).float()
    lo, hi = torch.quantile(flat, q, dim=1)
    return lo, hi


def mse_qparams(x: torch.Tensor, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero point minimizing ``mean((x - fq(x))^2)`` over ranges ``[a*lo, a*hi]``, ``a`` on a grid."""
    bits = int(spec.bits)
    qmin, qmax = qmath.qrange(bits, spec.symmetric)
    dims = _reduce_dims(x, spec)
    best_err = best_scale = best_zp = None
    for a in MSE_GRID:
        scale, zp = qmath.choose_qparams(lo * a, hi * a, bits, spec.symmetric)
        s, z = _view(scale, x, spec), _view(zp, x, spec)
        err = qmath.quantization_error(x, s, z, qmin, qmax, dims)
        if best_err is None:
            best_err, best_scale, best_zp = err, scale, zp
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zp = torch.where(better, zp, best_zp)
    return best_scale, best_zp


def _view(t: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    if spec.granularity == "per_tensor":
        return t
    return qmath.channel_view(t, spec.axis % x.dim(), x.dim())


def static_qparams(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantization parameters of a fully known tensor (weights) with the spec's observer."""
    x = x.detach().float()
    if spec.observer == "percentile":
        lo, hi = percentile_range(x, spec)
    else:
        lo, hi = tensor_range(x, spec)
    if spec.observer == "mse":
        return mse_qparams(x, spec, lo, hi)
    return qmath.choose_qparams(lo, hi, int(spec.bits), spec.symmetric)


class ActivationObserver:
    """Accumulates per-tensor statistics of an activation over calibration batches."""

    def __init__(self, spec: QuantSpec, seed: int = 0) -> None:
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.n_sampled = 0
        self.gen = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        lo, hi = x.min().cpu(), x.max().cpu()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
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
        if self.spec.observer == "minmax":
            return qmath.choose_qparams(self.lo, self.hi, bits, self.spec.symmetric)
        sample = torch.cat(self.samples)
        if self.spec.observer == "percentile":
            lo, hi = percentile_range(sample, self.spec)
            return qmath.choose_qparams(lo, hi, bits, self.spec.symmetric)
        return mse_qparams(sample, self.spec, self.lo, self.hi)
