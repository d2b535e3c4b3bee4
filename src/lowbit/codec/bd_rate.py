"""Bjøntegaard delta rate: the average bitrate difference between two rate-distortion curves at equal quality.

The standard method (VCEG-M33): fit log-rate as a cubic polynomial of PSNR for each curve, integrate both
over the PSNR interval the curves share, and turn the mean difference of log-rates into a percentage. A
negative figure means the test curve needs fewer bits than the anchor for the same quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lowbit.errors import LowbitError


def bd_rate(anchor_rate: Sequence[float], anchor_psnr: Sequence[float], test_rate: Sequence[float],
            test_psnr: Sequence[float]) -> float:
    """Average rate change of ``test`` against ``anchor`` in percent, over their common PSNR range.

    Each curve needs at least two points (a cubic fit uses up to four: the degree is one less than the number
    of points, capped at three), with positive rates. Returns NaN when the PSNR ranges do not overlap.
    """
    curves = []
    for name, rate, psnr in (("anchor", anchor_rate, anchor_psnr), ("test", test_rate, test_psnr)):
        rate, psnr = np.asarray(rate, dtype=float), np.asarray(psnr, dtype=float)
        if rate.shape != psnr.shape or rate.ndim != 1 or len(rate) < 2:
            raise LowbitError(f"BD-rate: the {name} curve needs matching rate and PSNR lists of at least 2 points")
        if not (np.all(rate > 0) and np.all(np.isfinite(psnr))):
            raise LowbitError(f"BD-rate: the {name} curve has a non-positive rate or non-finite PSNR")
        curves.append((np.log(rate), psnr))
    low = max(float(p.min()) for _, p in curves)
    high = min(float(p.max()) for _, p in curves)
    if not high > low:
        return math.nan
    integrals = []
    for log_rate, psnr in curves:
        fit = np.polyfit(psnr, log_rate, min(3, len(psnr) - 1))
        primitive = np.polyint(fit)
        integrals.append((np.polyval(primitive, high) - np.polyval(primitive, low)) / (high - low))
    return float((math.exp(integrals[1] - integrals[0]) - 1) * 100)
