"""Noise plans: the fast exact construction against references, and the on-disk plan cache."""
from __future__ import annotations

import math
from fractions import Fraction as F

import mpmath
import pytest

from jointstats import _noise
from jointstats._accounting import exp_neg_bounds
from jointstats._noise import DELTA_TARGET, dg_plan, dl_plan

@pytest.fixture(autouse=True)
def _digits():
    with mpmath.workdps(60):
        yield


def _mp(x: F) -> mpmath.mpf:
    return mpmath.mpf(x.numerator) / x.denominator


SIGMA2 = [F(1, 3), F(1), F(9, 4), F(50), F(10**6) + F(1, 3), F(123456789, 7),
          F(827353453453453453453453453453453453451, 7)]


def _alpha_reference(sigma2, t, C, D):
    """The acceptance-rate bound as it was computed before (one series per block end)."""
    prec = 64
    kappa = 1 / (2 * sigma2 * D * D)
    a_lo, a_hi = exp_neg_bounds(1 / t, prec)
    pz_lo = (1 - a_hi) / (1 + a_hi)
    pnz_lo = 2 * a_lo / (1 + a_lo)
    total = pz_lo * exp_neg_bounds(C * C * kappa, prec)[0]
    sigma = math.isqrt(math.floor(sigma2)) + 1
    gmax = C // D + 9 * sigma
    bs = max(1, gmax // 400)
    s = F(0)

    def acc_lo(g):
        n = D * (g + 1) - C
        return exp_neg_bounds(n * n * kappa, prec)[0]

    for g0 in range(0, gmax + 1, bs):
        g1 = min(g0 + bs - 1, gmax)
        w = exp_neg_bounds(F(g0) / t, prec)[0] - exp_neg_bounds(F(g1 + 1) / t, prec)[1]
        if w > 0:
            s += w * min(acc_lo(g0), acc_lo(g1))
    total += pnz_lo * s
    return F(math.floor(total * (1 << 64)), 1 << 64)


def _alpha_true(sigma2, t, C, D) -> mpmath.mpf:
    """The ideal acceptance probability, to 50 digits (sum cut where its terms vanish)."""
    with mpmath.workdps(50):
        s2, t = _mp(sigma2), mpmath.mpf(t.numerator) / t.denominator
        c = mpmath.mpf(C) / D
        a = mpmath.exp(-1 / t)
        total = (1 - a) / (1 + a) * mpmath.exp(-c * c / (2 * s2))
        y = mpmath.mpf(1)
        while True:
            term = (1 - a) / (1 + a) * 2 * a ** y * mpmath.exp(-(y - c) ** 2 / (2 * s2))
            total += term
            if y > c and term < mpmath.mpf(10) ** -40:
                return total
            y += 1


@pytest.mark.parametrize("sigma2", SIGMA2)
def test_alpha_lower_is_the_reference_bound(sigma2):
    C, D, t = _noise._dg_params(sigma2)
    fast = _noise._alpha_lower(sigma2, t, C, D)
    ref = _alpha_reference(sigma2, t, C, D)
    # both are rigorous lower bounds at 2**-64 resolution; the block products are tighter
    assert abs(fast - ref) <= F(1, 1 << 60)
    if sigma2 < 10**7:
        true = _alpha_true(sigma2, t, C, D)
        assert _mp(fast) <= true
        assert true - _mp(fast) < 0.01


@pytest.mark.parametrize("x0,count", [(F(1, 3), 8), (F(7, 10**9), 40), (F(5), 4), (F(1, 2**80 + 1), 90)])
def test_exp_doubling_contains_exp_and_is_narrow(x0, count):
    prec = _noise._BIAS_PREC
    chain = _noise._exp_doubling(x0, count, prec)
    assert len(chain) == count
    with mpmath.workdps(80):
        for j, (lo, hi) in enumerate(chain):
            e = mpmath.exp(-_mp(x0) * 2 ** j)
            assert _mp(lo) <= e <= _mp(hi)
            assert hi - lo <= F(2, 1 << prec)
            assert max(lo.denominator, hi.denominator) <= 1 << (prec + 2)


@pytest.mark.parametrize("sigma2", SIGMA2)
def test_dg_plan_coins_are_within_their_error_bounds(sigma2):
    plan = dg_plan(sigma2)
    assert 0 < plan.delta <= DELTA_TARGET
    C, D = plan.C, plan.D
    with mpmath.workdps(60):
        kappa = 1 / (2 * (_mp(sigma2)) * D * D)
        for p, coin in enumerate(plan.acc):
            exact = mpmath.exp(-(2 ** p) * kappa)
            assert abs(mpmath.mpf(coin.c) / 2 ** coin.k - exact) <= _mp(coin.err)
        exact = mpmath.exp(-C * C * kappa)
        assert abs(mpmath.mpf(plan.coin0.c) / 2 ** plan.coin0.k - exact) <= \
            _mp(plan.coin0.err)


@pytest.mark.parametrize("scale", [F(1, 5), F(1), F(7, 2), F(10**9), F(2**60) / 3])
def test_dl_plan_coins_are_within_their_error_bounds(scale):
    plan = dl_plan(scale)
    assert 0 < plan.delta <= DELTA_TARGET
    with mpmath.workdps(60):
        s = _mp(scale)
        for i, coin in plan.bits:
            exact = 1 / (1 + mpmath.exp(2 ** i / s))
            assert abs(mpmath.mpf(coin.c) / 2 ** coin.k - exact) <= _mp(coin.err)
        a = mpmath.exp(-1 / s)
        exact = (1 - a) / (1 + a)
        z = plan.zero
        assert abs(mpmath.mpf(z.c) / 2 ** z.k - exact) <= _mp(z.err)
        # dropped digits: their biases are below the tail term of delta
        assert 1 / (1 + mpmath.exp(2 ** plan.nbits / s)) < _mp(DELTA_TARGET)
