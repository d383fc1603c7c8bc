"""Privacy accounting with exact rational arithmetic (no MPyC, no floating point).

Conventions
-----------
* Every public quantity is a :class:`fractions.Fraction`.  Floats are accepted on
  input only through :func:`to_fraction`, which reads them as the *decimal* they
  print as (``1e-05`` becomes ``1/100000``), never as their binary expansion.
* Whenever a quantity has to be rounded (square roots, logarithms), it is rounded in
  the direction that keeps the privacy guarantee valid: ``rho_from_eps_delta``
  rounds down, ``eps_from_rho`` rounds up, noise interval widths round up.
* Pure DP composes additively in epsilon (basic composition), zCDP composes
  additively in rho.
* A job with delta > 0 is accounted in zCDP: its (epsilon, delta), less the sampler's
  total-variation charge, is converted to rho once with the Canonne-Kamath-Steinke
  conversion (:func:`rho_from_eps_delta_cks`); :func:`job_charge` gives the whole
  charge of a job (:class:`JobCharge`) and :func:`lifetime_spend` the rule a party's
  lifetime ledger applies to the sums of the charges.

Neighbouring datasets differ by adding or removing one row.
"""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import gmpy2

__all__ = [
    "to_fraction", "split_budget", "laplace_scale", "rho_from_eps_delta",
    "gaussian_sigma2", "eps_from_rho", "noise_interval_95", "compose_pure",
    "compose_zcdp", "exp_neg_bounds", "ln_bounds", "rho_from_eps_delta_cks",
    "eps_from_rho_cks", "delta_from_rho_eps_cks", "SAMPLER_TV_PER_SAMPLE", "JobCharge",
    "job_charge", "LedgerTotals", "LifetimeSpend", "lifetime_spend", "exp_hi", "PrivacyBudget",
]

_PREC = 96  # bits of precision for transcendental bounds


def to_fraction(x, name: str = "value") -> Fraction:
    """Convert an int, Fraction, decimal string or float to an exact Fraction.

    A float is read as the shortest decimal that prints as it (``repr``), so that
    ``0.1`` means 1/10.  Booleans, NaN and infinities are rejected.
    """
    if isinstance(x, bool):
        raise TypeError(f"{name}: expected a number, found a bool")
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, Rational):
        return Fraction(x.numerator, x.denominator)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"{name}: expected a finite number, found {x!r}")
        return Fraction(repr(x))
    if isinstance(x, str):
        try:
            return Fraction(x.strip())
        except ValueError:
            raise ValueError(f"{name}: cannot read {x!r} as a number") from None
    raise TypeError(f"{name}: expected a number, found {type(x).__name__}")


# ---------------------------------------------------------------------------
# rigorous bounds for exp, ln and sqrt with rational arithmetic


