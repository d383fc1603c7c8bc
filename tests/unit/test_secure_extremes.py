"""The plan's number sizes hold at the largest case: every row at a corner of the bounds and
the maximum row count, checked exactly (Fractions) in single-process MPyC."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import gmpy2
import pytest
from hypothesis import given, settings, strategies as st

from jointstats.plan.fields import _OFFSETS_2048, crt, inverse_mod, rational, regression_primes
from jointstats.mpc.runtime import local_runtime
from jointstats.engine.secure import exact_statistic
from jointstats.plan.sealed import MAX_ROWS_PER_PARTY, make_plan, regression_fields, regression_sizes
from jointstats.plan.spec import parse_spec

SPEC = """
dataset: d
schema:
  x1: {type: real, bounds: [-1000, 1000]}
  x2: {type: real, bounds: [0, 1.0e6]}
  x3: {type: integer, bounds: [-50, 50]}
  g:  {type: categorical, levels: [a, b, c]}
  y:  {type: real, bounds: [-1.0e9, 1.0e9]}
statistics:
  m:   {kind: mean, column: y}
  v:   {kind: variance, column: y}
  c:   {kind: correlation, columns: [x1, x2, y]}
  ols: {kind: regression, target: y, features: [x1, x2, x3, g]}
  rdg: {kind: regression, target: y, features: [x1, x2, x3, g], ridge: 0.75}
  noint: {kind: regression, target: y, features: [x1, x2, x3], intercept: false}
