"""Bjøntegaard delta rate on curves whose answer is known by hand."""

from __future__ import annotations

import math

import pytest

from lowbit.codec.bd_rate import bd_rate
from lowbit.errors import LowbitError

RATES = [0.1, 0.25, 0.5, 1.0]
PSNRS = [26.0, 29.0, 32.0, 35.0]


@pytest.mark.parametrize("scale,expected", [(1.1, 10.0), (0.8, -20.0), (1.0, 0.0)])
def test_scaled_rate_gives_the_scale(scale, expected):
    assert bd_rate(RATES, PSNRS, [r * scale for r in RATES], PSNRS) == pytest.approx(expected, abs=1e-9)


def test_three_point_curves_and_partial_overlap():
    # a shifted PSNR axis keeps the (log-linear) curves parallel: a fixed rate ratio over the overlap
    rates = [0.2, 0.4, 0.8]
    anchor = [30.0, 33.0, 36.0]  # log2(rate) = (psnr - 30) / 3 - log2(5)
    test = [p + 1.5 for p in anchor]  # same rate buys 1.5 dB more, i.e. the same PSNR at 2^-0.5 the rate
    assert bd_rate(rates, anchor, rates, test) == pytest.approx((2 ** -0.5 - 1) * 100, rel=1e-9)


def test_disjoint_curves_give_nan_and_bad_curves_raise():
    assert math.isnan(bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS]))
    with pytest.raises(LowbitError):
        bd_rate([0.1], [30.0], RATES, PSNRS)
    with pytest.raises(LowbitError):
        bd_rate([0.0, 0.1], [30.0, 31.0], RATES, PSNRS)