def _floor_div(a: int, b: int) -> int:
    return a // b


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def exp_neg_bounds(x, prec: int = _PREC) -> tuple[Fraction, Fraction]:
    """Rational (dyadic) lo, hi with lo <= exp(-x) <= hi and hi - lo <= 2**-prec, x >= 0.

    Taylor series of exp(-y) for y = x / 2**r <= 1/2 with an explicit remainder
    bound, followed by r exact squarings with outward rounding.
    """
    x = to_fraction(x, "x")
    if x < 0:
        raise ValueError("exp_neg_bounds needs x >= 0")
    if x == 0:
        return Fraction(1), Fraction(1)
    r = 0
    while x > Fraction(1, 2) * (1 << r):
        r += 1
    y = x / (1 << r)
    # gmpy2 integers (C) and incremental powers: the same integers as the plain formulas,
    # several times faster; DP noise plans call this tens of thousands of times per job
    p, q = gmpy2.mpz(y.numerator), gmpy2.mpz(y.denominator)
    extra = 20
    while True:
        P = prec + 2 * r + extra
        # partial sum S_J = sum_{j<=J} (-y)^j / j!, remainder <= y^(J+1)/(J+1)!
        J = 1
        p_next, q_next, fact_next = p * p, q * q, gmpy2.mpz(2)  # p^(J+1), q^(J+1), (J+1)!
        while (p_next << (P + 4)) >= q_next * fact_next:
            J += 1
            p_next, q_next, fact_next = p_next * p, q_next * q, fact_next * (J + 1)
        den = (q_next // q) * (fact_next // (J + 1))  # q^J J!
        num = gmpy2.mpz(0)
        term = den  # y^0/0! scaled by den
        for j in range(J + 1):
            num += term if j % 2 == 0 else -term
            # next: multiply by y / (j+1)
            term = term * p // (q * (j + 1))  # exact: den divisible by q^(j+1) (j+1)!
        rem_num = p_next
        rem_den = q_next * fact_next
        scale = gmpy2.mpz(1) << P
        # lo = floor(2^P (num/den - rem)), hi = ceil(2^P (num/den + rem))
        lo = _floor_div(num * scale * rem_den - rem_num * scale * den, den * rem_den)
        hi = _ceil_div(num * scale * rem_den + rem_num * scale * den, den * rem_den)
        lo = max(lo, 0)
        hi = min(hi, scale)
        for _ in range(r):
            lo = (lo * lo) >> P
            hi = min(_ceil_div(hi * hi, scale), scale)
        if (hi - lo) << prec <= scale:
            return Fraction(int(lo), int(scale)), Fraction(int(hi), int(scale))
        extra += 32


def ln_bounds(x, prec: int = _PREC) -> tuple[Fraction, Fraction]:
    """Rational lo <= ln(x) <= hi, x > 0, with hi - lo <= 2**-prec (roughly)."""
    x = to_fraction(x, "x")
    if x <= 0:
        raise ValueError("ln_bounds needs x > 0")
    if x == 1:
        return Fraction(0), Fraction(0)
    if x < 1:
        lo, hi = ln_bounds(1 / x, prec)
        return -hi, -lo
    # x = 2^k * z with z in [1, 2)
    k = x.numerator.bit_length() - x.denominator.bit_length()
    z = x / Fraction(2) ** k
    while z >= 2:
        z /= 2
        k += 1
    while z < 1:
        z *= 2
        k -= 1
    ln2_lo, ln2_hi = _atanh_series(Fraction(1, 3), prec + 8)
    ln2_lo, ln2_hi = 2 * ln2_lo, 2 * ln2_hi
    zl, zh = _atanh_series((z - 1) / (z + 1), prec + 8)
    return 2 * zl + k * ln2_lo, 2 * zh + k * ln2_hi


def _atanh_series(u: Fraction, prec: int) -> tuple[Fraction, Fraction]:
    """Bounds of atanh(u) = sum u^(2j+1)/(2j+1), 0 <= u <= 1/3."""
    s = Fraction(0)
    term = u
    j = 0
    u2 = u * u
    bound = Fraction(1, 1 << prec)
    while True:
        s += term / (2 * j + 1)
        term *= u2
        j += 1
        # tail <= term/(2j+1) * 1/(1-u^2)
        tail = term / (2 * j + 1) / (1 - u2)
        if tail <= bound:
            return _round_down(s, prec + 4), _round_up(s + tail, prec + 4)


def _round_down(x: Fraction, bits: int) -> Fraction:
    return Fraction(math.floor(x * (1 << bits)), 1 << bits)


def _round_up(x: Fraction, bits: int) -> Fraction:
    return Fraction(math.ceil(x * (1 << bits)), 1 << bits)


def _sqrt_bounds(x: Fraction, prec: int = _PREC) -> tuple[Fraction, Fraction]:
    """lo <= sqrt(x) <= hi for x >= 0, both multiples of 2**-prec."""
    if x < 0:
        raise ValueError("sqrt of a negative number")
    s = 1 << prec
    v = x * s * s
    lo = math.isqrt(math.floor(v))
    hi = lo if lo * lo == v else lo + 1
    return Fraction(lo, s), Fraction(hi, s)


def _rel_bits(x: Fraction, bits: int = 64) -> int:
    """Number of binary digits after the point giving about `bits` significant bits."""
    if x <= 0:
        return bits
    return max(bits, bits - (x.numerator.bit_length() - x.denominator.bit_length()) + 2)


# ---------------------------------------------------------------------------
# budget arithmetic


def _job_budget(epsilon, delta) -> tuple[Fraction, Fraction]:
    """A job's (epsilon, delta) as exact Fractions: epsilon > 0, 0 <= delta < 1 (ValueError otherwise)."""
    eps = to_fraction(epsilon, "epsilon")
    dlt = to_fraction(delta, "delta")
    if eps <= 0:
        raise ValueError(f"epsilon must be > 0, found {eps}")
    if not 0 <= dlt < 1:
        raise ValueError(f"delta must be in [0, 1), found {dlt}")
    return eps, dlt


def split_budget(epsilon, delta, weights: Mapping[str, object] | Iterable[str] | None = None
                 ) -> dict[str, tuple[Fraction, Fraction]]:
    """Split (epsilon, delta) over named statistics, exactly.

    ``weights`` maps statistic names to positive weights (``None`` means 1); an
    iterable of names means equal weights.  The parts sum exactly to the totals.
    """
    eps, dlt = _job_budget(epsilon, delta)
    if weights is None:
        raise ValueError("split_budget needs the names of the statistics")
    if not isinstance(weights, Mapping):
        weights = {name: None for name in weights}
    if not weights:
        raise ValueError("split_budget needs at least one statistic")
    w = {}
    for name, v in weights.items():
        f = Fraction(1) if v is None else to_fraction(v, f"weight of {name}")
        if f <= 0:
            raise ValueError(f"weight of {name} must be > 0, found {f}")
        w[name] = f
    total = sum(w.values())
    return {name: (eps * f / total, dlt * f / total) for name, f in w.items()}


def _nonnegative(value: Any, name: str) -> Fraction:
    """``value`` as an exact fraction; ValueError naming ``name`` if it is negative."""
    f = to_fraction(value, name)
    if f < 0:
        raise ValueError(f"{name} must be >= 0, found {f}")
    return f


def _sum_nonnegative(values: Iterable, name: str) -> Fraction:
    """The exact sum of ``values``; ValueError naming ``name`` on a negative one."""
    return sum((_nonnegative(v, name) for v in values), Fraction(0))


def compose_pure(epsilons: Iterable) -> Fraction:
    """Basic composition of pure epsilon-DP mechanisms: the sum."""
    return _sum_nonnegative(epsilons, "epsilon")


def compose_zcdp(rhos: Iterable) -> Fraction:
    """Composition of rho-zCDP mechanisms: the sum of the rhos."""
    return _sum_nonnegative(rhos, "rho")


def laplace_scale(sensitivity, epsilon) -> Fraction:
    """Scale b of the discrete Laplace P(k) ~ exp(-|k|/b) giving epsilon-DP for an
    integer-valued query with the given L1 sensitivity: b = sensitivity / epsilon."""
    s = to_fraction(sensitivity, "sensitivity")
    e = to_fraction(epsilon, "epsilon")
    if s <= 0 or e <= 0:
        raise ValueError("sensitivity and epsilon must be > 0")
    return s / e


def gaussian_sigma2(l2_sensitivity, rho) -> Fraction:
    """Variance parameter of the discrete Gaussian giving rho-zCDP: sens^2 / (2 rho)."""
    s = to_fraction(l2_sensitivity, "l2_sensitivity")
    r = to_fraction(rho, "rho")
    if s <= 0 or r <= 0:
        raise ValueError("sensitivity and rho must be > 0")
    return s * s / (2 * r)


def _ln_inv_delta_bounds(delta: Fraction) -> tuple[Fraction, Fraction]:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) for zCDP conversion, found {delta}")
    return ln_bounds(1 / delta)


