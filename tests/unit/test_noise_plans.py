"""Noise plans: the fast exact construction against references, and the on-disk plan cache."""
from __future__ import annotations

import math
from fractions import Fraction as F

import mpmath
import pytest

from jointstats.noise import sampler as _noise
from jointstats.plan.accounting import exp_neg_bounds
from jointstats.noise.sampler import DELTA_TARGET, dg_plan, dl_plan

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


# --------------------------------------------------------------------------- the on-disk plan cache


from jointstats.noise import cache as _plan_cache  # noqa: E402


def _clear_memory():
    _noise.dl_plan.cache_clear()
    _noise.dg_plan.cache_clear()
    _noise._dg_alpha.cache_clear()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(_plan_cache.ENV, raising=False)
    _plan_cache.set_directory(tmp_path / "noise-plans")
    _clear_memory()
    yield tmp_path / "noise-plans"
    _plan_cache.set_directory(None)
    _clear_memory()


def _fresh(kind, param, *args):
    """The plan built from scratch, with no cache at all."""
    saved = _plan_cache._directory
    _plan_cache.set_directory(None)
    _clear_memory()
    try:
        return (dl_plan if kind == "dl" else dg_plan)(param, *args)
    finally:
        _plan_cache.set_directory(saved)
        _clear_memory()


CACHED = [("dl", F(1, 5)), ("dl", F(7, 2)), ("dl", F(2**60) / 3), ("dg", F(1, 3)), ("dg", F(50)),
          ("dg", F(827353453453453453453453453453453453451, 7)), ("dg", F(10**6) + F(1, 3))]


@pytest.mark.parametrize("kind,param", CACHED)
def test_cached_plan_is_the_fresh_plan(cache_dir, kind, param):
    fresh = _fresh(kind, param)
    build = dl_plan if kind == "dl" else dg_plan
    first = build(param)                       # cold: built and written
    assert first == fresh
    assert len(list(cache_dir.glob(f"{kind}-*.json"))) == 1
    _clear_memory()
    before = dict(_plan_cache.stats)
    again = build(param)                       # warm: rebuilt from the file's coins
    assert _plan_cache.stats["hits"] == before["hits"] + 1
    assert _plan_cache.stats["writes"] == before["writes"]
    assert again == fresh
    assert again.delta == fresh.delta <= DELTA_TARGET


def test_cache_keys_separate_parameters(cache_dir):
    dg_plan(F(50))
    dg_plan(F(50), 5)
    dl_plan(F(50))
    dl_plan(F(50), DELTA_TARGET / 8)
    assert len(list(cache_dir.glob("*.json"))) == 4
    _clear_memory()
    assert dg_plan(F(50), 5) == _fresh("dg", F(50), 5)
    assert dl_plan(F(50), DELTA_TARGET / 8) == _fresh("dl", F(50), DELTA_TARGET / 8)


