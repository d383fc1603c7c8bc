"""Noise samplers on the single-process MPyC runtime: exact laws, freshness, integer-only path."""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy import stats

from jointstats.mpc import speedups as _mpc_speedups
from jointstats.noise import sampler as _noise
from jointstats.mpc.runtime import local_runtime
from jointstats.noise.sampler import (
    DELTA_TARGET, dg_plan, discrete_gaussian, discrete_gaussian_delta, discrete_laplace,
    discrete_laplace_delta, dl_plan,
)

P_MIN = 1e-4


@pytest.fixture(scope="module")
def rt():
    rt = local_runtime()
    saved = rt._prss_keys
    rt._prss_keys = {(0,): bytes(range(16))}  # fixed PRF key: reproducible samples
    yield rt
    rt._prss_keys = saved


def _reveal(rt, x) -> np.ndarray:
    return np.array([int(v) for v in rt.run(rt.output(x))], dtype=np.int64)


def _dl_pmf(scale: float, ks: np.ndarray) -> np.ndarray:
    a = math.exp(-1 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(ks)


def _dg_pmf(sigma2: float, ks: np.ndarray) -> np.ndarray:
    K = int(50 * math.sqrt(sigma2)) + 50
    z = sum(math.exp(-k * k / (2 * sigma2)) for k in range(-K, K + 1))
    return np.exp(-(ks.astype(float) ** 2) / (2 * sigma2)) / z


def _chisquare(samples: np.ndarray, pmf) -> float:
    """Chi-square p-value against pmf, pooling the tails into cells with expectation >= 5."""
    n = len(samples)
    lo, hi = int(samples.min()) - 1, int(samples.max()) + 1
    span = max(abs(lo), abs(hi)) + 50
    ks = np.arange(-span, span + 1)
    p = pmf(ks)
    # cells: central values with n*p >= 5, plus the two tails
    keep = np.nonzero(n * p >= 5)[0]
    a, b = ks[keep[0]], ks[keep[-1]]
    cells = [(-np.inf, a - 1)] + [(k, k) for k in range(a, b + 1)] + [(b + 1, np.inf)]
    obs, exp = [], []
    for l, r in cells:
        obs.append(np.count_nonzero((samples >= l) & (samples <= r)))
        mask = (ks >= l) & (ks <= r)
        exp.append(p[mask].sum() + (1 - p.sum()) / 2 * (np.isinf(l) or np.isinf(r)))
    obs, exp = np.array(obs, float), np.array(exp) * n
    if exp[0] < 5:  # merge small tails into their neighbours
        obs[1] += obs[0]; exp[1] += exp[0]; obs, exp = obs[1:], exp[1:]
    if exp[-1] < 5:
        obs[-2] += obs[-1]; exp[-2] += exp[-1]; obs, exp = obs[:-1], exp[:-1]
    exp *= obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


# --------------------------------------------------------------------------- plans


@pytest.mark.parametrize("scale", [F(1, 5), F(1), F(7, 2), F(100), F(10**9)])
def test_dl_plan_delta_and_coins(scale):
    plan = dl_plan(scale)
    assert 0 < plan.delta <= DELTA_TARGET
    assert discrete_laplace_delta(scale) == plan.delta
    for coin in [plan.zero] + [c for _, c in plan.bits]:
        if coin.k:
            assert coin.c % 2 == 1 and 0 < coin.c < 2 ** coin.k
    # coin biases really are close to the exact digit biases
    for i, c in plan.bits:
        exact = 1 / (1 + math.exp(2 ** i / float(scale)))
        assert abs(float(c.prob) - exact) <= float(c.err) + 1e-15
    a = math.exp(-1 / float(scale))
    assert abs(float(plan.zero.prob) - (1 - a) / (1 + a)) <= float(plan.zero.err) + 1e-15


@pytest.mark.parametrize("sigma2", [F(1, 3), F(1), F(50), F(10**6), F(10**14)])
def test_dg_plan_delta(sigma2):
    plan = dg_plan(sigma2)
    assert 0 < plan.delta <= DELTA_TARGET
    assert discrete_gaussian_delta(sigma2) == plan.delta
    assert F(C := plan.C, plan.D) == sigma2 / plan.t and C >= 1
    assert F(1, 2) < plan.alpha_lo < 1
    # fewer trials: larger delta, dominated by the failure probability
    few = discrete_gaussian_delta(sigma2, 3)
    assert few > (1 - plan.alpha_lo) ** 3 * F(99, 100) and few > plan.delta


def _floats_in(obj, path="plan"):
    if isinstance(obj, float):
        yield path
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _floats_in(getattr(obj, f.name), f"{path}.{f.name}")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _floats_in(v, f"{path}[{i}]")


def test_plans_are_integer_and_rational_only():
    for plan in (dl_plan(F(3, 2)), dg_plan(F(20))):
        assert list(_floats_in(plan)) == []


# --------------------------------------------------------------------------- laws


@pytest.mark.parametrize("scale,n", [(F(1), 20000), (F(7, 2), 12000)])
def test_discrete_laplace_matches_pmf(rt, scale, n):
    x = _reveal(rt, discrete_laplace(rt, rt.SecInt(64), scale, n))
    assert len(x) == n
    assert _chisquare(x, lambda ks: _dl_pmf(float(scale), ks)) > P_MIN
    assert np.abs(x).max() <= dl_plan(scale).max_abs
    # the exact law's variance 2a/(1-a)^2 (sanity, 6 standard errors)
    a = math.exp(-1 / float(scale))
    var = 2 * a / (1 - a) ** 2
    assert abs(x.var() - var) < 6 * var * math.sqrt(8 / n) + 0.1


@pytest.mark.parametrize("sigma2,n", [(F(1), 10000), (F(9, 4), 10000), (F(40), 10000)])
def test_discrete_gaussian_matches_pmf(rt, sigma2, n):
    x = _reveal(rt, discrete_gaussian(rt, rt.SecInt(64), sigma2, n))
    pmf = lambda ks: _dg_pmf(float(sigma2), ks)  # noqa: E731
    assert _chisquare(x, pmf) > P_MIN
    # the zero cell is special in the sampler (zero coin, own acceptance coin): test it alone
    zeros = int(np.count_nonzero(x == 0))
    assert stats.binomtest(zeros, n, float(pmf(np.array([0]))[0])).pvalue > P_MIN


def test_discrete_gaussian_fallback_is_the_proposal(rt):
    """With one trial, a rejected trial still outputs its discrete Laplace value: the
    output law is then exactly the proposal DL(t), never an excess of zeros."""
    sigma2 = F(9)
    plan = dg_plan(sigma2, 1)
    assert plan.trials == 1 and plan.delta > F(1, 10)  # honest delta: mostly failure
    x = _reveal(rt, discrete_gaussian(rt, rt.SecInt(64), sigma2, 10000, trials=1))
    assert _chisquare(x, lambda ks: _dl_pmf(float(plan.t), ks)) > P_MIN


def test_discrete_gaussian_large_sigma_moments(rt):
    sigma2 = F(10**10)
    n = 4000
    x = _reveal(rt, discrete_gaussian(rt, rt.SecInt(96), sigma2, n)).astype(float)
    s = math.sqrt(float(sigma2))
    assert abs(x.mean()) < 5 * s / math.sqrt(n)
    assert abs(x.var() / float(sigma2) - 1) < 6 * math.sqrt(2 / n)
    # Kolmogorov-Smirnov against the normal law (discretisation is negligible here)
    assert stats.kstest(x / s, "norm").pvalue > P_MIN


def test_chisquare_helper_rejects_wrong_law(rt):
    """The test statistic has power: scale 1 samples are rejected as scale 1.3."""
    x = _reveal(rt, discrete_laplace(rt, rt.SecInt(64), F(1), 20000))
    assert _chisquare(x, lambda ks: _dl_pmf(1.3, ks)) < P_MIN
    y = _reveal(rt, discrete_gaussian(rt, rt.SecInt(64), F(9, 4), 10000))
    assert _chisquare(y, lambda ks: _dg_pmf(3.0, ks)) < P_MIN


# --------------------------------------------------------------------------- freshness, types


def test_two_calls_give_different_noise(rt):
    st = rt.SecInt(64)
    a = _reveal(rt, discrete_laplace(rt, st, F(5), 200))
    b = _reveal(rt, discrete_laplace(rt, st, F(5), 200))
    assert not np.array_equal(a, b)
    c = _reveal(rt, discrete_gaussian(rt, st, F(25), 200))
    d = _reveal(rt, discrete_gaussian(rt, st, F(25), 200))
    assert not np.array_equal(c, d)


def test_noise_path_is_integer_shares_only(rt, monkeypatch):
    seen = []
    orig_and = _noise._Ctx.and_
    orig_rand = _noise._Ctx.rand

    async def spy_and(self, x, y):
        seen.append((x.dtype, y.dtype))
        z = await orig_and(self, x, y)
        seen.append((z.dtype,))
        return z

    def spy_rand(self, rows, W):
        r = orig_rand(self, rows, W)
        seen.append((r.dtype,))
        return r

    monkeypatch.setattr(_noise._Ctx, "and_", spy_and)
    monkeypatch.setattr(_noise._Ctx, "rand", spy_rand)
    st = rt.SecInt(64)
    for x in (discrete_laplace(rt, st, F(2), 100), discrete_gaussian(rt, st, F(30), 100)):
        assert isinstance(x, st.array) and x.shape == (100,)
        shares = rt.run(rt.gather(x))
        assert isinstance(shares, st.field.array)
        assert all(type(v) is int for v in shares.value.flat)
    assert seen and all(d == np.uint64 for t in seen for d in t)


def test_rejects_floats_and_fixed_point(rt):
    with pytest.raises(TypeError):
        discrete_laplace(rt, rt.SecInt(64), 1.0, 10)
    with pytest.raises(TypeError):
        discrete_gaussian(rt, rt.SecInt(64), 2.5, 10)
    with pytest.raises(TypeError):
        discrete_laplace(rt, rt.SecFxp(64), F(1), 10)
    with pytest.raises(ValueError):
        discrete_laplace(rt, rt.SecInt(64), F(0), 10)
    with pytest.raises(ValueError):
        discrete_gaussian(rt, rt.SecInt(64), F(1), 10, trials=0)


def test_prime_field_type_and_empty(rt):
    st = rt.SecFld(2**61 - 1)
    p = st.field.modulus
    x = [int(v) for v in rt.run(rt.output(discrete_laplace(rt, st, F(3), 500)))]
    signed = np.array([v if v <= p // 2 else v - p for v in x])
    assert np.abs(signed).max() <= dl_plan(F(3)).max_abs and signed.std() > 1
    assert discrete_laplace(rt, rt.SecInt(64), F(1), 0).shape == (0,)


# --------------------------------------------------------------------------- Boolean engine


def _ctx(rt):
    return _noise._ctx(rt)


def test_pack_unpack_roundtrip():
    bits = np.random.default_rng(1).integers(0, 2, size=(3, 130), dtype=np.uint8)
    assert np.array_equal(_noise.unpack(_noise.pack(bits), 130), bits)


@pytest.mark.parametrize("w,k", [(1, 0), (1, 1), (2, 3), (9, 77), (9, 0), (9, 1023), (16, 40000), (33, 5 ** 14),
                                 (70, 3 ** 40)])
def test_circuits_exact(rt, w, k):
    """Prefix adder, conditional negation and squaring against integer arithmetic (all lanes)."""
    ctx = _ctx(rt)
    n = 640
    W = n // 64

    async def run():
        x = ctx.rand(w, W)
        s = await _noise._add_public(ctx, [x[:, i] for i in range(w)], k, w + 1, W)
        neg = await _noise._conditional_negate(ctx, s, s[:, -1:])
        sq = await _noise._square(ctx, x)
        return [await ctx.reveal(v) for v in (x, s, neg, sq)]

    xv, sv, nv, qv = (_noise.unpack(v, n).astype(object) for v in rt.run(run()))  # exact ints
    weights = lambda r: np.array([1 << i for i in range(r.shape[0])], dtype=object)[:, None]  # noqa: E731
    X = (xv * weights(xv)).sum(0)
    S = (sv * weights(sv)).sum(0)
    assert np.array_equal(S, (X + k) % (1 << (w + 1)))
    signed = np.where(S >= 1 << w, S - (1 << (w + 1)), S)
    assert np.array_equal((nv * weights(nv)).sum(0), np.abs(signed))
    assert np.array_equal((qv * weights(qv)).sum(0), X * X)


def test_coins_have_planned_bias(rt):
    ctx = _ctx(rt)
    coins = [_noise.Coin(3, 5, F(0)), _noise.Coin(7, 1, F(0)), _noise.Coin(1, 1, F(0)),
             _noise.Coin(0, 1, F(0)), _noise.Coin(0, 0, F(0))]
    n = 64 * 800

    async def run():
        return await ctx.reveal(await _noise._coins(ctx, coins, n // 64))

    bits = _noise.unpack(rt.run(run()), n)
    for row, coin in zip(bits, coins):
        p = float(coin.prob)
        if p in (0.0, 1.0):
            assert row.mean() == p
        else:
            assert stats.binomtest(int(row.sum()), n, p).pvalue > P_MIN


# --------------------------------------------------------------------------- speed-ups


def test_speedup_split_is_a_valid_sharing(rt):
    field = rt.SecInt(64).field
    secrets_ = field.array(np.array([0, 1, 12345, field.modulus - 1], dtype=object))
    shares = _mpc_speedups.np_random_split(field, secrets_, 2, 5)
    assert shares.shape == (5, 4)
    th = _mpc_speedups._thresha
    for subset in ([0, 1, 2], [2, 3, 4], [0, 2, 4]):
        points = [(i + 1, shares[i]) for i in subset]
        assert list(th.np_recombine(field, points).value) == list(secrets_.value)
    # the random coefficients really vary
    again = _mpc_speedups.np_random_split(field, secrets_, 2, 5)
    assert not np.array_equal(shares, again)
    _mpc_speedups.install()
    try:
        assert _mpc_speedups.installed()
        x = rt.SecInt(64).array(np.array([3, 4]))
        assert [int(v) for v in rt.run(rt.output(x * x))] == [9, 16]
    finally:
        _mpc_speedups.uninstall()
    assert not _mpc_speedups.installed()


def test_noise_plans_are_those_of_the_plain_fraction_search():
    # _frontier works in integers and _choose_coins in gmpy2 rationals with a heap; the coins they
    # choose must be exactly those of the straightforward Fraction scan (first best on ties)
    from fractions import Fraction as _F

    from jointstats.noise import sampler as _noise

    from tests.unit.test_noise_plans import _frontier_reference as frontier

    def choose(frontiers, budget):
        idx = [0] * len(frontiers)
        total = sum(f[0].err for f in frontiers)
        while total > budget:
            best, best_ratio = None, None
            for i, f in enumerate(frontiers):
                j = idx[i]
                if j + 1 < len(f):
                    ratio = (f[j].err - f[j + 1].err) / (f[j + 1].k - f[j].k)
                    if best_ratio is None or ratio > best_ratio:
                        best, best_ratio = i, ratio
            total -= frontiers[best][idx[best]].err - frontiers[best][idx[best] + 1].err
            idx[best] += 1
        improved = True
        while improved:
            improved = False
            for i, f in enumerate(frontiers):
                j = idx[i]
                if j > 0 and total + f[j - 1].err - f[j].err <= budget:
                    total += f[j - 1].err - f[j].err
                    idx[i] = j - 1
                    improved = True
        return [f[j] for f, j in zip(frontiers, idx)]

    from jointstats.plan.accounting import exp_neg_bounds
    for scale in [_F(1), _F(3, 2), _F(1000), _F(2 ** 40, 3)]:
        bounds = [exp_neg_bounds(_F(1 << i) / scale, _noise._BIAS_PREC) for i in range(12)]
        fast = [_noise._frontier(lo / (1 + lo), hi / (1 + hi)) for lo, hi in bounds]
        slow = [frontier(lo / (1 + lo), hi / (1 + hi)) for lo, hi in bounds]
        assert [f.coins() for f in fast] == slow
        assert _noise._choose_coins(fast, _noise.DELTA_TARGET / 3) == choose(slow, _noise.DELTA_TARGET / 3)
    # intervals at the edges: biases near 0, near 1 and exactly dyadic (ties to even)
    for lo, hi in [(_F(0), _F(1, 1 << 85)), (_F(1) - _F(1, 1 << 85), _F(1)), (_F(1, 2), _F(1, 2)),
                   (_F(3, 8), _F(3, 8)), (_F(5, 1 << 81), _F(5, 1 << 81)), (_F(1, 3), _F(1, 3) + _F(1, 1 << 100))]:
        assert _noise._frontier(lo, hi).coins() == frontier(lo, hi), (lo, hi)