def rho_from_eps_delta(epsilon, delta) -> Fraction:
    """Largest (rounded down) rho with rho + 2 sqrt(rho ln(1/delta)) <= epsilon.

    rho-zCDP implies (rho + 2 sqrt(rho ln(1/delta)), delta)-DP (Bun-Steinke 2016).
    The exact root is (sqrt(L + eps) - sqrt(L))^2 with L = ln(1/delta); it is
    bounded from below with rational arithmetic, and the result is verified.
    """
    eps = to_fraction(epsilon, "epsilon")
    dlt = to_fraction(delta, "delta")
    if eps <= 0:
        raise ValueError("epsilon must be > 0")
    _, L_hi = _ln_inv_delta_bounds(dlt)
    bits = _PREC + 32
    a_lo, _ = _sqrt_bounds(L_hi + eps, bits)
    _, b_hi = _sqrt_bounds(L_hi, bits)
    d = a_lo - b_hi
    if d <= 0:
        raise ValueError("epsilon too small for this delta")
    rho = d * d
    rho = _round_down(rho, _rel_bits(rho))
    # verify with upper bounds: rho + 2 sqrt(rho * L_hi) <= eps
    _, sq_hi = _sqrt_bounds(rho * L_hi, bits)
    while rho + 2 * sq_hi > eps:  # pragma: no cover - defensive, rounding slack
        rho = rho * (1 - Fraction(1, 1 << 40))
        rho = _round_down(rho, _rel_bits(rho))
        _, sq_hi = _sqrt_bounds(rho * L_hi, bits)
    return rho


def eps_from_rho(rho, delta) -> Fraction:
    """epsilon = rho + 2 sqrt(rho ln(1/delta)), rounded up (for reporting)."""
    r = to_fraction(rho, "rho")
    dlt = to_fraction(delta, "delta")
    if r < 0:
        raise ValueError("rho must be >= 0")
    if r == 0:
        return Fraction(0)
    _, L_hi = _ln_inv_delta_bounds(dlt)
    _, sq_hi = _sqrt_bounds(r * L_hi, _PREC + 32)
    eps = r + 2 * sq_hi
    return _round_up(eps, _rel_bits(eps))


def _dl_tail(scale: Fraction, h: int) -> Fraction:
    """Upper bound of P(|X| > h) = 2 a^(h+1) / (1 + a), a = exp(-1/scale)."""
    _, ah = exp_neg_bounds(Fraction(h + 1) / scale, 64)
    al, _ = exp_neg_bounds(1 / scale, 64)
    return 2 * ah / (1 + al)


def _dg_tail(sigma2: Fraction, h: int) -> Fraction:
    """Upper bound of P(|X| > h) for the discrete Gaussian N_Z(0, sigma2).

    Sum_{k>h} rho(k) <= rho(h+1) / (1 - r), r = max ratio rho(k+1)/rho(k) =
    exp(-(2h+3)/(2 sigma2)); normaliser >= sigma sqrt(2 pi) by Poisson summation.
    """
    _, rho_hi = exp_neg_bounds(Fraction((h + 1) ** 2) / (2 * sigma2), 64)
    _, r_hi = exp_neg_bounds(Fraction(2 * h + 3) / (2 * sigma2), 64)
    if r_hi >= 1:
        return Fraction(1)
    norm_lo, _ = _sqrt_bounds(2 * Fraction(333, 106) * sigma2, 64)  # pi > 333/106
    norm_lo = max(norm_lo, Fraction(1))  # rho(0) = 1 alone
    return min(Fraction(1), 2 * rho_hi / ((1 - r_hi) * norm_lo))


def noise_interval_95(mechanism: str, scale_or_sigma2) -> int:
    """Half-width h of an interval [-h, h] holding the noise with probability >= 95%.

    ``discrete_laplace``: exact smallest such h (from the geometric tail).
    ``discrete_gaussian``: a safe integer bound (the smallest h for which a rigorous
    upper bound of the tail is <= 5%; at most a few percent wider than exact).
    """
    v = to_fraction(scale_or_sigma2, "scale_or_sigma2")
    if v <= 0:
        raise ValueError("scale / sigma2 must be > 0")
    if mechanism in ("discrete_laplace", "laplace"):
        tail = lambda h: _dl_tail(v, h)  # noqa: E731
    elif mechanism in ("discrete_gaussian", "gaussian"):
        tail = lambda h: _dg_tail(v, h)  # noqa: E731
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    target = Fraction(1, 20)
    if tail(0) <= target:
        return 0
    hi = 1
    while tail(hi) > target:
        hi *= 2
    lo = hi // 2  # tail(lo) > target (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tail(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


# ---------------------------------------------------------------------------
# Canonne-Kamath-Steinke conversion between zCDP and (epsilon, delta)-DP
#
# CKS 2020 ("The Discrete Gaussian for Differential Privacy", Corollary 13): a
# rho-zCDP mechanism is (eps, delta)-DP for
#     delta = inf_{alpha > 1} exp((alpha - 1)(alpha rho - eps)) / (alpha - 1) * (1 - 1/alpha)^alpha.
# For ANY fixed alpha > 1 the expression bounds that infimum from above, so in logs
#     log delta <= (alpha - 1)(alpha rho - eps) + h(alpha),
#     h(alpha) = alpha ln(1 - 1/alpha) - ln(alpha - 1).
# alpha is chosen with floats (a grid, then a golden-section search, in t = ln(alpha - 1));
# alpha - 1 is then held as the exact dyadic rational e^t rounds to, and every quantity is
# bounded with the rigorous rational bounds of ln and exp (``ln_bounds``/``exp_neg_bounds``),
# rounded in the direction that keeps the privacy statement valid.  A sub-optimal alpha
# can only make the result less tight, never invalid.

_T_LO, _T_HI, _T_STEP = -40.0, 120.0, 0.1


