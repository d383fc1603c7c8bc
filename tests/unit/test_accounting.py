"""Exact budget arithmetic and conversions of jointstats._accounting."""
from __future__ import annotations

import math
from fractions import Fraction as F

import pytest
from hypothesis import example, given, settings, strategies as st

from jointstats._accounting import (
    compose_pure, compose_zcdp, eps_from_rho, exp_neg_bounds, gaussian_sigma2,
    laplace_scale, ln_bounds, noise_interval_95, rho_from_eps_delta, split_budget,
    to_fraction,
)

pos_fracs = st.fractions(min_value=F(1, 1000), max_value=F(1000), max_denominator=10**6)
deltas = st.fractions(min_value=F(1, 10**12), max_value=F(1, 10), max_denominator=10**13)


def test_to_fraction_reads_floats_as_decimals():
    assert to_fraction(1e-5) == F(1, 100000)
    assert to_fraction(0.1) == F(1, 10)
    assert to_fraction("2/3") == F(2, 3)
    assert to_fraction(3) == 3
    with pytest.raises(TypeError):
        to_fraction(True)
    with pytest.raises(ValueError):
        to_fraction(float("nan"))


@pytest.mark.parametrize("x", [F(0), F(1, 7), F(1), F(5, 2), F(37), F(700)])
def test_exp_neg_bounds_contain_exp(x):
    lo, hi = exp_neg_bounds(x, 80)
    assert lo <= hi and hi - lo <= F(1, 2**80)
    assert float(lo) <= math.exp(-float(x)) * (1 + 1e-15) + 1e-300
    assert float(hi) >= math.exp(-float(x)) * (1 - 1e-15)


def test_exp_neg_bounds_exact_identity():
    # exp(-1)^2 == exp(-2): intervals must overlap
    lo1, hi1 = exp_neg_bounds(1, 100)
    lo2, hi2 = exp_neg_bounds(2, 100)
    assert lo1 * lo1 <= hi2 and lo2 <= hi1 * hi1


@pytest.mark.parametrize("x", [F(1, 3), F(2), F(10), F(10**5), F(7, 2)])
def test_ln_bounds_contain_log(x):
    lo, hi = ln_bounds(x)
    assert lo <= hi and hi - lo < F(1, 2**60)
    assert abs(float(lo) - math.log(x)) < 1e-12


def test_split_budget_equal_and_weighted():
    out = split_budget(1, F(1, 10**5), ["a", "b", "c", "d"])
    assert all(v == (F(1, 4), F(1, 4 * 10**5)) for v in out.values())
    out = split_budget(F(3), 0, {"n": None, "mean": 2})
    assert out == {"n": (F(1), F(0)), "mean": (F(2), F(0))}
    with pytest.raises(ValueError):
        split_budget(1, 0, {"a": 0})
    with pytest.raises(ValueError):
        split_budget(0, 0, ["a"])
    with pytest.raises(ValueError):
        split_budget(1, 1, ["a"])
    with pytest.raises(ValueError):
        split_budget(1, 0, [])


@settings(max_examples=200, deadline=None)
@given(eps=pos_fracs, delta=st.fractions(min_value=0, max_value=F(1, 2), max_denominator=10**9),
       weights=st.dictionaries(st.text(min_size=1, max_size=5), pos_fracs, min_size=1, max_size=8))
def test_split_budget_sums_exactly_and_is_proportional(eps, delta, weights):
    out = split_budget(eps, delta, weights)
    assert set(out) == set(weights)
    assert sum(e for e, _ in out.values()) == eps
    assert sum(d for _, d in out.values()) == delta
    total = sum(weights.values())
    for name, (e, d) in out.items():
        assert e == eps * weights[name] / total
        assert d == delta * weights[name] / total
    assert compose_pure(e for e, _ in out.values()) == eps


def test_scales():
    assert laplace_scale(1, F(1, 2)) == 2
    assert laplace_scale(3, 2) == F(3, 2)
    assert gaussian_sigma2(2, F(1, 8)) == 16
    with pytest.raises(ValueError):
        laplace_scale(1, 0)
    with pytest.raises(ValueError):
        gaussian_sigma2(0, 1)


@settings(max_examples=60, deadline=None)
@given(eps=st.fractions(min_value=F(1, 100), max_value=F(10), max_denominator=1000), delta=deltas)
@example(eps=F(1, 100), delta=F(2053765711, 7026645259188))  # once failed a rounded reference check
def test_rho_from_eps_delta_is_valid_and_tight(eps, delta):
    rho = rho_from_eps_delta(eps, delta)
    assert rho > 0
    # valid: rho + 2 sqrt(rho L) <= eps for the upper bound of L = ln(1/delta), checked exactly
    # as 4 rho L <= (eps - rho)^2 (a rounded square root could overstate it by its last bit)
    _, L_hi = ln_bounds(1 / delta)
    assert rho < eps and 4 * rho * L_hi <= (eps - rho) ** 2
    bigger = rho * (1 + F(1, 10**9))
    L = math.log(1 / delta)
    assert float(bigger) + 2 * math.sqrt(float(bigger) * L) > float(eps) * (1 - 1e-12)  # tight
    back = eps_from_rho(rho, delta)
    assert back <= eps * (1 + F(1, 10**12)) and back >= eps * (1 - F(1, 10**6))