def _corruptions(data: bytes):
    """Damaged versions of a good cache file."""
    import json
    doc = json.loads(data)
    yield "truncated", data[: len(data) // 2]
    yield "empty", b""
    yield "not utf-8", b"\xff\xfe" + data
    flipped = bytearray(data)
    pos = data.index(b'"coins":[[') + 10
    flipped[pos] = ord("3") if flipped[pos] != ord("3") else ord("5")
    yield "digit changed", bytes(flipped)
    yield "a float", data.replace(b'"coins":[[', b'"coins":[[1.0,1],[', 1)
    yield "huge", b" " * (_plan_cache.MAX_FILE_BYTES + 1)
    yield "a list", b"[]"
    other = dict(doc, key="0" * 64)
    yield "another key", json.dumps(other).encode()
    # well-formed, digest recomputed, but the coins are not this plan's: coin 0 set to a
    # constant (error about 1/2): over budget, so rejected by the exact check
    coins = [list(p) for p in doc["choices"]["coins"]]
    coins[1] = [0, 0] if coins[1] != [0, 0] else [0, 1]
    forged = _plan_cache.encode(doc["key"], {**{k: v for k, v in doc["choices"].items()}, "coins": coins})
    yield "valid digest, coins over budget", forged
    short = _plan_cache.encode(doc["key"], {**doc["choices"], "coins": doc["choices"]["coins"][:-1]})
    yield "valid digest, one coin missing", short
    even = [list(p) for p in doc["choices"]["coins"]]
    k = next(i for i, p in enumerate(even) if p[0] > 1)
    even[k][1] += 1
    yield "valid digest, even c", _plan_cache.encode(doc["key"], {**doc["choices"], "coins": even})


@pytest.mark.parametrize("kind,param", [("dl", F(7, 2)), ("dg", F(10**6) + F(1, 3))])
def test_corrupted_cache_file_is_rebuilt_never_trusted(cache_dir, kind, param):
    build = dl_plan if kind == "dl" else dg_plan
    fresh = _fresh(kind, param)
    build(param)
    (path,) = cache_dir.glob(f"{kind}-*.json")
    good = path.read_bytes()
    for what, bad in _corruptions(good):
        path.write_bytes(bad)
        _clear_memory()
        before = dict(_plan_cache.stats)
        assert build(param) == fresh, what
        assert _plan_cache.stats["rejected"] == before["rejected"] + 1, what
        assert _plan_cache.stats["hits"] == before["hits"], what
        assert path.read_bytes() == good, what  # replaced by the rebuilt plan's file


def test_cache_directory_setting_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(_plan_cache.ENV, raising=False)
    _plan_cache.set_directory(None)
    assert _plan_cache.directory() is None
    state = tmp_path / "state" / "party_1.sqlite"
    assert _plan_cache.directory_for_state(state) == (tmp_path / "state" / "noise-plans").resolve()
    _plan_cache.set_directory(tmp_path / "a")
    assert _plan_cache.directory() == tmp_path / "a"
    monkeypatch.setenv(_plan_cache.ENV, str(tmp_path / "b"))
    assert _plan_cache.directory() == tmp_path / "b"  # the environment wins
    monkeypatch.setenv(_plan_cache.ENV, "off")
    assert _plan_cache.directory() is None
    _plan_cache.set_directory(None)


def test_cache_write_failures_do_not_fail_the_plan(tmp_path, monkeypatch):
    monkeypatch.delenv(_plan_cache.ENV, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    _plan_cache.set_directory(blocker / "noise-plans")
    _clear_memory()
    try:
        assert dl_plan(F(3)) == _fresh("dl", F(3))
    finally:
        _plan_cache.set_directory(None)
        _clear_memory()


def test_cache_size_is_bounded(cache_dir, monkeypatch):
    monkeypatch.setattr(_plan_cache, "MAX_FILES", 8)
    for i in range(20):
        dl_plan(F(3 + i, 7))
    files = list(cache_dir.glob("*.json"))
    assert 6 <= len(files) <= 8
    assert not list(cache_dir.glob(".tmp-*"))


def test_stale_temporary_files_are_removed(cache_dir):
    import os
    import time
    dl_plan(F(5, 3))
    stale, fresh = cache_dir / ".tmp-dead.json", cache_dir / ".tmp-writing.json"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    dl_plan(F(7, 3))  # a write trims
    assert not stale.exists() and fresh.exists()
    _clear_memory()
    assert dl_plan(F(5, 3)) == _fresh("dl", F(5, 3))


# --------------------------------------------------------------------------- what-if: log-depth coins


def test_log_depth_coins_what_if_is_exact():
    """bench/_probe.py's log_depth_coins (a proposal measured with JOINTSTATS_BENCH_PATCH=log_coins)
    computes exactly [R < c] for the random bits it draws, in ceil(log2 k) AND rounds."""
    import numpy as np

    from bench._probe import log_depth_coins
    from jointstats.mpc.runtime import local_runtime
    from jointstats.noise.sampler import Coin, _ctx

    rt = local_runtime()
    ctx = _ctx(rt)
    coins = [Coin(5, 11, F(0)), Coin(1, 1, F(0)), Coin(0, 1, F(0)), Coin(7, 101, F(0)), Coin(3, 3, F(0)),
             Coin(0, 0, F(0)), Coin(80, (1 << 79) + 12345, F(0)), Coin(80, 1, F(0)), Coin(2, 3, F(0))]
    drawn, rounds = [], [0]
    rand, and_ = ctx.rand, ctx.and_

    def recording_rand(rows, W):
        x = rand(rows, W)
        drawn.append(x.copy())
        return x

    async def counting_and(x, y):
        rounds[0] += 1
        return await and_(x, y)

    ctx.rand, ctx.and_ = recording_rand, counting_and
    try:
        W = 3
        out = rt.run(log_depth_coins(ctx, coins, W))
    finally:
        del ctx.rand, ctx.and_
    assert rounds[0] == math.ceil(math.log2(80))
    live = [i for i, c in enumerate(coins) if c.k > 0]
    (r,) = drawn
    bits = np.unpackbits(r.reshape(80, len(live), W).view(np.uint8), axis=-1, bitorder="little")
    for j, i in enumerate(live):
        k, c = coins[i].k, coins[i].c
        value = [sum(int(bits[b, j, s]) << b for b in range(k)) for s in range(64 * W)]
        got = np.unpackbits(out[0, i].view(np.uint8), bitorder="little")
        assert [int(v < c) for v in value] == got.tolist(), coins[i]
    for i, c in enumerate(coins):
        if c.k == 0:
            assert (np.unpackbits(out[0, i].view(np.uint8)) == c.c).all()


def _frontier_reference(lo, hi):
    """The plain Fraction scan over every k (first best per reduced k, strictly decreasing)."""
    mid = (lo + hi) / 2
    best = {}
    for k in range(_noise._KMAX + 1):
        c = min(max(round(mid * (1 << k)), 0), 1 << k)
        v = F(c, 1 << k)
        err = max(abs(v - lo), abs(hi - v))
        if c == 0 or c == 1 << k:
            coin = _noise.Coin(0, 1 if c else 0, err)
        else:
            tz = (c & -c).bit_length() - 1
            coin = _noise.Coin(k - tz, c >> tz, err)
        if coin.k not in best or err < best[coin.k].err:
            best[coin.k] = coin
    out = []
    for k in sorted(best):
        if not out or best[k].err < out[-1].err:
            out.append(best[k])
    return out


def test_frontier_stops_early_only_where_nothing_changes():
    """The scan stops at the last coin's reduced k: biases within 2^-81 of 0, 1/2 or 1 (tiny
    acceptance exponents, digits of huge scales) and dyadic ones take a few steps; the
    frontier is still the full scan's."""
    s2 = F(8513936497542435) * 10**24 + F(1, 3)
    C, D, t = _noise._dg_params(s2)
    kappa = 1 / (2 * s2 * D * D)
    chain = _noise._exp_doubling(kappa, 150, _noise._BIAS_PREC)[::7] + _noise._exp_doubling(1 / t, 80, _noise._BIAS_PREC)[::5]
    intervals = chain + [(F(lo.numerator, lo.denominator + lo.numerator),
                          F(hi.numerator, hi.denominator + hi.numerator)) for lo, hi in chain]
    intervals += [(F(1, 2) - F(1, 1 << 82), F(1, 2) + F(1, 1 << 83)), (F(1, 1 << 81), F(1, 1 << 81)),
                  (F(3, 1 << 82), F(3, 1 << 82)), (F(1) - F(1, 1 << 82), F(1)), (F(5, 8), F(5, 8)),
                  (F(1, 3), F(1, 3)), (F(0), F(0)), (F(1), F(1))]
    for lo, hi in intervals:
        assert _noise._frontier(lo, hi).coins() == _frontier_reference(lo, hi), (lo, hi)