def _float_log(x: Fraction) -> float:
    """ln(x) in floats for a positive Fraction of any size (no underflow to 0)."""
    return math.log(x.numerator) - math.log(x.denominator)


def _float_h(t: float) -> tuple[float, float]:
    """(alpha - 1, h(alpha)) in floats for alpha = 1 + e^t, without cancellation."""
    am1 = math.exp(t)
    # ln(1 - 1/alpha) = ln(am1 / (1 + am1)) = t - log1p(e^t) = -log1p(e^-t)
    lg = -math.log1p(math.exp(-t)) if t > 0 else t - math.log1p(am1)
    return am1, (1.0 + am1) * lg - t


def _argmin_t(fun: Callable[[float], float]) -> float:
    """A t in [_T_LO, _T_HI] (nearly) minimising fun: a 0.1-step grid, then golden section."""
    def f(t: float) -> float:
        try:
            v = fun(t)
        except (OverflowError, ZeroDivisionError, ValueError):
            return math.inf
        return v if math.isfinite(v) else math.inf
    n = int(round((_T_HI - _T_LO) / _T_STEP)) + 1
    best_i, best_v = 0, math.inf
    for i in range(n):
        v = f(_T_LO + i * _T_STEP)
        if v < best_v:
            best_i, best_v = i, v
    best_t = _T_LO + best_i * _T_STEP
    a, b = best_t - _T_STEP, best_t + _T_STEP
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    for t, v in ((c, fc), (d, fd)):
        if v < best_v:
            best_t, best_v = t, v
    return best_t


def _alpha_from_t(t: float) -> tuple[Fraction, Fraction]:
    """(alpha - 1, alpha) as exact rationals: alpha - 1 is the float e^t, read exactly."""
    am1 = Fraction(math.exp(t))
    return am1, 1 + am1


def _h_bounds(am1: Fraction) -> tuple[Fraction, Fraction]:
    """Rigorous lo <= h(alpha) = alpha ln(1 - 1/alpha) - ln(alpha - 1) <= hi, alpha = 1 + am1."""
    alpha = 1 + am1
    prec = _PREC + 16 + max(0, alpha.numerator.bit_length() - alpha.denominator.bit_length())
    a_lo, a_hi = ln_bounds(am1 / alpha, prec)  # ln(1 - 1/alpha) < 0
    b_lo, b_hi = ln_bounds(am1, prec)
    return alpha * a_lo - b_hi, alpha * a_hi - b_lo


def _check_delta(delta: Fraction) -> None:
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) for a zCDP conversion, found {delta}")


def rho_from_eps_delta_cks(epsilon, delta) -> Fraction:
    """Largest rho (rounded down) such that rho-zCDP implies (epsilon, delta)-DP by CKS.

    Canonne-Kamath-Steinke 2020, Corollary 13 (the tightest general zCDP -> (eps, delta)
    conversion; Bun-Steinke's ``rho + 2 sqrt(rho ln(1/delta)) <= eps``, used by
    :func:`rho_from_eps_delta`, buys 2x-12x more noise variance).  For a fixed alpha
    the condition ``delta(alpha) <= delta`` solves to
    ``rho <= (eps + (ln delta - h(alpha)) / (alpha - 1)) / alpha``; alpha is chosen to
    maximise that with floats, then the right-hand side is bounded from below with
    rational bounds of ln and rounded down, so the returned rho is always valid.
    """
    eps = to_fraction(epsilon, "epsilon")
    dlt = to_fraction(delta, "delta")
    if eps <= 0:
        raise ValueError(f"epsilon must be > 0, found {eps}")
    _check_delta(dlt)
    e, ld = float(eps), _float_log(dlt)

    def neg_rho(t: float) -> float:
        am1, h = _float_h(t)
        return -(e + (ld - h) / am1) / (1.0 + am1)

    am1, alpha = _alpha_from_t(_argmin_t(neg_rho))
    _, h_hi = _h_bounds(am1)
    ld_lo, _ = ln_bounds(dlt, _PREC + 16)
    rho = (eps + (ld_lo - h_hi) / am1) / alpha
    if rho <= 0:
        raise ValueError(f"epsilon {eps} too small for delta {dlt}")
    rho = _round_down(rho, _rel_bits(rho))
    # the bound at this alpha, from above, is at most the lower bound of ln(delta)
    assert am1 * (alpha * rho - eps) + h_hi <= ld_lo
    return rho


def eps_from_rho_cks(rho, delta) -> Fraction:
    """Smallest epsilon (rounded up) such that rho-zCDP implies (epsilon, delta)-DP by CKS.

    For a fixed alpha, CKS Corollary 13 gives
    ``eps = alpha rho + (h(alpha) - ln delta) / (alpha - 1)``; alpha is chosen to minimise
    it with floats, the expression is bounded from above with rational bounds of ln and
    rounded up (never below 0).  ``rho = 0`` gives 0.
    """
    r = to_fraction(rho, "rho")
    dlt = to_fraction(delta, "delta")
    if r < 0:
        raise ValueError("rho must be >= 0")
    _check_delta(dlt)
    if r == 0:
        return Fraction(0)
    rf, ld = float(r), _float_log(dlt)

    def eps_at(t: float) -> float:
        am1, h = _float_h(t)
        return (1.0 + am1) * rf + (h - ld) / am1

    am1, alpha = _alpha_from_t(_argmin_t(eps_at))
    _, h_hi = _h_bounds(am1)
    ld_lo, _ = ln_bounds(dlt, _PREC + 16)
    eps = alpha * r + (h_hi - ld_lo) / am1
    if eps <= 0:
        return Fraction(0)
    return _round_up(eps, _rel_bits(eps))