"""


def corner_rows(stat, count, rng):
    """Design rows with every numeric term at its lowest or highest grid value."""
    rows = []
    for _ in range(count):
        row = []
        for t in stat.terms:
            if t.kind == "one":
                row.append(1)
            elif t.kind == "num":
                row.append(rng.choice(t.grid_bounds))
            else:
                row.append(0)
        level = rng.randrange(3)
        for j, t in enumerate(stat.terms):
            if t.kind == "ind":
                row[j] = int(t.level == level)
        rows.append(row)
    return rows


def gram_partial(rows, weights):
    k = len(rows[0])
    g = [[sum(w * r[i] * r[j] for r, w in zip(rows, weights)) for j in range(k)] for i in range(k)]
    return g, [g[i][j] for i in range(k) for j in range(i, k)]


def solve_fraction(a, b):
    n = len(a)
    m = [[Fraction(v) for v in row] + [Fraction(bb)] for row, bb in zip(a, b)]
    for c in range(n):
        p = next(r for r in range(c, n) if m[r][c] != 0)
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c and m[r][c] != 0:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c])]
    return [m[i][n] / m[i][i] for i in range(n)]


@pytest.fixture(scope="module")
def extreme():
    spec = parse_spec(SPEC)
    plan = make_plan(spec, ["p1", "p2", "p3"])
    n_max = 3 * MAX_ROWS_PER_PARTY
    rng = random.Random(7)
    return plan, n_max, rng


def run_stat(stat, partial, min_count=None):
    rt = local_runtime()
    return rt.run(exact_statistic(rt, stat, partial, min_count))


def exact_ols(g, stat):
    """Coefficients, squared standard errors and R^2 of OLS as Fractions (grid units)."""
    k = len(stat.terms)
    z = list(range(0 if stat.intercept else 1, k - 1))
    a = [[Fraction(g[i][j]) for j in z] for i in z]
    b = [Fraction(g[i][k - 1]) for i in z]
    beta = solve_fraction(a, b)
    n, d = g[0][0], len(z)
    rss = g[k - 1][k - 1] - sum(bj * bi for bj, bi in zip(beta, b))
    inv_diag = [solve_fraction(a, [Fraction(int(i == j)) for i in range(d)])[j] for j in range(d)]
    se2 = [v * rss / (n - d) for v in inv_diag]
    if stat.intercept:
        tss = n * g[k - 1][k - 1] - Fraction(g[0][k - 1]) ** 2
        return beta, se2, 1 - rss * n / tss
    return beta, se2, 1 - rss / g[k - 1][k - 1]


def assert_exact_ols(res, stat, beta, se2, r2):
    """The revealed OLS result is the exact one (grid units scaled to the columns' units)."""
    fy = stat.terms[-1].frac_bits
    coef_terms = stat.terms[0 if stat.intercept else 1:-1]  # as exact_ols's columns z
    scale = [Fraction(2) ** (t.frac_bits - fy) for t in coef_terms]
    assert res["coefficients"] == [float(b * s) for b, s in zip(beta, scale, strict=True)]
    assert res["std_errors"] == pytest.approx([math.sqrt(v) * float(s) for v, s in zip(se2, scale)], rel=1e-12)
    assert res["r_squared"] == float(r2)


def test_regression_without_intercept_is_exact(extreme):
    plan, n_max, rng = extreme
    stat = next(s for s in plan.statistics if s.name == "noint")
    rows = corner_rows(stat, 9, rng)
    weights = [rng.randrange(1, 50_000) for _ in rows]
    g, partial = gram_partial(rows, weights)
    res = run_stat(stat, partial)
    assert res["terms"] == ["x1", "x2", "x3"]
    assert_exact_ols(res, stat, *exact_ols(g, stat))


def test_constant_target_has_no_r_squared(extreme):
    """y the same on every row: tss = 0, so R^2 is undefined (None); the fit is y = c exactly."""
    plan, _, rng = extreme
    stat = next(s for s in plan.statistics if s.name == "ols")
    rows = corner_rows(stat, 14, rng)
    c = stat.terms[-1].grid_bounds[1]
    for row in rows:
        row[-1] = c
    g, partial = gram_partial(rows, [rng.randrange(1, 1000) for _ in rows])
    res = run_stat(stat, partial)
    assert res["r_squared"] is None
    assert res["coefficients"][0] == pytest.approx(c / 2 ** stat.terms[-1].frac_bits, rel=1e-12)
    assert res["coefficients"][1:] == [0.0] * (len(res["coefficients"]) - 1)


@pytest.mark.parametrize("rows_in_all", ["row limit", 300_000])
def test_regression_at_largest_case(extreme, rows_in_all):
    plan, n_max, rng = extreme
    n_target = n_max if rows_in_all == "row limit" else rows_in_all
    stat = next(s for s in plan.statistics if s.name == "ols")
    rows = corner_rows(stat, 14, rng)
    weights = [n_target // 14 - rng.randrange(1000) for _ in rows]
    g, partial = gram_partial(rows, weights)
    n = sum(weights)
    # the row limit needs every planned field; 3e5 rows need fewer (the job uses only those)
    assert (regression_fields(stat, n) == stat.primes) == (rows_in_all == "row limit")
    res = run_stat(stat, partial)
    beta, se2, r2 = exact_ols(g, stat)
    # every revealed rational fits the bound the fields were chosen for
    largest = (regression_sizes(stat.terms, stat.ridge, stat.intercept, n)[3] - 64) // 2
    for q in beta + se2 + [r2]:
        assert max(abs(q.numerator).bit_length(), q.denominator.bit_length()) <= largest
    assert res["n"] == n
    assert_exact_ols(res, stat, beta, se2, r2)


def test_ridge_at_largest_case(extreme):
    plan, n_max, rng = extreme
    stat = next(s for s in plan.statistics if s.name == "rdg")
    rows = corner_rows(stat, 12, rng)
    weights = [n_max // 12 - rng.randrange(1000) for _ in rows]
    g, partial = gram_partial(rows, weights)
    res = run_stat(stat, partial)
    k = len(stat.terms)
    z = list(range(k - 1))
    a = [[Fraction(g[i][j]) for j in z] for i in z]
    for j in z:
        if stat.terms[j].kind != "one":
            a[j][j] += stat.ridge * Fraction(2) ** (2 * stat.terms[j].frac_bits)
    beta = solve_fraction(a, [g[i][k - 1] for i in z])
    fy = stat.terms[-1].frac_bits
    expected = [float(b * Fraction(2) ** (stat.terms[j].frac_bits - fy)) for j, b in enumerate(beta)]
    assert res["coefficients"] == pytest.approx(expected, rel=1e-12)


def test_moments_and_correlation_at_largest_case(extreme):
    plan, n_max, rng = extreme
    for name in ("m", "v", "c"):
        stat = next(s for s in plan.statistics if s.name == name)
        rows = corner_rows(stat, 5, rng)
        weights = [n_max // 5 - rng.randrange(1000) for _ in rows]
        g, partial = gram_partial(rows, weights)
        res = run_stat(stat, partial)
        n = g[0][0]
        if name == "m":
            f = stat.terms[1].frac_bits
            assert res["value"] == pytest.approx(float(Fraction(g[0][1], n) / 2 ** f), rel=1e-12)
        elif name == "v":
            f = stat.terms[1].frac_bits
            var = Fraction(n * g[1][1] - g[0][1] ** 2, n * (n - 1)) / 4 ** f
            assert res["value"] == pytest.approx(float(var), rel=1e-12)
        else:
            d = len(stat.terms) - 1
            cov = [[n * g[i + 1][j + 1] - g[0][i + 1] * g[0][j + 1] for j in range(d)] for i in range(d)]
            for i in range(d):
                for j in range(d):
                    r = cov[i][j] / math.sqrt(cov[i][i] * cov[j][j])
                    assert res["matrix"][i][j] == pytest.approx(r, rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_fixed_primes_are_blum_primes():
    for p in regression_primes(len(_OFFSETS_2048)):
        assert p.bit_length() == 2048 and p % 4 == 3 and gmpy2.is_prime(p, 30)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2 ** 200), 2 ** 200), st.integers(1, 2 ** 200))
def test_rational_reconstruction_roundtrip(num, den):
    primes = regression_primes(1)
    p = primes[0]
    q = Fraction(num, den)
    residue = q.numerator * pow(q.denominator, -1, p) % p
    assert rational(residue, p, 201, 201) == q
    x, modulus = crt([q.numerator * pow(q.denominator, -1, pi) % pi for pi in regression_primes(2)],
                     regression_primes(2))
    assert rational(x, modulus, 1000, 1000) == q


def test_inverse_mod_and_singular():
    p = regression_primes(1)[0]
    m = [[2, 1], [1, 3]]
    inv = inverse_mod(m, p)
    prod = [[sum(m[i][k] * inv[k][j] for k in range(2)) % p for j in range(2)] for i in range(2)]
    assert prod == [[1, 0], [0, 1]]
    assert inverse_mod([[1, 2], [2, 4]], p) is None
