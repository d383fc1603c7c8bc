"""Exact budget arithmetic and conversions of jointstats.plan.accounting."""
from __future__ import annotations

import math
from fractions import Fraction as F

import pytest
from hypothesis import example, given, settings, strategies as st

from jointstats.plan.accounting import (
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
@pytest.mark.slow
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

    from jointstats.plan.accounting import exp_neg_bounds

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


# ----------------------------------------------------------------------------- CKS conversion
#
# References computed independently with mpmath at 30 digits: CKS Corollary 13's
# delta(alpha) = exp((alpha-1)(alpha rho - eps)) / (alpha-1) * (1 - 1/alpha)^alpha, optimised over
# alpha = 1 + e^t by a dense grid and a golden-section refinement.

import mpmath  # noqa: E402

from jointstats.plan.accounting import (  # noqa: E402
    SAMPLER_TV_PER_SAMPLE, JobCharge, LedgerTotals, delta_from_rho_eps_cks, eps_from_rho_cks,
    exp_hi, job_charge, lifetime_spend, rho_from_eps_delta_cks,
)

def _mp_opt(fun, maximise=False):
    """Optimum of fun(t) over t in [-40, 120] (alpha = 1 + e^t) at 30 digits."""
    with mpmath.workdps(30):
        sign = -1 if maximise else 1
        ts = [mpmath.mpf(-40) + i * mpmath.mpf("0.25") for i in range(641)]
        vals = []
        for t in ts:
            try:
                vals.append(sign * fun(t))
            except (ZeroDivisionError, ValueError, OverflowError):
                vals.append(mpmath.inf)
        i = min(range(len(ts)), key=lambda k: vals[k])
        a, b = ts[max(i - 1, 0)], ts[min(i + 1, len(ts) - 1)]
        g = (mpmath.sqrt(5) - 1) / 2
        for _ in range(110):
            c, d = b - g * (b - a), a + g * (b - a)
            if sign * fun(c) <= sign * fun(d):
                b = d
            else:
                a = c
        return fun((a + b) / 2)


def _mp_log_delta(rho, eps):
    rho, eps = mpmath.mpf(rho.numerator) / rho.denominator, mpmath.mpf(eps.numerator) / eps.denominator

    def f(t):
        am1 = mpmath.exp(t)
        alpha = 1 + am1
        return am1 * (alpha * rho - eps) + alpha * mpmath.log(am1 / alpha) - t
    return f


def mp_delta(rho, eps):
    """CKS delta at (rho, eps), minimised over alpha."""
    with mpmath.workdps(30):
        return mpmath.exp(_mp_opt(_mp_log_delta(F(rho), F(eps))))


def mp_rho(eps, delta):
    """Largest rho with CKS delta <= delta (maximised over alpha)."""
    with mpmath.workdps(30):
        e = mpmath.mpf(eps.numerator) / eps.denominator
        ld = mpmath.log(mpmath.mpf(delta.numerator) / delta.denominator)

        def r(t):
            am1 = mpmath.exp(t)
            alpha = 1 + am1
            h = alpha * mpmath.log(am1 / alpha) - t
            return (e + (ld - h) / am1) / alpha
        return _mp_opt(r, maximise=True)


def mp_eps(rho, delta):
    """Smallest eps with CKS delta <= delta (minimised over alpha)."""
    with mpmath.workdps(30):
        rr = mpmath.mpf(rho.numerator) / rho.denominator
        ld = mpmath.log(mpmath.mpf(delta.numerator) / delta.denominator)

        def e(t):
            am1 = mpmath.exp(t)
            alpha = 1 + am1
            h = alpha * mpmath.log(am1 / alpha) - t
            return alpha * rr + (h - ld) / am1
        return _mp_opt(e)


def _mpf(x: F):
    return mpmath.mpf(x.numerator) / x.denominator


cks_eps = st.fractions(min_value=F(1, 100), max_value=F(20), max_denominator=1000)
cks_deltas = st.fractions(min_value=F(1, 10**15), max_value=F(1, 10), max_denominator=10**16)


@settings(max_examples=25, deadline=None)
@given(eps=cks_eps, delta=cks_deltas)
@example(eps=F(1), delta=F(1, 10**6))
@example(eps=F(1, 100), delta=F(1, 10**15))
@example(eps=F(20), delta=F(1, 10))
@pytest.mark.slow
def test_rho_from_eps_delta_cks_is_sound_and_tight(eps, delta):
    rho = rho_from_eps_delta_cks(eps, delta)
    with mpmath.workdps(30):
        # sound: CKS's delta at the returned rho (best alpha, 30 digits) is within delta
        assert mp_delta(rho, eps) <= _mpf(delta)
        # tight: within 1e-6 relative of the optimum over alpha
        best = mp_rho(eps, delta)
        assert _mpf(rho) <= best and _mpf(rho) >= best * (1 - mpmath.mpf("1e-6"))
    # the rigorous upper bound of delta at rho agrees (both round outwards by ~2^-64)
    assert delta_from_rho_eps_cks(rho, eps) <= delta * (1 + F(1, 2**40))
    # eps back from rho at delta: at most eps, and close to it
    back = eps_from_rho_cks(rho, delta)
    assert eps * (1 - F(1, 10**6)) <= back <= eps * (1 + F(1, 2**40))


@settings(max_examples=25, deadline=None)
@given(rho=st.fractions(min_value=F(1, 10**6), max_value=F(10), max_denominator=10**6), delta=cks_deltas)
@example(rho=F(1, 450460), delta=F(16490845549945, 6688733259614278))  # epsilon 0 suffices
@pytest.mark.slow
def test_eps_from_rho_cks_rounds_up_and_delta_from_rho_eps_cks_bounds_from_above(rho, delta):
    eps = eps_from_rho_cks(rho, delta)
    with mpmath.workdps(30):
        exact = max(mp_eps(rho, delta), 0)               # (a large delta may allow epsilon 0)
        assert _mpf(eps) >= exact and _mpf(eps) <= exact * (1 + mpmath.mpf("1e-6")) + mpmath.mpf("1e-25")
        d = delta_from_rho_eps_cks(rho, eps)
        best = mp_delta(rho, eps)
        assert _mpf(d) >= best and _mpf(d) <= best * (1 + mpmath.mpf("1e-6"))
        assert d <= delta * (1 + F(1, 2**40))


@settings(max_examples=30, deadline=None)
@given(eps=cks_eps, delta=cks_deltas, up=st.fractions(min_value=F(1, 10**6), max_value=F(2)))
@pytest.mark.slow
def test_cks_conversions_are_monotone(eps, delta, up):
    # (with relative gaps >= 1e-6: alpha is chosen with floats, so the last bits may wobble)
    rho = rho_from_eps_delta_cks(eps, delta)
    assert rho_from_eps_delta_cks(eps * (1 + up), delta) > rho
    bigger_delta = min(delta * (1 + up), F(1, 2))
    if bigger_delta > delta:
        assert rho_from_eps_delta_cks(eps, bigger_delta) > rho
        assert eps_from_rho_cks(rho, bigger_delta) < eps_from_rho_cks(rho, delta)
    assert eps_from_rho_cks(rho * (1 + up), delta) > eps_from_rho_cks(rho, delta)
    assert delta_from_rho_eps_cks(rho * (1 + up), eps) >= delta_from_rho_eps_cks(rho, eps)
    assert delta_from_rho_eps_cks(rho, eps * (1 + up)) <= delta_from_rho_eps_cks(rho, eps)


@settings(max_examples=60, deadline=None)
@given(eps=st.fractions(min_value=F(1, 100), max_value=F(10), max_denominator=1000), delta=deltas)
def test_cks_rho_is_at_least_bun_steinke(eps, delta):
    assert rho_from_eps_delta_cks(eps, delta) >= rho_from_eps_delta(eps, delta)


def test_cks_gain_for_the_demo_budget():
    # (1, 1e-6), the demo's regression: CKS gives 1.39x the rho of Bun-Steinke for the whole
    # job (noise variance / 1.39); splitting (eps, delta) over the statistics first and
    # converting each share (the old way) gave 2.9x less rho for two statistics, 10.8x for seven
    cks = rho_from_eps_delta_cks(1, F(1, 10**6))
    bs = rho_from_eps_delta(1, F(1, 10**6))
    assert 0.024355 < float(cks) < 0.024357 and 0.017468 < float(bs) < 0.017470
    assert 1.39 < float(cks / bs) < 1.40
    split2 = 2 * rho_from_eps_delta(F(1, 2), F(1, 2 * 10**6))
    split7 = 7 * rho_from_eps_delta(F(1, 7), F(1, 7 * 10**6))
    assert 2.87 < float(cks / split2) < 2.88 and 10.7 < float(cks / split7) < 10.9


def test_cks_edge_cases():
    assert eps_from_rho_cks(0, F(1, 10)) == 0
    assert delta_from_rho_eps_cks(0, 1) == 0
    assert delta_from_rho_eps_cks(100, F(1, 10)) == 1      # the bound says nothing: capped at 1
    for bad in [(0, F(1, 10)), (1, 0), (1, 1)]:
        with pytest.raises(ValueError):
            rho_from_eps_delta_cks(*bad)
    with pytest.raises(ValueError):
        eps_from_rho_cks(-1, F(1, 10))


def test_exp_hi_bounds_exp_from_above():
    for x in [F(0), F(1, 3), F(1), F(50), F(700)]:
        v = exp_hi(x)
        with mpmath.workdps(60):
            assert _mpf(v) >= mpmath.exp(_mpf(x))
            assert _mpf(v) <= mpmath.exp(_mpf(x)) * (1 + mpmath.mpf(2) ** -60)


# ----------------------------------------------------------------------------- job charges


def test_sampler_tv_per_sample_is_the_samplers_target():
    from jointstats.noise.sampler import DELTA_TARGET
    assert SAMPLER_TV_PER_SAMPLE == DELTA_TARGET == F(1, 2**40)


@settings(max_examples=40, deadline=None)
@given(eps=st.fractions(min_value=F(1, 100), max_value=F(10), max_denominator=1000),
       samples=st.integers(0, 10**5))
def test_pure_job_charge_claims_the_tv_term(eps, samples):
    c = job_charge(eps, 0, samples)
    assert c.rho is None and c.pure and c.epsilon == eps
    assert c.tv == samples * SAMPLER_TV_PER_SAMPLE
    with mpmath.workdps(60):
        term = (1 + mpmath.exp(_mpf(eps))) * _mpf(c.tv)
        assert _mpf(c.delta) >= term                      # rounded up: the claim is valid
        assert _mpf(c.delta) <= term * (1 + mpmath.mpf(2) ** -58)
    assert JobCharge.from_dict(c.to_dict()) == c


@settings(max_examples=20, deadline=None)
@given(eps=st.fractions(min_value=F(1, 100), max_value=F(8), max_denominator=1000),
       delta=st.fractions(min_value=F(1, 10**9), max_value=F(1, 100), max_denominator=10**10),
       samples=st.integers(0, 10**4))
@example(eps=F(1, 100), delta=F(1, 10**9), samples=548)     # the TV term alone exceeds delta
@example(eps=F(4406, 553), delta=F(10, 3786407767), samples=1)  # the TV charged at a smaller eps
@pytest.mark.slow
def test_zcdp_job_charge_leaves_room_for_the_tv_term(eps, delta, samples):
    tv = samples * SAMPLER_TV_PER_SAMPLE
    try:
        c = job_charge(eps, delta, samples)
    except ValueError:
        # only when the TV term exceeds delta at eps and no smaller eps' > 0 leaves room for it
        assert (1 + exp_hi(eps)) * tv >= delta and 4 * tv >= delta * (1 - F(1, 10**6))
        return
    assert (c.epsilon, c.delta) == (eps, delta) and c.tv == samples * SAMPLER_TV_PER_SAMPLE
    tv_term = (1 + exp_hi(eps)) * c.tv
    if tv_term * 1000 <= delta:   # the usual case: exactly the stated formula
        assert c.rho == rho_from_eps_delta_cks(eps, delta - tv_term)
    # the claimed guarantee holds: CKS delta of rho at some eps' <= eps (eps itself, or where the
    # TV is charged for a large eps), plus the TV term at eps', within delta
    from jointstats.plan.accounting import _TV_SHARES, _round_down
    candidates = [eps] + [_round_down(ln_bounds(F(1, k) * delta / tv - 1)[0], 20)
                          for k in _TV_SHARES if tv and F(1, k) * delta > 2 * tv]
    with mpmath.workdps(30):
        assert any(mp_delta(c.rho, e) + (1 + mpmath.exp(_mpf(e))) * _mpf(c.tv) <= _mpf(delta)
                   for e in candidates if 0 < e <= eps)
    assert JobCharge.from_dict(c.to_dict()) == c


def test_job_charge_examples_and_dict_form():
    c = job_charge(1, F(1, 10**6), 0)
    assert c.to_dict() == {"epsilon": "1", "delta": "1/1000000",
                           "rho": str(rho_from_eps_delta_cks(1, F(1, 10**6))), "tv": "0"}
    c = job_charge(1, F(1, 10**6), 64)
    assert c.tv == F(64, 2**40) and c.rho < rho_from_eps_delta_cks(1, F(1, 10**6))
    p = job_charge(F(1, 2), 0, 3)
    assert p.to_dict()["rho"] is None and p.to_dict()["tv"] == "3/1099511627776"
    assert JobCharge.from_dict({"epsilon": "1/2", "delta": p.to_dict()["delta"], "tv": "3/1099511627776"}) == p
    with pytest.raises(ValueError):
        JobCharge.from_dict({"epsilon": "1", "delta": "0"})
    with pytest.raises(ValueError):
        JobCharge.from_dict({"epsilon": "1", "delta": "0", "tv": "0", "extra": "1"})
    with pytest.raises(ValueError):
        JobCharge(1, 0, 0, 0)                             # rho 0: use None
    with pytest.raises(ValueError):
        job_charge(0, 0, 1)
    with pytest.raises(ValueError):
        job_charge(1, 0, -1)
    with pytest.raises(ValueError):                       # the TV term alone exceeds delta
        job_charge(1, F(1, 10**15), 10**6)
    # a huge epsilon: the TV term is charged at a smaller epsilon, the claim stays (eps, delta)
    big = job_charge(1000, F(1, 10**6), 71)
    assert big.rho > 0 and (big.epsilon, big.delta) == (1000, F(1, 10**6))


# ----------------------------------------------------------------------------- lifetime rule

_charges = st.lists(st.one_of(
    st.builds(lambda e, n: job_charge(e, 0, n), st.fractions(F(1, 20), F(2), max_denominator=100),
              st.integers(0, 2000)),
    st.builds(lambda e, n: job_charge(e, F(1, 10**6), n), st.sampled_from([F(1, 4), F(1), F(2)]),
              st.integers(0, 2000)),
    st.builds(lambda e, d: JobCharge(e, d, None, 0), st.fractions(F(0), F(1), max_denominator=10),
              st.sampled_from([F(0), F(1, 10**8)]))), max_size=6)


def _check_rule(totals: LedgerTotals, b_eps: F, b_dlt: F):
    s = lifetime_spend(totals, b_eps, b_dlt)
    E, R, TD = totals.pure_epsilon, totals.rho, totals.tv + totals.legacy_delta
    if R == 0:   # basic composition of the claims
        assert (s.epsilon, s.delta) == (E, totals.pure_delta)
        pure_only = b_dlt == 0 and not totals.legacy_delta  # sampler deltas stated, not held
        assert s.fits == (E <= b_eps and (totals.pure_delta <= b_dlt or pure_only))
    elif s.epsilon is not None and s.fits:
        # the rule's formula at its fixed point c: spent = E + eps_cks(R, delta_B - K(c)(T + D))
        c = s.tv_epsilon
        assert s.epsilon <= c and s.delta == b_dlt and s.epsilon <= b_eps
        assert s.free_delta == b_dlt - (1 + exp_hi(c)) * TD
        assert s.epsilon == E + eps_from_rho_cks(R, s.free_delta)
        # sound: the zCDP part's CKS delta at (spent - E), plus the TV terms at spent, within delta_B
        with mpmath.workdps(30):
            assert (mp_delta(R, s.epsilon - E) + (1 + mpmath.exp(_mpf(s.epsilon))) * _mpf(TD)
                    <= _mpf(b_dlt))
    return s


@settings(max_examples=20, deadline=None)
@given(charges=_charges, b_eps=st.sampled_from([F(1), F(3), F(10), F(50)]),
       b_dlt=st.sampled_from([F(0), F(1, 10**6), F(1, 10**5)]))
@pytest.mark.slow
def test_lifetime_rule_is_sound_and_monotone(charges, b_eps, b_dlt):
    totals = LedgerTotals()
    prev = None
    for c in charges:
        totals = totals.add(c)
        s = _check_rule(totals, b_eps, b_dlt)
        if prev is not None:
            # monotone: more charges never fit when fewer did not, and never cost less epsilon
            assert not (s.fits and not prev.fits)
            if s.epsilon is not None and prev.epsilon is not None:
                assert s.epsilon >= prev.epsilon * (1 - F(1, 10**9))
        prev = s
    assert totals == LedgerTotals.of(charges) and totals.jobs == len(charges)


def test_lifetime_rule_examples():
    assert lifetime_spend(LedgerTotals(), 1, 0).fits
    pure = LedgerTotals.of([job_charge(1, 0, 100)] * 3)
    s = lifetime_spend(pure, 3, F(1, 10**6))
    assert s.fits and s.epsilon == 3 and s.delta == 3 * job_charge(1, 0, 100).delta
    assert lifetime_spend(pure, 3, 0).fits                 # delta budget 0: pure DP only, sampler
    assert lifetime_spend(pure, 3, 0).delta > 0            # deltas recorded and stated, not held
    assert not lifetime_spend(pure, F(29, 10), 0).fits
    z = LedgerTotals.of([job_charge(1, F(1, 10**6), 100)] * 4)
    s = lifetime_spend(z, 10, F(1, 10**5))
    assert s.fits and s.delta == F(1, 10**5)
    # zCDP composes far better than adding the four epsilons (4): 1.887
    assert 1.88 < float(s.epsilon) < 1.89
    assert not lifetime_spend(z, F(188, 100), F(1, 10**5)).fits
    assert lifetime_spend(z, 10, 0).epsilon is None and not lifetime_spend(z, 10, 0).fits