def delta_from_rho_eps_cks(rho, epsilon) -> Fraction:
    """Smallest delta (rounded up, at most 1) such that rho-zCDP implies (epsilon, delta)-DP by CKS.

    The log of CKS Corollary 13's bound at one alpha, ``(alpha-1)(alpha rho - eps) + h(alpha)``,
    is minimised over alpha with floats, bounded from above with rational bounds of ln, and
    exponentiated with a rational upper bound of exp.  ``rho = 0`` gives 0.
    """
    r = to_fraction(rho, "rho")
    eps = to_fraction(epsilon, "epsilon")
    if r < 0 or eps < 0:
        raise ValueError("rho and epsilon must be >= 0")
    if r == 0:
        return Fraction(0)
    rf, e = float(r), float(eps)

    def log_delta(t: float) -> float:
        am1, h = _float_h(t)
        return am1 * ((1.0 + am1) * rf - e) + h

    am1, alpha = _alpha_from_t(_argmin_t(log_delta))
    _, h_hi = _h_bounds(am1)
    log_hi = am1 * (alpha * r - eps) + h_hi
    if log_hi >= 0:
        return Fraction(1)
    x = _round_down(-log_hi, _PREC + 16)  # smaller x: larger exp(-x), still an upper bound
    _, hi = exp_neg_bounds(x, _PREC + 16 + math.ceil(float(x) / math.log(2)))
    return min(Fraction(1), _round_up(hi, _rel_bits(hi)))


def exp_hi(x) -> Fraction:
    """A rational upper bound of exp(x), x >= 0, within about 2**-64 relative."""
    x = to_fraction(x, "x")
    if x < 0:
        raise ValueError("exp_hi needs x >= 0")
    if x == 0:
        return Fraction(1)
    lo, _ = exp_neg_bounds(x, _PREC + 16 + math.ceil(float(x) / math.log(2)))
    v = 1 / lo
    return _round_up(v, _rel_bits(v))


# ---------------------------------------------------------------------------
# the charge of one job

#: Total-variation distance of one noise sample drawn inside the MPC to its exact law, at
#: most (``jointstats.noise.sampler.DELTA_TARGET``; a test checks that the two agree).
SAMPLER_TV_PER_SAMPLE = Fraction(1, 1 << 40)


