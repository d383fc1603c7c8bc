"""One lock-step sampler batch for draws of several scales (``discrete_*_many``): every draw
follows its own exact law, draws are independent of each other, and a batch costs the AND
rounds of its deepest draw, not the sum over its draws (single-process MPyC runtime)."""
from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy import stats

from jointstats.noise import sampler as _noise
from jointstats.mpc.runtime import local_runtime
from jointstats.noise.sampler import (
    Coin, dg_plan, discrete_gaussian, discrete_gaussian_many, discrete_laplace, discrete_laplace_many,
    dl_plan,
)
from tests.unit.test_noise_single import P_MIN, _chisquare, _dg_pmf, _dl_pmf


@pytest.fixture(scope="module")
def rt():
    rt = local_runtime()
    saved = rt._prss_keys
    rt._prss_keys = {(0,): bytes(range(1, 17))}  # fixed PRF key: reproducible samples
    yield rt
    rt._prss_keys = saved


def _reveal(rt, x) -> np.ndarray:
    return np.array([int(v) for v in rt.run(rt.output(x))], dtype=np.int64)


def _signed(rt, x, p: int) -> np.ndarray:
    return np.array([v if v <= p // 2 else v - p for v in (int(u) for u in rt.run(rt.output(x)))])


@pytest.mark.slow
def test_gaussian_batch_draws_follow_their_own_laws(rt):
    """Four scales (D = 16 and D = 1 centres, small and large sigma), one with a single trial
    (its law is then the proposal's), and two secure types, all in one batch."""
    st, fld = rt.SecInt(64), rt.SecFld(2**61 - 1)
    draws = [(st, F(1), 6000), (fld, F(9, 4), 6000), (st, F(40), 6000), (st, F(9), 6000, 1),
             (st, F(10**10), 3000)]
    xs = discrete_gaussian_many(rt, draws)
    assert [x.shape for x in xs] == [(n,) for _, _, n, *_ in draws]
    a = _reveal(rt, xs[0])
    b = _signed(rt, xs[1], fld.field.modulus)
    c = _reveal(rt, xs[2])
    d = _reveal(rt, xs[3])
    e = _reveal(rt, xs[4]).astype(float)
    assert _chisquare(a, lambda ks: _dg_pmf(1.0, ks)) > P_MIN
    assert _chisquare(b, lambda ks: _dg_pmf(2.25, ks)) > P_MIN
    assert _chisquare(c, lambda ks: _dg_pmf(40.0, ks)) > P_MIN
    assert _chisquare(d, lambda ks: _dl_pmf(float(dg_plan(F(9), 1).t), ks)) > P_MIN  # fallback law
    s = math.sqrt(1e10)
    assert stats.kstest(e / s, "norm").pvalue > P_MIN
    # the zero cell (its own acceptance coin) of the D = 16 draw
    zeros = int(np.count_nonzero(a == 0))
    assert stats.binomtest(zeros, len(a), float(_dg_pmf(1.0, np.array([0]))[0])).pvalue > P_MIN
    # every value within its own plan's hard bound (no lane read another draw's digits)
    for x, (_, s2, _, *t) in zip((a, b, c, d), draws):
        assert np.abs(x).max() <= dg_plan(s2, *t).max_abs


def test_laplace_batch_draws_follow_their_own_laws(rt):
    st = rt.SecInt(64)
    xs = discrete_laplace_many(rt, [(st, F(1), 8000), (st, F(7, 2), 8000), (rt.SecInt(96), F(10**9), 3000)])
    a, b, c = (_reveal(rt, x) for x in xs)
    assert _chisquare(a, lambda ks: _dl_pmf(1.0, ks)) > P_MIN
    assert _chisquare(b, lambda ks: _dl_pmf(3.5, ks)) > P_MIN
    # scale 1e9: |x| / scale is exponential with mean about 1
    assert stats.kstest(np.abs(c.astype(float)) / 1e9, "expon").pvalue > P_MIN
    assert np.abs(c).max() <= dl_plan(F(10**9)).max_abs


@pytest.mark.parametrize("many,scales", [
    (discrete_gaussian_many, [F(9, 4), F(9, 4), F(40)]),
    (discrete_laplace_many, [F(3, 2), F(3, 2), F(5)]),
])
@pytest.mark.slow
def test_batch_draws_are_independent(rt, many, scales):
    """Draws of one batch share rounds, never bits: the pairs (draw 1, draw 2) of the same
    scale, and (draw 1, draw 3), pass a chi-square independence test on their signs and
    magnitude classes, and draw 1 never repeats draw 2."""
    n = 6000
    st = rt.SecInt(64)
    xs = [_reveal(rt, x) for x in many(rt, [(st, s, n) for s in scales])]
    assert not np.array_equal(xs[0], xs[1])

    def cls(x):  # 0, small positive, large positive, small negative, large negative
        big = np.abs(x) > np.median(np.abs(x[x != 0])) if np.any(x != 0) else np.zeros_like(x, bool)
        return np.where(x == 0, 0, np.where(x > 0, 1 + big, 3 + big))
    for other in (xs[1], xs[2]):
        table = np.zeros((5, 5))
        np.add.at(table, (cls(xs[0]), cls(other)), 1)
        table = table[table.sum(1) > 0][:, table.sum(0) > 0]
        assert stats.chi2_contingency(table).pvalue > P_MIN


def test_same_draws_batched_or_alone_have_one_law(rt):
    """A draw alone (``discrete_gaussian``) and the same draw inside a batch of other scales
    follow the same law (two-sample chi-square on the values)."""
    st = rt.SecInt(64)
    alone = _reveal(rt, discrete_gaussian(rt, st, F(9, 4), 8000))
    batched = _reveal(rt, discrete_gaussian_many(rt, [(st, F(10**6), 50), (st, F(9, 4), 8000),
                                                      (st, F(1, 3), 70)])[1])
    lo, hi = -4, 4
    cells = lambda x: np.clip(x, lo, hi) - lo  # noqa: E731
    table = np.array([np.bincount(cells(alone), minlength=hi - lo + 1),
                      np.bincount(cells(batched), minlength=hi - lo + 1)])
    assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > P_MIN
    again = _reveal(rt, discrete_laplace(rt, st, F(2), 8000))
    mixed = _reveal(rt, discrete_laplace_many(rt, [(st, F(2), 8000), (st, F(10**12), 5)])[0])
    table = np.array([np.bincount(cells(again), minlength=9), np.bincount(cells(mixed), minlength=9)])
    assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > P_MIN


def _rounds(rt, fn, *args) -> int:
    ctx = _noise._ctx(rt)
    count = [0]
    orig = ctx.and_

    async def counting(x, y):
        count[0] += 1
        return await orig(x, y)
    ctx.and_ = counting
    try:
        x = fn(rt, *args)
        for v in (x if isinstance(x, list) else [x]):
            rt.run(rt.output(v))
    finally:
        del ctx.and_
    return count[0]


@pytest.mark.parametrize("many,scales", [
    (discrete_gaussian_many, [F(1), F(82), F(6405), F(10**12), F(10**21), F(8 * 10**39)]),
    (discrete_laplace_many, [F(4), F(8), F(312), F(10**9), F(3 * 10**11), F(4 * 10**20)]),
])
def test_batch_rounds_do_not_grow_with_the_number_of_scales(rt, many, scales):
    st = rt.SecInt(200)
    alone = [_rounds(rt, many, [(st, s, 3)]) for s in scales]
    together = _rounds(rt, many, [(st, s, 3) for s in scales])
    assert together <= max(alone) + 1 < sum(alone)


# three draws' lanes: different k, c and constants per draw, probabilities 0 and 1 included
LANE_COINS = [[Coin(3, 5, F(0)), Coin(0, 1, F(0)), Coin(9, 1, F(0))],
              [Coin(1, 1, F(0)), Coin(5, 3, F(0)), Coin(0, 0, F(0))],
              [Coin(0, 0, F(0)), Coin(2, 3, F(0)), Coin(7, 127, F(0))]]
LANE_COUNTS = [20000, 30000, 25000]


def _check_lane_bits(bits: np.ndarray) -> None:
    """Row r of draw g's lanes follows coin LANE_COINS[g][r] (exactly for p in {0, 1})."""
    at = 0
    for g, n in enumerate(LANE_COUNTS):
        for r, coin in enumerate(LANE_COINS[g]):
            row = bits[r, at:at + n]
            p = float(coin.prob)
            if p in (0.0, 1.0):
                assert row.mean() == p
            else:
                assert stats.binomtest(int(row.sum()), n, p).pvalue > P_MIN, (g, r, coin)
        at += n


def test_lane_coins_have_their_own_draws_bias(rt):
    """Row r of draw g's lanes is coin coins[g][r]: different k, c and constants per draw."""
    ctx = _noise._ctx(rt)
    coins, counts = LANE_COINS, LANE_COUNTS
    lanes = _noise._Lanes(counts, [1, 1, 1])

    async def run():
        return await ctx.reveal(await _noise._lane_coins(ctx, coins, lanes))
    bits = _noise.unpack(rt.run(run()), sum(counts))
    _check_lane_bits(bits)


def _dg_few_trials_pmf(sigma2: F, trials: int, ks: np.ndarray) -> np.ndarray:
    """The exact output law with few trials: the first accepted of trials 1 .. K-1, else the
    last trial's proposal value: (1 - q**(K-1)) DG + q**(K-1) DL(t), q = 1 - alpha."""
    plan = dg_plan(sigma2, trials)
    t, c, s2 = float(plan.t), plan.C / plan.D, float(sigma2)
    span = np.arange(-4000, 4001)
    dl = _dl_pmf(t, span)
    alpha = float((dl * np.exp(-(np.abs(span) - c) ** 2 / (2 * s2))).sum())
    q = (1 - alpha) ** (trials - 1)
    return (1 - q) * _dg_pmf(s2, ks) + q * _dl_pmf(t, ks)


def test_few_trials_fall_back_to_the_last_trial_in_a_batch(rt):
    """With 1, 2 and 3 trials in one batch (and a draw of 21 trials before them, so that
    their lanes sit after others in every block), each slot whose earlier trials all reject
    outputs its last trial's proposal value, never a zero: the exact mixture law."""
    st = rt.SecInt(64)
    draws = [(st, F(40), 300), (st, F(9), 8000, 1), (st, F(9), 8000, 2), (st, F(9, 4), 8000, 3)]
    xs = [_reveal(rt, x) for x in discrete_gaussian_many(rt, draws)]
    for x, (_, s2, _, k) in zip(xs[1:], draws[1:]):
        assert _chisquare(x, lambda ks: _dg_few_trials_pmf(s2, k, ks)) > P_MIN, (s2, k)


def test_log_depth_lane_coins_what_if_has_the_same_biases(rt):
    """bench/_probe.py's log-depth comparator for the batch layout (``--patch log_coins``):
    the same per-draw coin laws, in ceil(log2 K) AND rounds."""
    from bench._probe import log_depth_lane_coins
    ctx = _noise._ctx(rt)
    coins, counts = LANE_COINS, LANE_COUNTS
    lanes = _noise._Lanes(counts, [1, 1, 1])
    rounds = [0]
    orig = ctx.and_

    async def counting(x, y):
        rounds[0] += 1
        return await orig(x, y)
    ctx.and_ = counting
    try:
        async def run():
            return await ctx.reveal(await log_depth_lane_coins(ctx, coins, lanes))
        bits = _noise.unpack(rt.run(run()), sum(counts))
    finally:
        del ctx.and_
    assert rounds[0] == math.ceil(math.log2(9))
    _check_lane_bits(bits)
