"""Bjøntegaard delta rate: the average bitrate difference between two rate-distortion curves at equal quality.

Computed by the ``bjontegaard`` package with piecewise cubic Hermite interpolation (PCHIP) of log-rate over
PSNR, the method of the JCT-VC/JVET common test conditions. The original single cubic polynomial (VCEG-M33)
becomes a quadratic through three rate points, which can overshoot between them and rank a curve that is ahead
at every rate point behind one it beats; PCHIP is monotone between points and cannot. A negative figure means
the test curve needs fewer bits than the anchor for the same quality.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from lowbit.errors import LowbitError


def _curve(name: str, rate: Sequence[float], psnr: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The curve's points ordered by PSNR, checked: positive rates, finite and distinct PSNRs, and a rate that
    rises with PSNR (where it falls, log-rate is no function of PSNR and the interpolated area means nothing)."""
    rate, psnr = np.asarray(rate, dtype=float), np.asarray(psnr, dtype=float)
    if rate.shape != psnr.shape or rate.ndim != 1 or len(rate) < 2:
        raise LowbitError(f"BD-rate: the {name} curve needs matching rate and PSNR lists of at least 2 points")
    if not (np.all(rate > 0) and np.all(np.isfinite(rate)) and np.all(np.isfinite(psnr))):
        raise LowbitError(f"BD-rate: the {name} curve has a non-positive or non-finite rate or a non-finite PSNR")
    order = np.argsort(psnr)
    if np.any(np.diff(psnr[order]) <= 0):
        raise LowbitError(f"BD-rate: the {name} curve has two points with the same PSNR; drop one of them")
    if np.any(np.diff(rate[order]) <= 0):
        raise LowbitError(f"BD-rate: the {name} curve has a point with more bits and less PSNR than another, so it "
                          "is undefined; compare those rate points one by one")
    return rate[order], psnr[order]


def bd_rate(anchor_rate: Sequence[float], anchor_psnr: Sequence[float], test_rate: Sequence[float],
            test_psnr: Sequence[float]) -> float:
    """Average rate change of ``test`` against ``anchor`` in percent, over their common PSNR range.

    Each curve needs at least two points with positive rates and distinct PSNRs, in any order, whose PSNR
    rises with their rate; the two curves may have different numbers of points. Returns NaN when the PSNR ranges do not overlap.
    """
    import bjontegaard  # imports matplotlib: only when a BD-rate is asked for

    a_rate, a_psnr = _curve("anchor", anchor_rate, anchor_psnr)
    t_rate, t_psnr = _curve("test", test_rate, test_psnr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its overlap warnings: disjoint curves give NaN, as documented above
        value = bjontegaard.bd_rate(a_rate, a_psnr, t_rate, t_psnr, method="pchip", require_matching_points=False,
                                    min_overlap=0)
    return float(value)