@dataclass(frozen=True)
class JobCharge:
    """What one DP job costs, exactly: the guarantee it claims and how the ledger composes it.

    ``epsilon``, ``delta``: the job's claimed (epsilon, delta)-DP guarantee, sampler
    error included. ``rho``: the zCDP parameter of its ideal noise (``None`` for a pure
    job, whose noise is pure ``epsilon``-DP). ``tv``: a bound on the total-variation
    distance between the noise the job draws inside the MPC and the exact laws
    (``samples * SAMPLER_TV_PER_SAMPLE``).  A charge with ``rho None`` and ``tv 0`` and
    ``delta > 0`` is a legacy charge (ledger rows from before this accounting).
    """

    epsilon: Fraction
    delta: Fraction
    rho: Fraction | None
    tv: Fraction

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _nonnegative(self.epsilon, "epsilon"))
        object.__setattr__(self, "delta", _nonnegative(self.delta, "delta"))
        object.__setattr__(self, "tv", _nonnegative(self.tv, "tv"))
        if self.rho is not None:
            rho = _nonnegative(self.rho, "rho")
            if rho == 0:
                raise ValueError("rho must be > 0 (None for a pure charge)")
            object.__setattr__(self, "rho", rho)
        if self.delta > 1:
            raise ValueError(f"delta must be <= 1, found {self.delta}")

    @property
    def pure(self) -> bool:
        """Whether the job's ideal noise is pure epsilon-DP (no rho)."""
        return self.rho is None

    @property
    def budget(self) -> "PrivacyBudget":
        """The guarantee this charge claims, as a :class:`PrivacyBudget` (rho kept for zCDP jobs)."""
        return PrivacyBudget(self.epsilon, self.delta, self.rho)

    def to_dict(self) -> dict[str, str | None]:
        """Exact fraction strings, e.g. ``{"epsilon": "1", "delta": "1/1000000", "rho": ..., "tv": ...}``."""
        return {"epsilon": str(self.epsilon), "delta": str(self.delta),
                "rho": None if self.rho is None else str(self.rho), "tv": str(self.tv)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "JobCharge":
        """Read back :meth:`to_dict` (fraction strings; ``rho`` may be None or absent)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a job charge must be a mapping, found {type(data).__name__}")
        unknown = set(data) - {"epsilon", "delta", "rho", "tv"}
        if unknown:
            raise ValueError(f"unknown job charge fields: {', '.join(sorted(unknown))}")
        try:
            return cls(data["epsilon"], data["delta"], data.get("rho"), data["tv"])
        except KeyError as exc:
            raise ValueError(f"job charge without {exc.args[0]!r}") from None


def job_charge(epsilon, delta, samples: int) -> JobCharge:
    """The charge of a job asking (epsilon, delta) that draws ``samples`` noise samples.

    The samples are within total variation ``tv = samples * SAMPLER_TV_PER_SAMPLE`` of
    their exact laws, and a mechanism within TV eta of an (eps, d)-DP one is
    (eps, d + (1 + e^eps) eta)-DP.  So:

    * ``delta == 0`` (pure): the noise is epsilon-DP; the job claims
      ``(epsilon, min(1, (1 + e^epsilon) tv))``, the second rounded up; ``rho`` is None.
    * ``delta > 0`` (zCDP): ``rho = rho_from_eps_delta_cks(epsilon, delta - (1 + e^epsilon) tv)``
      (with an upper bound of e^epsilon), so the job's real guarantee is the requested
      (epsilon, delta). When that TV term exceeds delta / 1000 (a large epsilon), the TV is
      also tried at smaller eps' (spending delta/2, delta/4, ... on it; (eps', delta)-DP
      implies (eps, delta)-DP) and the largest rho is kept. ValueError if no eps' leaves
      any delta.
    """
    eps, dlt = _job_budget(epsilon, delta)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be an int >= 0, found {samples!r}")
    tv = samples * SAMPLER_TV_PER_SAMPLE
    tv_delta = (1 + exp_hi(eps)) * tv
    if dlt == 0:  # (a delta of 1 is vacuous but true: huge epsilons only)
        d = min(Fraction(1), _round_up(tv_delta, _rel_bits(tv_delta))) if tv_delta else Fraction(0)
        return JobCharge(eps, d, None, tv)
    rest = dlt - tv_delta
    if rest * _TV_SHARE_FAST >= dlt:  # the usual case: the TV term is at most 1/1000 of delta
        return JobCharge(eps, dlt, rho_from_eps_delta_cks(eps, rest), tv)
    # The TV term eats much of delta because epsilon is large: (1 + e^eps) tv. Charging the TV
    # at a smaller eps' <= eps is just as valid ((eps', delta)-DP implies (eps, delta)-DP) and
    # can give a larger rho; try eps' spending a fraction f of delta on the TV, keep the best.
    best: Fraction | None = rho_from_eps_delta_cks(eps, rest) if rest > 0 else None
    for k in _TV_SHARES:
        f = Fraction(1, k)
        lo, _ = ln_bounds(f * dlt / tv - 1) if f * dlt > tv else (Fraction(-1), None)
        eps_tv = _round_down(lo, 20)
        if not 0 < eps_tv < eps:
            continue
        left = dlt - (1 + exp_hi(eps_tv)) * tv
        if left > 0:
            rho = rho_from_eps_delta_cks(eps_tv, left)
            if best is None or rho > best:
                best = rho
    if best is None:
        raise ValueError(f"delta {dlt} does not cover the charge of the samplers' total "
                         f"variation, (1 + e^epsilon) * {samples} * 2^-40, at any epsilon")
    return JobCharge(eps, dlt, best, tv)


_TV_SHARE_FAST = Fraction(1000, 999)
_TV_SHARES = (2, 4, 8, 16, 64, 256, 1024)


# ---------------------------------------------------------------------------
# a party's lifetime budget: the sums of the charges and the one rule applied to them


@dataclass(frozen=True)
class LedgerTotals:
    """Exact sums over a set of job charges (one dataset's ledger), as the lifetime rule reads them.

    ``pure_epsilon`` E and ``pure_delta``: sums of the claimed epsilon and delta over
    charges without rho (pure jobs, whose delta is their sampler's TV term, and legacy
    ones). ``rho`` R: sum of rho over zCDP charges. ``tv`` T: sum of every charge's
    sampler TV. ``legacy_delta`` D: sum of delta over legacy charges (no rho, no tv,
    delta > 0: ledger rows from before this accounting), which the zCDP rule treats like a
    total-variation term. ``jobs``: how many charges were summed.
    """

    pure_epsilon: Fraction = Fraction(0)
    pure_delta: Fraction = Fraction(0)
    rho: Fraction = Fraction(0)
    tv: Fraction = Fraction(0)
    legacy_delta: Fraction = Fraction(0)
    jobs: int = 0

    def add(self, charge: JobCharge) -> "LedgerTotals":
        """These totals with one more charge."""
        if charge.rho is not None:
            return LedgerTotals(self.pure_epsilon, self.pure_delta, self.rho + charge.rho,
                                self.tv + charge.tv, self.legacy_delta, self.jobs + 1)
        legacy = charge.delta if charge.tv == 0 else Fraction(0)
        return LedgerTotals(self.pure_epsilon + charge.epsilon, self.pure_delta + charge.delta,
                            self.rho, self.tv + charge.tv, self.legacy_delta + legacy,
                            self.jobs + 1)

    def __add__(self, other: "LedgerTotals") -> "LedgerTotals":
        return LedgerTotals(self.pure_epsilon + other.pure_epsilon,
                            self.pure_delta + other.pure_delta, self.rho + other.rho,
                            self.tv + other.tv, self.legacy_delta + other.legacy_delta,
                            self.jobs + other.jobs)

    @classmethod
    def of(cls, charges: Iterable[JobCharge]) -> "LedgerTotals":
        """The totals of ``charges``."""
        out = cls()
        for c in charges:
            out = out.add(c)
        return out

    def spend(self, budget: "PrivacyBudget") -> "LifetimeSpend":
        """The lifetime rule over these totals under ``budget`` (:func:`lifetime_spend`)."""
        return lifetime_spend(self, budget.epsilon, budget.delta)


#: Grid of the epsilon at which the lifetime rule charges the TV terms (see lifetime_spend).
LIFETIME_GRID = Fraction(1, 1 << 32)
_FIXED_POINT_STEPS = 64


@dataclass(frozen=True)
class LifetimeSpend:
    """What :func:`lifetime_spend` concludes for some totals under a lifetime budget.

    ``epsilon``, ``delta``: the (epsilon, delta)-DP guarantee the totals amount to under
    the rule (``epsilon`` is None when no valid epsilon was found within the budget;
    when ``fits`` is False, ``epsilon`` is only a lower bound of what the rule needs).
    ``tv_epsilon``: the epsilon c at which the TV terms are charged, (1 + e^c)(T + D)
    (R = 0: E). ``free_delta``: the delta left for the zCDP conversion,
    ``budget_delta - (1 + e^c)(T + D)`` (R = 0: ``budget_delta - P``).
    """

    totals: LedgerTotals
    budget_epsilon: Fraction
    budget_delta: Fraction
    epsilon: Fraction | None
    delta: Fraction
    tv_epsilon: Fraction
    free_delta: Fraction
    fits: bool

    @property
    def remaining_epsilon(self) -> Fraction:
        """Budget epsilon minus spent epsilon (0 when it does not fit)."""
        if not self.fits or self.epsilon is None:
            return Fraction(0)
        return self.budget_epsilon - self.epsilon

    @property
    def remaining_delta(self) -> Fraction:
        """Delta not used up by the TV (and legacy) terms: ``free_delta``, never negative."""
        return max(self.free_delta, Fraction(0))

    @property
    def budget(self) -> "PrivacyBudget":
        """The lifetime budget the rule was applied under."""
        return PrivacyBudget(self.budget_epsilon, self.budget_delta)

    @property
    def spent(self) -> "PrivacyBudget | None":
        """The (epsilon, delta) the totals amount to (rho: the zCDP total, if any), or None
        when the rule finds no epsilon (the TV terms leave no delta)."""
        if self.epsilon is None:
            return None
        return PrivacyBudget(self.epsilon, min(self.delta, Fraction(1)), self.totals.rho or None)

    @property
    def remaining(self) -> "PrivacyBudget":
        """What is left: ``remaining_epsilon`` and ``remaining_delta`` (zero when over budget)."""
        return PrivacyBudget(self.remaining_epsilon, min(self.remaining_delta, Fraction(1)))


def _ceil_grid(x: Fraction) -> Fraction:
    return Fraction(math.ceil(x / LIFETIME_GRID)) * LIFETIME_GRID


def lifetime_spend(totals: LedgerTotals, budget_epsilon, budget_delta) -> LifetimeSpend:
    """The lifetime rule: which (epsilon, delta) the totals amount to and whether they fit.

    With E, P, R, T, D the totals (:class:`LedgerTotals`: pure epsilon, pure delta, rho,
    tv, legacy delta), (eps_B, delta_B) the budget, ``K(c) = 1 + exp_hi(c)`` (a rational
    upper bound of 1 + e^c) and ``free(c) = delta_B - K(c) (T + D)``:

    * R = 0 (no zCDP job): spent = (E, P), basic composition of the jobs' claimed
      guarantees (each pure job claims (eps_i, (1 + e^eps_i) tv_i)); fits iff E <= eps_B
      and P <= delta_B, or delta_B = 0 (pure DP only: the sampler deltas P are recorded
      and stated, not held against a zero delta budget).
    * R > 0: let ``g(c) = E + eps_from_rho_cks(R, free(c))`` (infinite if free(c) <= 0) and
      c* the least multiple of ``LIFETIME_GRID`` (2^-32) with g(c*) <= c*.  spent =
      (g(c*), delta_B); fits iff c* exists and g(c*) <= eps_B.  (c* is found by iterating
      c <- ceil_grid(g(c)) from ceil_grid(E), which never overshoots it because g is
      increasing; at most 64 steps, and a search that does not settle means "does not fit".)

    Sound (when it fits, the jobs in any order, each chosen adaptively, are (spent epsilon,
    spent delta)-DP). R = 0: each job is (eps_i, delta_i)-DP as run, and basic composition
    of (eps_i, delta_i)-DP mechanisms, adaptively chosen, is (sum eps_i, sum delta_i)-DP.
    R > 0: replace every job's noise by its exact law. The ideal pure parts have
    privacy loss at most E pointwise and the ideal zCDP parts compose to R-zCDP; CKS's
    bound holds for the zCDP loss plus a loss bounded by E, so the ideal sequence is
    (E + eps_z, free)-DP with eps_z = eps_from_rho_cks(R, free) (R = 0: (E, 0)-DP). For each
    pair of neighbours, each (eps_i, delta_i)-DP legacy job's outputs are within TV delta_i
    of outputs eps_i-indistinguishable from each other (Dwork-Roth, Lemma 3.17), and the
    samplers' TV distances add over the sequence, so the real outputs are within TV T + D
    of the ideal ones: delta grows by (1 + e^spent_eps) (T + D) <= K(c) (T + D) since
    spent_eps <= c. Monotone: g grows with E, R, T and D, hence so do c* and g(c*).
    The TV term is charged at the epsilon spent, not at eps_B: (1 + e^eps_B) T with a
    lifetime eps_B of 50 would exceed any delta after one job.
    """
    b_eps = to_fraction(budget_epsilon, "budget epsilon")
    b_dlt = to_fraction(budget_delta, "budget delta")
    if b_eps < 0 or b_dlt < 0:
        raise ValueError("the budget must be >= 0")
    E, R, tvd = totals.pure_epsilon, totals.rho, totals.tv + totals.legacy_delta
    if R == 0:
        P = totals.pure_delta
        # A delta budget of 0 is the operator's "pure DP only": no zCDP job fits it (the party's
        # policy refuses any delta > 0), and the pure jobs' sampler deltas (about 1e-10 each,
        # from 2^-40 per sample) are recorded and stated in every result but not held against it.
        fits = E <= b_eps and (P <= b_dlt or (b_dlt == 0 and not totals.legacy_delta))
        return LifetimeSpend(totals, b_eps, b_dlt, E, P, E, b_dlt - P, fits)

    def free(c: Fraction) -> Fraction:
        return b_dlt - (1 + exp_hi(c)) * tvd if tvd else b_dlt

    def g(c: Fraction) -> Fraction | None:
        f = free(c)
        if f <= 0:
            return None
        # a delta >= 1 says nothing; converting at 1/2 instead is valid (absurd budgets only)
        return E + eps_from_rho_cks(R, f if f < 1 else Fraction(1, 2))

    limit = _ceil_grid(b_eps)
    c = _ceil_grid(E)
    for _ in range(_FIXED_POINT_STEPS):
        v = g(c)
        if v is None:
            return LifetimeSpend(totals, b_eps, b_dlt, None, b_dlt, c, free(c), False)
        if v <= c:
            return LifetimeSpend(totals, b_eps, b_dlt, v, b_dlt, c, free(c), v <= b_eps)
        c = _ceil_grid(v)
        if c > limit:  # then c* >= c, and g(c*) > c* - grid >= eps_B: does not fit
            break
    return LifetimeSpend(totals, b_eps, b_dlt, v, b_dlt, c, free(c), False)


# ---------------------------------------------------------------------------
# the typed privacy budget every layer passes around


@dataclass(frozen=True)
class PrivacyBudget:
    """An (epsilon, delta)-DP guarantee or allowance in exact fractions, with the zCDP ``rho``
    it stands for when there is one.

    One value for what a spec asks (``Spec.privacy.budget``), what a job is charged
    (``JobCharge.budget``), what a party allows (``Policy.budget``), what its ledger has spent
    and has left (``LifetimeSpend.spent``, ``.remaining``) and what a result states
    (``Result.budget``). Inputs go through :func:`to_fraction` (floats as the decimal they
    print as); ``epsilon >= 0``, ``0 <= delta <= 1``, ``rho >= 0`` or None (not a zCDP value).

    * ``a + b`` is basic composition: epsilons add, deltas add (capped at 1: a delta of 1 says
      nothing); rhos add when both are zCDP values, otherwise the sum has no rho. Sound for
      any two mechanisms, adaptively chosen; a party's lifetime ledger composes more tightly
      (:func:`lifetime_spend`).
    * ``a <= b`` means "a fits within b": epsilon and delta (and rho, when both have one) are
      each at most b's. It is a partial order: neither of (1, 0) and (1/2, 1e-6) fits the other.
    * ``b - a`` is what remains of ``b`` after ``a`` (ValueError unless ``a <= b``).
    """

    epsilon: Fraction
    delta: Fraction = Fraction(0)
    rho: Fraction | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _nonnegative(self.epsilon, "epsilon"))
        object.__setattr__(self, "delta", _nonnegative(self.delta, "delta"))
        if self.delta > 1:
            raise ValueError(f"delta must be <= 1, found {self.delta}")
        if self.rho is not None:
            object.__setattr__(self, "rho", _nonnegative(self.rho, "rho"))

    # -- constructors and conversions

    @classmethod
    def zero(cls) -> "PrivacyBudget":
        """Nothing spent: (0, 0), rho 0."""
        return cls(Fraction(0), Fraction(0), Fraction(0))

    @classmethod
    def from_rho(cls, rho, delta) -> "PrivacyBudget":
        """The (epsilon, delta) that rho-zCDP implies at ``delta`` (Canonne-Kamath-Steinke,
        epsilon rounded up: :func:`eps_from_rho_cks`), keeping rho."""
        r = _nonnegative(rho, "rho")
        d = to_fraction(delta, "delta")
        return cls(eps_from_rho_cks(r, d), d, r)

    def to_rho(self) -> Fraction:
        """The largest rho (rounded down) whose zCDP implies this (epsilon, delta) by CKS
        (:func:`rho_from_eps_delta_cks`); this value's own rho when it has one. ValueError
        for delta 0 (pure DP has no finite zCDP equivalent at delta 0 worth using)."""
        if self.rho is not None:
            return self.rho
        if self.delta == 0:
            raise ValueError("a pure (delta 0) budget has no rho; give a delta > 0")
        return rho_from_eps_delta_cks(self.epsilon, self.delta)

    @property
    def pure(self) -> bool:
        """True for pure DP (delta 0): the discrete Laplace mechanism."""
        return self.delta == 0

    @property
    def mechanism(self) -> str:
        """``discrete_laplace`` for pure DP, ``discrete_gaussian`` otherwise (as a spec's privacy)."""
        return "discrete_laplace" if self.pure else "discrete_gaussian"

    def to_dict(self) -> dict[str, str | None]:
        """Exact fraction strings: ``{"epsilon": "1", "delta": "1/100000", "rho": null}``."""
        return {"epsilon": str(self.epsilon), "delta": str(self.delta),
                "rho": None if self.rho is None else str(self.rho)}

    def to_floats(self) -> dict[str, float | None]:
        """Floats for display and JSON readers that want numbers (the exact values are in
        :meth:`to_dict`)."""
        return {"epsilon": float(self.epsilon), "delta": float(self.delta),
                "rho": None if self.rho is None else float(self.rho)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PrivacyBudget":
        """Read :meth:`to_dict` or :meth:`to_floats` back (``delta``, ``rho`` optional; other
        fields, such as a charge's ``tv``, are ignored)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a privacy budget must be a mapping, found {type(data).__name__}")
        if "epsilon" not in data:
            raise ValueError("a privacy budget needs an epsilon")
        return cls(data["epsilon"], data.get("delta", 0), data.get("rho"))

    # -- composition and comparison

    def __add__(self, other: "PrivacyBudget") -> "PrivacyBudget":
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        rho = None if self.rho is None or other.rho is None else self.rho + other.rho
        return PrivacyBudget(self.epsilon + other.epsilon,
                             min(self.delta + other.delta, Fraction(1)), rho)

    def __radd__(self, other: Any) -> "PrivacyBudget":
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: "PrivacyBudget") -> "PrivacyBudget":
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        if not other <= self:
            raise ValueError(f"{other} does not fit within {self}")
        rho = None if self.rho is None or other.rho is None else self.rho - other.rho
        return PrivacyBudget(self.epsilon - other.epsilon, self.delta - other.delta, rho)

    def __le__(self, other: "PrivacyBudget") -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        rho_ok = self.rho is None or other.rho is None or self.rho <= other.rho
        return self.epsilon <= other.epsilon and self.delta <= other.delta and rho_ok

    def __ge__(self, other: "PrivacyBudget") -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return other <= self

    def __lt__(self, other: "PrivacyBudget") -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return self <= other and self != other

    def __gt__(self, other: "PrivacyBudget") -> bool:
        if not isinstance(other, PrivacyBudget):
            return NotImplemented
        return other < self

    def __str__(self) -> str:
        """``(epsilon 1, delta 1e-05)`` with short decimals (exact figures: :meth:`to_dict`)."""
        rho = "" if self.rho is None else f", rho {float(self.rho):.6g}"
        return f"(epsilon {float(self.epsilon):.6g}, delta {float(self.delta):.3g}{rho})"