@settings(max_examples=60, deadline=None)
@given(rho=st.fractions(min_value=F(1, 10**6), max_value=F(10), max_denominator=10**6), delta=deltas)
def test_eps_from_rho_rounds_up(rho, delta):
    eps = eps_from_rho(rho, delta)
    exact = float(rho) + 2 * math.sqrt(float(rho) * math.log(1 / float(delta)))
    assert float(eps) >= exact * (1 - 1e-12)
    assert float(eps) <= exact * (1 + 1e-9)


def test_rho_known_value():
    # eps = 1, delta = 1e-5: rho = (sqrt(L+1) - sqrt(L))^2 with L = ln(1e5)
    L = math.log(1e5)
    expected = (math.sqrt(L + 1) - math.sqrt(L)) ** 2
    assert abs(float(rho_from_eps_delta(1, F(1, 10**5))) - expected) < 1e-12
    assert eps_from_rho(0, F(1, 10)) == 0
    with pytest.raises(ValueError):
        rho_from_eps_delta(1, 0)


@settings(max_examples=40, deadline=None)
@given(rhos=st.lists(st.fractions(min_value=0, max_value=F(5), max_denominator=10**6), max_size=10))
def test_compose_zcdp_is_exact_sum(rhos):
    assert compose_zcdp(rhos) == sum(rhos, F(0))


def test_compose_rejects_negative():
    with pytest.raises(ValueError):
        compose_pure([F(1), F(-1)])
    with pytest.raises(ValueError):
        compose_zcdp([F(-1)])


def _dl_tail_float(scale: float, h: int) -> float:
    a = math.exp(-1 / scale)
    return 2 * a ** (h + 1) / (1 + a)


@pytest.mark.parametrize("scale", [F(1, 2), F(1), F(3, 2), F(10), F(250)])
def test_noise_interval_discrete_laplace_exact(scale):
    h = noise_interval_95("discrete_laplace", scale)
    assert _dl_tail_float(float(scale), h) <= 0.05
    assert h == 0 or _dl_tail_float(float(scale), h - 1) > 0.05


def _dg_tail_float(sigma2: float, h: int) -> float:
    K = int(40 * math.sqrt(sigma2)) + 40
    w = [math.exp(-k * k / (2 * sigma2)) for k in range(K)]
    z = w[0] + 2 * sum(w[1:])
    return 2 * sum(w[h + 1:]) / z


@pytest.mark.parametrize("sigma2", [F(1, 4), F(1), F(10), F(100), F(2500)])
def test_noise_interval_discrete_gaussian_safe_and_close(sigma2):
    h = noise_interval_95("discrete_gaussian", sigma2)
    exact = 0
    while _dg_tail_float(float(sigma2), exact) > 0.05:
        exact += 1
    assert h >= exact                         # safe
    assert h <= math.ceil(1.1 * exact) + 1     # and not much wider


def test_noise_interval_rejects_unknown():
    with pytest.raises(ValueError):
        noise_interval_95("laplace_float", 1)


def test_exp_neg_bounds_match_plain_rational_formulas():
    # the gmpy2 implementation must give exactly the bounds of the plain Taylor formulas
    import math as _math
    from fractions import Fraction as _F

    from jointstats._accounting import exp_neg_bounds

    def plain(x, prec):
        r = 0
        while x > _F(1, 2) * (1 << r):
            r += 1
        y = x / (1 << r)
        p, q = y.numerator, y.denominator
        extra = 20
        while True:
            P = prec + 2 * r + extra
            J = 1
            while (p ** (J + 1)) << (P + 4) >= (q ** (J + 1)) * _math.factorial(J + 1):
                J += 1
            den = q ** J * _math.factorial(J)
            num, term = 0, den
            for j in range(J + 1):
                num += term if j % 2 == 0 else -term
                term = term * p // (q * (j + 1))
            rem_num, rem_den, scale = p ** (J + 1), q ** (J + 1) * _math.factorial(J + 1), 1 << P
            lo = max((num * scale * rem_den - rem_num * scale * den) // (den * rem_den), 0)
            hi = min(-((-(num * scale * rem_den + rem_num * scale * den)) // (den * rem_den)), scale)
            for _ in range(r):
                lo = (lo * lo) >> P
                hi = min(-((-hi * hi) // scale), scale)
            if (hi - lo) << prec <= scale:
                return _F(lo, scale), _F(hi, scale)
            extra += 32

    for x in [_F(1, 10 ** 12), _F(1, 3), _F(1), _F(7, 2), _F(12345, 67), _F(2 ** 40, 7)]:
        for prec in (64, 104):
            lo, hi = exp_neg_bounds(x, prec)
            assert (lo, hi) == plain(x, prec)
            assert float(lo) <= _math.exp(-float(x)) * (1 + 1e-12) and _math.exp(-float(x)) <= float(hi) * (1 + 1e-12)
