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


def test_a_curve_ahead_at_every_rate_point_ranks_ahead():
    # measured on a small hyperprior codec (bpp, PSNR): "ahead" has at most the bpp and more PSNR at each point;
    # a quadratic through three points ranked it behind "behind" (+31% against +23%)
    anchor = ([0.137, 0.187, 0.243], [25.70, 26.29, 26.59])
    behind = ([0.137, 0.189, 0.244], [25.08, 25.81, 25.87])
    ahead = ([0.137, 0.188, 0.241], [25.42, 25.87, 26.21])
    assert bd_rate(*anchor, *ahead) < bd_rate(*anchor, *behind)


def test_point_order_does_not_matter_and_curves_may_differ_in_length():
    rates = [0.1, 0.2, 0.4, 0.8]  # log-rate linear in PSNR: every interpolation of a subset is the same line
    reordered = bd_rate(rates[::-1], PSNRS[::-1], [r * 1.1 for r in rates[:3]], PSNRS[:3])
    assert reordered == pytest.approx(10.0, abs=1e-9)


def test_disjoint_curves_give_nan_and_bad_curves_raise():
    assert math.isnan(bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS]))
    with pytest.raises(LowbitError):
        bd_rate([0.1], [30.0], RATES, PSNRS)
    with pytest.raises(LowbitError):
        bd_rate([0.0, 0.1], [30.0, 31.0], RATES, PSNRS)
    with pytest.raises(LowbitError, match="same PSNR"):
        bd_rate([0.1, 0.2], [30.0, 30.0], RATES, PSNRS)


def test_a_curve_whose_psnr_falls_at_a_higher_rate_has_no_bd_rate():
    # measured on a small hyperprior codec at W4A8: its highest rate point lost PSNR against the middle one
    falling = ([0.137, 0.189, 0.244], [25.11, 25.87, 25.86])
    with pytest.raises(LowbitError, match="more bits and less PSNR"):
        bd_rate([0.137, 0.187, 0.243], [25.70, 26.29, 26.59], *falling)
