"""Differentially private noise sampled *inside* the secure computation.

Nobody learns the noise: it is computed from shared random bits by a Boolean
circuit on secret-shared bits, then converted into the caller's MPyC secure integer
type (``SecInt`` or a prime ``SecFld``) so that it can be added to a statistic.

Public functions
----------------
``discrete_laplace(rt, sectype, scale, n)``
    n samples of the two-sided geometric law P(k) ~ exp(-|k|/scale).
``discrete_gaussian(rt, sectype, sigma2, n, trials=None)``
    n samples of the discrete Gaussian P(k) ~ exp(-k^2 / (2 sigma2)).
``discrete_laplace_many(rt, draws)``, ``discrete_gaussian_many(rt, draws)``
    several draws (sectype, scale or sigma2, n[, trials]) in ONE lock-step batch: each
    follows its own law exactly as the one-draw functions (which are batches of one), all
    samples independent; a batch costs the AND rounds of its deepest draw, so a DP job
    (``jointstats.engine.dp.sample_noise``) pays one sampler's rounds whatever the number of its
    statistics and distinct scales.
``discrete_laplace_delta(scale)``, ``discrete_gaussian_delta(sigma2, trials=None)``
    rigorous bounds (Fractions) on the total-variation distance per sample between
    what is sampled and the exact law; both are at most 2**-40 by default.

Batches: every lane (a sample, or one trial of one sample) carries its own draw's public
constants as bit masks (``_Lanes``); lanes are packed densely (a draw of one sample costs
one lane per trial, not a 64-lane word). The coins of all draws form one program
(``_CoinProgram``): every (row, lane) coin [R < c] is grouped with the others of the same
(k, c), aligned on the batch's longest coin (c 2**(K - k) on K bits has probability
c / 2**k exactly: its low bits keep the running comparison at 0), and each of the K - 1 AND
rounds touches only the coins that have started, so the ANDs are the coins' own bits.

How (the engine)
----------------
The Boolean part runs on *replicated* secret sharing over GF(2), bit-packed in
numpy ``uint64`` words (64 samples per word), keyed by MPyC's own PRSS keys:
for threshold t each subset S of m - t parties (the PRSS subsets) owns one
component x_S of every shared bit x = XOR_S x_S, known exactly to the members of S.
So a coalition of t parties always misses the component of its complement.

* A uniformly random shared bit costs nothing: x_S = PRF(key_S, counter), as in
  MPyC's pseudorandom secret sharing, no communication (this replaces
  ``mpc.np_random_bits``, which needs one opening per bit, and is why no small
  prime field is needed any more).
* XOR and public constants are local.  AND is one round: every cross term
  x_S y_T is computed by one party in S and T, and the sum of these additive
  terms is reshared into replicated form with PRF masks, each party sending one
  word per 64 ANDs to the other members of its designated subset (for 3 parties:
  one bit per AND per party, the protocol of Araki et al., CCS 2016).
* Conversion to the caller's field: component x_S is Shamir-shared for free as
  x_S * f_S(i) (f_S of degree t, f_S(0)=1, zero on parties outside S), and the
  XOR of the C(m, t) components is computed with C(m, t) - 1 secure
  multiplications in the target field (2 for 3 parties).  Only the few output
  bits of each sample are converted.

Semi-honest, honest majority (t < m/2), like MPyC itself.  All public parameters
are computed with exact rational arithmetic (``fractions.Fraction`` / ``int``);
there is no floating point anywhere on the noise path.  All shapes and the number
of rounds depend only on public parameters (never on secret data nor on n).

Discrete Laplace (bitwise, exact up to delta)
----------------------------------------------
With a = exp(-1/scale), |X| = 0 with probability (1-a)/(1+a) (the *zero coin* Z),
else |X| = 1 + G with G one-sided geometric, P(G = g) = (1-a) a^g; a uniform sign
S.  The binary digits of G are independent, digit i being 1 with probability
1/(1 + exp(2^i/scale)).  Every coin is a comparison [R < c] of fresh shared random
bits R with a public integer c; all comparisons of all coins and samples run in
lock-step, one vectorized AND per bit position.  Each coin's precision is chosen by
a search (exact rational error bounds) so that the sum of all bias errors and the
dropped high digits is <= 2**-40; that sum is ``discrete_laplace_delta``.

Discrete Gaussian (Canonne-Kamath-Steinke rejection, fixed number of trials)
---------------------------------------------------------------------------
Chosen over the inversion table because the statistics of this project scale reals
onto integer grids, so sigma is routinely 1e4..1e7 where an O(sigma) table is
infeasible; this sampler costs O(log^2 sigma) ANDs per trial.  Proposal: discrete
Laplace with scale t = sigma2 / c, where the centre c = C/D is sigma2 / (floor(sigma)+1)
(CKS's choice of t) rounded to a rational with small denominator D (D = 1 for
sigma2 >= 4, else 16).  This is exactly CKS for that t; only the centre sigma2/t is
made a simple rational so that the acceptance exponent is an exact integer quadratic:
accept Y with probability
exp(-(|Y| - c)^2 / (2 sigma2)) = exp(-N^2 kappa), N = D |Y| - C, kappa = 1/(2 sigma2 D^2).
N and N^2 are computed exactly by a Boolean circuit (Sklansky prefix adders, conditional
negation, Wallace-tree squaring with half adders), and
exp(-N^2 kappa) = prod_p exp(-2^p kappa)^bit_p(N^2) is a product of public-bias coins gated
by the secret bits of N^2.  ``trials``
independent trials run in parallel (fixed shape); the first accepted one is chosen
obliviously (prefix-OR); if all fail (probability <= (1-alpha)^trials, alpha bounded
from below rigorously) the last trial's discrete Laplace value is output: still a
fresh noise draw (of the proposal law), never a forced zero.  delta = (1-alpha)^trials +
trials * (errors of proposal and acceptance coins).
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from numbers import Rational

import gmpy2
import numpy as np

from jointstats.plan.accounting import exp_neg_bounds
from jointstats.mpc.runtime import Runtime

__all__ = [
    "discrete_laplace", "discrete_gaussian", "discrete_laplace_delta",
    "discrete_gaussian_delta", "dl_plan", "dg_plan", "DLPlan", "DGPlan", "Coin",
    "DELTA_TARGET",
]

DELTA_TARGET = Fraction(1, 1 << 40)
_KMAX = 80          # maximal number of random bits of one coin
_BIAS_PREC = _KMAX + 24
_TAIL_CUT = Fraction(1, 1 << 90)
_DOMAIN = b"jointstats.noise.v1\x00"
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)

_coroutine = Runtime.coroutine  # MPyC's mpc_coro decorator (imported via _mpc only)


def _as_fraction(x, name: str) -> Fraction:
    if isinstance(x, bool) or not isinstance(x, (int, Rational)):
        raise TypeError(f"{name} must be an int or fractions.Fraction (no floats on the "
                        f"noise path), found {type(x).__name__}")
    x = Fraction(x)
    if x <= 0:
        raise ValueError(f"{name} must be > 0, found {x}")
    return x


# ---------------------------------------------------------------------------
# public parameters: coins with exactly searched precision


@dataclass(frozen=True)
class Coin:
    """A biased coin [R < c] for k uniform random bits R; k == 0 means constant c (0/1).

    For k >= 1, c is odd and 0 < c < 2**k, so P(coin = 1) = c / 2**k exactly.
    ``err`` bounds |c/2**k - target bias| rigorously.
    """
    k: int
    c: int
    err: Fraction

    @property
    def prob(self) -> Fraction:
        return Fraction(self.c, 1 << self.k)


def _mpq(x: Fraction) -> "gmpy2.mpq":
    return gmpy2.mpq(x.numerator, x.denominator)


def _fraction(x: "gmpy2.mpq") -> Fraction:
    return Fraction(int(x.numerator), int(x.denominator))


def _round_half_even(num: int, den: int) -> int:
    """round(num / den) as Python rounds a Fraction (ties to even), in integers."""
    q, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and q % 2):
        q += 1
    return int(q)


class _Frontier:
    """Coins for one bias, increasing k, errors ``half + e / scale`` strictly decreasing.

    The errors share ``half`` (half the width of the bias interval) and ``scale``, so the
    search compares and subtracts plain integers ``e``; ``coins()`` gives the Fractions.
    Built lazily: the scan over k goes only as far as the search asks (``has(j)``), usually
    to k of about 50 of the 80 (``len`` and ``coins`` finish it)."""

    __slots__ = ("ks", "cs", "es", "half", "scale", "_mn", "_md", "_q", "_r", "_k", "_kmax")

    def __init__(self, mn: int, md: int, half: Fraction, kmax: int):
        self.ks: list[int] = []
        self.cs: list[int] = []
        self.es: list[int] = []
        self.half, self.scale = half, md << _KMAX
        self._mn, self._md = mn, md
        self._q, self._r = divmod(mn << _KMAX, md)
        self._k, self._kmax = 0, kmax
        self._more()  # the coin of k = 0 (a constant) is always the first

    def _more(self) -> bool:
        """Scan k until one more coin joins the frontier; False once the scan is over.

        The coin of k is c = round(mid 2^k); for k >= 1 only an odd c is new (an even one
        reduces to the coin of a smaller k, with the same error), and a new coin joins if its
        error is below the last one's: exactly the first best per reduced k, in order."""
        md, qK, rK = self._md, self._q, self._r
        while self._k <= self._kmax:
            k = self._k
            self._k = k + 1
            s = _KMAX - k
            q = qK >> s
            e = (qK - (q << s)) * md + rK
            up = (md << s) - e
            if up < e or (up == e and q & 1):
                q, e = q + 1, up
            full = 1 << k
            if q > full:  # pragma: no cover - mid <= 1
                q, e = full, abs(full * md - (self._mn << k)) << s
            if k and not q & 1:
                continue
            if not self.es or e < self.es[-1]:
                self.ks.append(k)
                self.cs.append(q)
                self.es.append(e)
                return True
        return False

    def has(self, j: int) -> bool:
        """True if the frontier has a coin j (scanning as far as needed)."""
        while len(self.ks) <= j:
            if not self._more():
                return False
        return True

    def __len__(self) -> int:
        while self._more():
            pass
        return len(self.ks)

    def coin(self, j: int) -> Coin:
        return Coin(self.ks[j], self.cs[j], self.half + Fraction(self.es[j], self.scale))

    def coins(self) -> list[Coin]:
        return [self.coin(j) for j in range(len(self))]


def _frontier(lo: Fraction, hi: Fraction) -> _Frontier:
    """The coin frontier for a bias in [lo, hi], in integer arithmetic.

    For each k the coin is c = round(mid 2^k) (ties to even), mid = (lo + hi) / 2; its error
    bound max(|c/2^k - lo|, |hi - c/2^k|) is half + |c/2^k - mid|, with half = (hi - lo) / 2,
    i.e. half + e / (den(mid) 2^KMAX) for the integer e = |c den(mid) - num(mid) 2^k| 2^(KMAX-k).
    One division gives every k: num(mid) 2^KMAX = q den(mid) + r, floor(mid 2^k) = q >> (KMAX-k)
    and rounding down or up leaves e_down = (q mod 2^(KMAX-k)) den(mid) + r or
    den(mid) 2^(KMAX-k) - e_down. A job's noise plans are built by every party before any data
    moves, so this is on the critical path of every DP job: no rational arithmetic inside
    the loop. The scan stops at the reduced k of the last coin, c_KMAX = c' 2^(KMAX-k'): for
    k > k', mid 2^k is within 1/4 of c' 2^(k-k'), the same coin again (biases within 2^-81 of
    0, 1/2 or 1 take one or two steps, not 81)."""
    mid = (lo + hi) / 2
    mn, md = mid.numerator, mid.denominator
    qK, rK = divmod(mn << _KMAX, md)
    last = qK + (2 * rK > md or (2 * rK == md and qK & 1))  # c_KMAX = round(mid 2^KMAX)
    if last <= 0 or last >= 1 << _KMAX:
        kmax = 0
    else:
        kmax = _KMAX - ((last & -last).bit_length() - 1)
    return _Frontier(mn, md, (hi - lo) / 2, kmax)


def _choose_coins(frontiers: list[_Frontier], budget: Fraction) -> list[Coin]:
    """Greedy search: total error <= budget with few random bits (= ANDs) in total.

    Each step moves the frontier whose next coin buys the most error per extra random bit
    (the first such frontier on ties), kept in a heap. All in integers: a coin's error
    ``half + e / scale`` is counted rounded up to a multiple of 2**-256 (so the running total
    bounds the exact one from above and the coins chosen meet the budget exactly; the caller
    bounds their sum with ``_error_sum``), and a step's gain per bit is compared as the
    integer floor(2**256 gain / (scale bits)), the exact ratio to 2**-256 relative."""
    import heapq
    R = 256
    halves = [_to_fixed(f.half, R, True) for f in frontiers]

    memo: dict[tuple[int, int], int] = {}

    def err(i: int, j: int) -> int:  # coin j of frontier i's error, rounded up, scale 2**R
        v = memo.get((i, j))
        if v is None:
            f = frontiers[i]
            v = memo[(i, j)] = halves[i] + -((-(f.es[j] << R)) // f.scale)
        return v

    def entry(i: int):
        j = idx[i]
        f = frontiers[i]
        return (-(((f.es[j] - f.es[j + 1]) << R) // (f.scale * (f.ks[j + 1] - f.ks[j]))), i)

    idx = [0] * len(frontiers)
    total = sum(err(i, 0) for i in range(len(frontiers)))
    cap = _to_fixed(budget, R, False) - (1 << (R - _DELTA_PREC))  # room for _error_sum's rounding
    heap = [entry(i) for i, f in enumerate(frontiers) if f.has(1)]
    heapq.heapify(heap)
    while total > cap:
        if not heap:
            raise ValueError("cannot reach the requested precision with "
                             f"{_KMAX}-bit coins")
        _, best = heapq.heappop(heap)
        j = idx[best]
        total += err(best, j + 1) - err(best, j)
        idx[best] = j + 1
        if frontiers[best].has(j + 2):
            heapq.heappush(heap, entry(best))
    # give back precision that is not needed (cheapest first)
    improved = True
    while improved:
        improved = False
        for i in range(len(frontiers)):
            j = idx[i]
            if j > 0:
                d = err(i, j - 1) - err(i, j)
                if total + d <= cap:
                    total += d
                    idx[i] = j - 1
                    improved = True
    return [f.coin(j) for f, j in zip(frontiers, idx)]


def _bias_sigmoid(x: Fraction) -> tuple[Fraction, Fraction]:
    """Bounds of 1/(1+exp(x)) = e/(1+e), e = exp(-x)."""
    lo, hi = exp_neg_bounds(x, _BIAS_PREC)
    return lo / (1 + lo), hi / (1 + hi)


@dataclass(frozen=True)
class DLPlan:
    """Public plan of the bitwise discrete Laplace sampler."""
    scale: Fraction
    zero: Coin                              # P(|X| = 0) = (1-a)/(1+a)
    bits: tuple[tuple[int, Coin], ...]      # (digit i of G, coin), non-constant-0 only
    delta: Fraction                         # TV bound per sample
    nbits: int                              # L: G < 2**L

    @property
    def and_gates(self) -> int:
        """AND gates per sample (= bits sent per sample and party with 3 parties)."""
        return sum(max(c.k - 1, 0) for _, c in self.bits) + max(self.zero.k - 1, 0) + 1

    @property
    def max_abs(self) -> int:
        """Hard bound: every sample satisfies |x| <= max_abs."""
        return 1 << self.nbits


def _to_fixed(x: Fraction, P: int, up: bool) -> int:
    """floor(x * 2**P), or its ceiling if ``up``."""
    n = x.numerator << P
    return -((-n) // x.denominator) if up else n // x.denominator


def _exp_neg_fixed(y: Fraction, P: int) -> tuple[int, int]:
    """(lo, hi) integers with lo / 2**P <= exp(-y) <= hi / 2**P, for any rational y."""
    if y >= 0:
        lo, hi = exp_neg_bounds(y, P)
        return _to_fixed(lo, P, False), _to_fixed(hi, P, True)
    lo, hi = exp_neg_bounds(-y, P)  # exp(-y) = 1 / exp(y)
    return (1 << (2 * P)) // _to_fixed(hi, P, True), -((-(1 << (2 * P))) // _to_fixed(lo, P, False))


def _exp_doubling(x0: Fraction, count: int, prec: int) -> list[tuple[Fraction, Fraction]]:
    """Bounds (lo, hi) of exp(-2**j x0) for j = 0 .. count-1, each with hi - lo < 2**(1 - prec).

    One Taylor evaluation for j = 0 (``exp_neg_bounds``), then exact squarings rounded outward
    in fixed point with P = prec + count + 3 bits: exp(-2**(j+1) x0) = exp(-2**j x0)**2, and an
    interval's width at most doubles, plus two units, per squaring (its ends are <= 1), so
    after j squarings it is below 5 * 2**j units <= 2**(prec - P + j + 3) <= 2**-prec; each
    bound is then rounded outward to prec + 2 bits (width still < 2**(1 - prec)).
    Every digit and acceptance coin of a plan has an exponent of this form: one Taylor series
    per plan instead of one per coin."""
    P = prec + count + 3
    one = 1 << P
    shift = count + 1
    out_one = 1 << (prec + 2)
    lo, hi = _exp_neg_fixed(x0, P)
    out = []
    for j in range(count):
        if j:
            lo = (lo * lo) >> P
            hi = min(-((-(hi * hi)) >> P), one)
        if (hi - lo) << prec > one:  # pragma: no cover - excluded by the bound above
            raise AssertionError("exp chain lost its precision")
        # rounded outward to prec + 2 bits: small denominators for the coin search
        out.append((Fraction(lo >> shift, out_one), Fraction(-((-hi) >> shift), out_one)))
    return out


def _doublings_to(x0: Fraction, target: int) -> int:
    """Number of terms of the chain exp(-2**j x0) that reaches exp(-2**j x0) < 2**-target
    (2**j x0 >= target ln 2, with ln 2 > 0.69), plus one."""
    need = Fraction(target * 70, 100) / x0        # 2**j >= need
    return max(1, math.ceil(need).bit_length() + 1)


def _dl_digit_bounds(scale: Fraction) -> tuple[list[tuple[Fraction, Fraction]], int, Fraction]:
    """Bounds of exp(-2**i / scale) for i = 0, 1, ..., the number of digits kept, and the
    bound of the dropped tail.

    Digits stop at the first i with exp(-2**i / scale) <= 2**-90 (upper bound): the digits
    >= i then have biases summing to at most 2 exp(-2**i / scale)."""
    count = _doublings_to(1 / scale, 90) + 2
    while True:
        chain = _exp_doubling(1 / scale, count, _BIAS_PREC)
        for i, (_, e_hi) in enumerate(chain):
            if e_hi <= _TAIL_CUT:
                return chain, i, 2 * e_hi
        count += 8  # pragma: no cover - the count above reaches the cut


class _BadChoice(ValueError):
    """Coins given for a plan (from the plan cache) that do not fit it."""


def _pick_coins(intervals: list[tuple[Fraction, Fraction]], budget: Fraction,
                choices=None) -> tuple[list[Coin], Fraction]:
    """Coins for biases in the given intervals, total error <= budget, and that total.

    ``choices`` None: the search (frontiers, greedy). Otherwise the (k, c) of every coin, as a
    search chose them before (``jointstats.noise.cache``): each coin's error bound is computed
    afresh from its interval, exactly as the search does (half + |c/2^k - mid| =
    max(c/2^k - lo, hi - c/2^k)), and the total is checked against the budget, so the plan is
    rigorous whatever the choices; for the search's own choices it is the search's plan."""
    if choices is None:
        coins = _choose_coins([_frontier(lo, hi) for lo, hi in intervals], budget)
    else:
        if len(choices) != len(intervals):
            raise _BadChoice("wrong number of coins")
        coins = []
        for (lo, hi), (k, c) in zip(intervals, choices):
            if not (0 <= k <= _KMAX and (c in (0, 1) if k == 0 else c % 2 == 1 and 0 < c < 1 << k)):
                raise _BadChoice("not a coin")
            # max(c/2^k - lo, hi - c/2^k) in integers, one Fraction made
            ln, ld, hn, hd = lo.numerator, lo.denominator, hi.numerator, hi.denominator
            below, above = c * ld - (ln << k), (hn << k) - c * hd
            err = Fraction(below, ld << k) if below * hd >= above * ld else Fraction(above, hd << k)
            coins.append(Coin(k, c, err))
    total = _error_sum(coins)
    if total > budget:
        raise _BadChoice("coins over budget")  # never for the search's own choices
    return coins, total


#: Coin error sums (and so every plan's delta) are rounded up to multiples of 2**-_DELTA_PREC.
_DELTA_PREC = 128


def _error_sum(coins: list[Coin]) -> Fraction:
    """An upper bound of the coins' total error, a multiple of 2**-128: each error rounded up
    to 2**-256, the sum rounded up to 2**-128. Dyadic, so that deltas add up cheaply (the exact
    sum of a plan's errors has a denominator of thousands of bits); at most 2**-128 above the
    exact sum, and within the budget for the search's choices (it leaves that room)."""
    R = 256
    up = sum(-((-(c.err.numerator << R)) // c.err.denominator) for c in coins)
    return Fraction(-((-up) >> (R - _DELTA_PREC)), 1 << _DELTA_PREC)


#: What a cached plan's key depends on besides its parameters (see ``_plan_cache.key``).
_CACHE_CONSTANTS = {"DELTA_TARGET": DELTA_TARGET, "KMAX": _KMAX, "BIAS_PREC": _BIAS_PREC,
                    "TAIL_CUT": _TAIL_CUT}


def _cached_plan(mechanism: str, param: Fraction, budget, trials, build):
    """``build(None)`` -> (plan, choices), or ``build(choices)`` from the on-disk plan cache
    when it holds this plan (a file that fails any check is removed and the plan rebuilt)."""
    from jointstats.noise import cache
    if cache.directory() is None:
        return build(None)[0]
    key = cache.key(mechanism, param, budget, trials, _CACHE_CONSTANTS)
    choices = cache.load(mechanism, key)
    if choices is not None:
        try:
            plan = build(choices)[0]
            cache.stats["hits"] += 1
            return plan
        except _BadChoice:
            cache.stats["rejected"] += 1
            cache.discard(mechanism, key)
    plan, choices = build(None)
    cache.store(mechanism, key, choices)
    return plan


def _build_dl_plan(scale: Fraction, budget: Fraction, choices=None) -> tuple[DLPlan, dict]:
    """The plan and the coins it chose ({"coins": ((k, c), ...)}: zero coin, then digits)."""
    chain, ndigits, tail = _dl_digit_bounds(scale)
    a_lo, a_hi = chain[0]
    # (1 - a) / (1 + a) and e / (1 + e) for e = n / d: (d - n) / (d + n) and n / (d + n)
    intervals = [(Fraction(a_hi.denominator - a_hi.numerator, a_hi.denominator + a_hi.numerator),
                  Fraction(a_lo.denominator - a_lo.numerator, a_lo.denominator + a_lo.numerator))]
    intervals += [(Fraction(e_lo.numerator, e_lo.denominator + e_lo.numerator),
                   Fraction(e_hi.numerator, e_hi.denominator + e_hi.numerator))
                  for e_lo, e_hi in chain[:ndigits]]
    coins, err = _pick_coins(intervals, budget - tail, None if choices is None else choices["coins"])
    delta = err + tail
    bits = tuple((j, c) for j, c in enumerate(coins[1:]) if not (c.k == 0 and c.c == 0))
    nbits = max((j + 1 for j, _ in bits), default=0)
    return DLPlan(scale, coins[0], bits, delta, nbits), {"coins": tuple((c.k, c.c) for c in coins)}


@lru_cache(maxsize=256)
def dl_plan(scale: Fraction, budget: Fraction = DELTA_TARGET) -> DLPlan:
    """Plan (coins and delta) for discrete Laplace with the given scale (kept in the on-disk
    plan cache when one is set, see ``jointstats.noise.cache``)."""
    scale = _as_fraction(scale, "scale")
    budget = _as_fraction(budget, "budget")
    return _cached_plan("dl", scale, budget, None, lambda ch: _build_dl_plan(scale, budget, ch))


def discrete_laplace_delta(scale) -> Fraction:
    """Total-variation distance per sample of ``discrete_laplace`` from the exact law."""
    return dl_plan(_as_fraction(scale, "scale")).delta


@dataclass(frozen=True)
class DGPlan:
    """Public plan of the discrete Gaussian sampler (CKS rejection, fixed trials)."""
    sigma2: Fraction
    C: int                      # centre c = C / D
    D: int                      # power of two
    t: Fraction                 # scale of the discrete Laplace proposal, sigma2 / c
    dl: DLPlan
    width: int                  # two's complement width of N = D|Y| - C (Y != 0 part)
    hsq: int                    # |N| >= 2**hsq  ->  reject
    acc: tuple[Coin, ...]       # coin for bit p of N^2: exp(-2**p kappa)
    coin0: Coin                 # acceptance of Y == 0: exp(-C^2 kappa)
    trials: int
    alpha_lo: Fraction          # lower bound of the ideal acceptance rate of one trial
    delta: Fraction

    @property
    def max_abs(self) -> int:
        """Hard bound: every sample satisfies |x| <= max_abs."""
        return self.dl.max_abs


def _isqrt_floor(x: Fraction) -> int:
    return math.isqrt(math.floor(x))


def _alpha_lower(sigma2: Fraction, t: Fraction, C: int, D: int) -> Fraction:
    """Rigorous lower bound of the ideal per-trial acceptance probability.

    alpha = P(Y = 0) acc(0) + sum_{g >= 0} P(|Y| = g + 1) acc(g) with acc(g) = exp(-n(g)^2 kappa),
    n(g) = D (g + 1) - C (unimodal in g). The sum is cut at gmax = C/D + 9 sigma and bounded from
    below block by block (about 400 blocks of bs values): P(|Y| - 1 in [g0, g1]) is
    P(|Y| > g0) - P(|Y| > g1 + 1) = pnz (exp(-g0/t) - exp(-(g1+1)/t)), times the smaller acc
    at the block's ends. The exponentials at the block ends are products along the blocks,
    exp(-(b+1) bs/t) = exp(-b bs/t) exp(-bs/t) and exp(-n_{b+1}^2 kappa) = exp(-n_b^2 kappa)
    exp(-(2 n_b + Delta) Delta kappa) (n_{b+1} = n_b + Delta), in fixed point with 128 bits,
    every product rounded outward: a few thousand integer products, not 1600 series."""
    prec = 64
    P = 128
    kappa = 1 / (2 * sigma2 * D * D)
    a_lo, a_hi = exp_neg_bounds(1 / t, prec)
    pz_lo = (1 - a_hi) / (1 + a_hi)
    pnz_lo = 2 * a_lo / (1 + a_lo)
    total = pz_lo * exp_neg_bounds(C * C * kappa, prec)[0]
    sigma = _isqrt_floor(sigma2) + 1
    gmax = C // D + 9 * sigma
    bs = max(1, gmax // 400)
    nb = gmax // bs + 1                      # blocks g0 = b bs, b = 0 .. nb - 1
    delta_n = D * bs

    def acc_walk(n0: int):
        """Lower bounds of exp(-(n0 + b Delta)^2 kappa), b = 0, 1, ... (fixed point, P bits)."""
        f = _exp_neg_fixed(n0 * n0 * kappa, P)[0]
        r = _exp_neg_fixed((2 * n0 + delta_n) * delta_n * kappa, P)[0]
        q = _exp_neg_fixed(2 * delta_n * delta_n * kappa, P)[0]
        while True:
            yield f
            f = (f * r) >> P
            r = (r * q) >> P

    e_lo, e_hi = _exp_neg_fixed(Fraction(bs) / t, P)
    starts = acc_walk(D - C)                 # g0 = b bs:          n = D (b bs + 1) - C
    ends = acc_walk(delta_n - C)             # g1 = (b + 1) bs - 1: n = D (b + 1) bs - C
    lo_b = 1 << P                            # exp(-b bs / t), lower bound
    hi_next = e_hi                           # exp(-(b + 1) bs / t), upper bound
    s = 0                                    # scale 2**(2P)
    for b in range(nb):
        a0, a1 = next(starts), next(ends)
        if b == nb - 1:                      # last block: g1 = gmax
            a1 = _exp_neg_fixed((D * (gmax + 1) - C) ** 2 * kappa, P)[0]
            hi_next = _exp_neg_fixed((gmax + 1) / t, P)[1]
        w = lo_b - hi_next
        if w > 0:
            s += w * min(a0, a1)
        lo_b = (lo_b * e_lo) >> P
        hi_next = -((-(hi_next * e_hi)) >> P)
    total += pnz_lo * Fraction(s, 1 << (2 * P))
    return Fraction(math.floor(total * (1 << 64)), 1 << 64)


def _dg_params(sigma2: Fraction) -> tuple[int, int, Fraction]:
    t0 = _isqrt_floor(sigma2) + 1          # CKS: t = floor(sigma) + 1
    D = 1 if sigma2 >= 4 else 16
    C = max(1, round(sigma2 * D / t0))
    t = sigma2 * D / C                      # so that sigma2 / t = C / D exactly
    return C, D, t


@lru_cache(maxsize=64)
def _dg_alpha(sigma2: Fraction) -> Fraction:
    C, D, t = _dg_params(sigma2)
    return _alpha_lower(sigma2, t, C, D)


def _default_trials(alpha_lo: Fraction, fail_budget: Fraction) -> int:
    q = 1 - alpha_lo
    q = Fraction(math.ceil(q * (1 << 64)), 1 << 64)
    k, p = 1, q
    while p > fail_budget:
        k += 1
        p *= q
        p = Fraction(math.ceil(p * (1 << 80)), 1 << 80)
    return k


def _build_dg_plan(sigma2: Fraction, trials: int | None, choices=None) -> tuple[DGPlan, dict]:
    """The plan and the coins it chose ({"coins": acceptance coins (coin0 first),
    "dl": the proposal's coins})."""
    C, D, t = _dg_params(sigma2)
    alpha = _dg_alpha(sigma2)
    if alpha <= 0:  # pragma: no cover - cannot happen for sane parameters
        raise ValueError("acceptance rate bound is zero")
    if trials is None:
        trials = _default_trials(alpha, DELTA_TARGET / 2)
    if not isinstance(trials, int) or trials < 1:
        raise ValueError("trials must be a positive int")
    per = DELTA_TARGET / 4 / trials
    if choices is not None and "dl" not in choices:
        raise _BadChoice("no proposal coins")
    dl, dl_choices = _build_dl_plan(t, per, None if choices is None else {"coins": choices["dl"]})
    kappa = 1 / (2 * sigma2 * D * D)
    # N = D*(G+1) - C with 0 <= G < 2**L
    nmin, nmax = D - C, D * (1 << dl.nbits) - C
    width = 2
    while not (-(1 << (width - 1)) <= nmin and nmax < (1 << (width - 1))):
        width += 1
    # acceptance coins: bit p of N^2 is weighted by exp(-2**p kappa), all from one chain;
    # |N| <= 2**(width-1): squares of |N| >= 2**hsq are rejected outright
    count = _doublings_to(kappa, 70) + 2
    while True:
        chain = _exp_doubling(kappa, count, _BIAS_PREC)
        hsq = next((h for h in range(1, (count + 1) // 2) if chain[2 * h][1] <= Fraction(1, 1 << 70)),
                   None)
        if hsq is not None:
            break
        count += 8  # pragma: no cover - the count above reaches the cut
    big_err = Fraction(0)
    if hsq < width:
        big_err = chain[2 * hsq][1]
    else:
        hsq = width
    intervals = [exp_neg_bounds(C * C * kappa, _BIAS_PREC)] + chain[:2 * hsq]
    coins, e_acc = _pick_coins(intervals, per - big_err, None if choices is None else choices["coins"])
    e_acc += big_err
    fail = (1 - alpha) ** trials
    delta = fail + trials * (dl.delta + e_acc)
    delta = Fraction(math.ceil(delta * (1 << 96)), 1 << 96)
    plan = DGPlan(sigma2, C, D, t, dl, width, hsq, tuple(coins[1:]), coins[0], trials, alpha, delta)
    return plan, {"coins": tuple((c.k, c.c) for c in coins), "dl": dl_choices["coins"]}


@lru_cache(maxsize=64)
def dg_plan(sigma2: Fraction, trials: int | None = None) -> DGPlan:
    """Plan (coins, trials and delta) for the discrete Gaussian with variance parameter sigma2
    (kept in the on-disk plan cache when one is set, see ``jointstats.noise.cache``)."""
    sigma2 = _as_fraction(sigma2, "sigma2")
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ValueError("trials must be a positive int")
    return _cached_plan("dg", sigma2, None, trials, lambda ch: _build_dg_plan(sigma2, trials, ch))


def _dg_plan_of(sigma2, trials: int | None) -> DGPlan:
    """``dg_plan`` called as ``dg_plan(sigma2)`` for the default trials: one lru_cache entry
    per plan (``dg_plan(s)`` and ``dg_plan(s, None)`` are different keys to lru_cache, and a
    job's plans were built twice, once for each)."""
    sigma2 = _as_fraction(sigma2, "sigma2")
    return dg_plan(sigma2) if trials is None else dg_plan(sigma2, trials)


def discrete_gaussian_delta(sigma2, trials: int | None = None) -> Fraction:
    """Total-variation distance per sample of ``discrete_gaussian`` from the exact law
    (all-trials-fail probability plus coin precision), <= 2**-40 for default trials."""
    return _dg_plan_of(sigma2, trials).delta


# ---------------------------------------------------------------------------
# replicated GF(2) sharing on top of an MPyC runtime


class _Ctx:
    """Bit-packed replicated GF(2) secret sharing for the parties of runtime ``rt``.

    A shared bit array is a numpy uint64 array of shape (h, *rows, W): one slice per
    component this party holds (h = C(m-1, t)), 64 samples per word.
    """

    def __init__(self, rt):
        if rt.options.no_prss:
            raise RuntimeError("jointstats noise needs MPyC's PRSS keys (no_prss=False)")
        m, t, pid = len(rt.parties), rt.threshold, rt.pid
        if not 2 * t < m:
            raise RuntimeError("jointstats noise needs an honest majority (2t < m)")
        self.rt, self.m, self.t, self.pid = rt, m, t, pid
        subsets = list(itertools.combinations(range(m), m - t))
        self.subsets = subsets
        self.held = [j for j, S in enumerate(subsets) if pid in S]
        self.keys = [rt._prss_keys[subsets[j]] for j in self.held]
        self.h = len(self.held)
        self.pos = {j: p for p, j in enumerate(self.held)}
        self.owner = self.pos.get(0)  # component that carries public constants
        # designated subset of every party (balanced, deterministic)
        load = [0] * len(subsets)
        self.D = []
        for i in range(m):
            cand = [j for j, S in enumerate(subsets) if i in S]
            j = min(cand, key=lambda j: (load[j], j))
            load[j] += 1
            self.D.append(j)
        # cross terms x_S y_T, each assigned to one party of S & T (balanced)
        cnt = [0] * m
        self.pairs = []
        for a in range(len(subsets)):
            for b in range(len(subsets)):
                common = sorted(set(subsets[a]) & set(subsets[b]))
                i = min(common, key=lambda i: (cnt[i], i))
                cnt[i] += 1
                if i == pid:
                    self.pairs.append((self.pos[a], self.pos[b]))
        # masks rho_{i,S} for held S and members i whose designated subset is not S
        self.mask_members = [[i for i in subsets[j] if self.D[i] != j] for j in self.held]
        self.send_to = [i for i in subsets[self.D[pid]] if i != pid]
        self.recv_from = [i for i in range(m) if i != pid and pid in subsets[self.D[i]]]

    # -- local operations -------------------------------------------------
    def _prf(self, p: int, uci: bytes, tag: bytes, nwords: int) -> np.ndarray:
        d = hashlib.shake_128(_DOMAIN + self.keys[p] + uci + tag).digest(8 * nwords)
        return np.frombuffer(d, dtype="<u8").astype(np.uint64)

    def rand(self, rows: int, W: int) -> np.ndarray:
        """Uniformly random shared bits, shape (h, rows, W); no communication."""
        uci = self.rt._prss_uci()
        out = np.empty((self.h, rows, W), dtype=np.uint64)
        for p in range(self.h):
            out[p] = self._prf(p, uci, b"R", rows * W).reshape(rows, W)
        return out

    def public(self, mask: np.ndarray) -> np.ndarray:
        """Sharing of public words ``mask`` (shape (*rows, W) or broadcastable)."""
        out = np.zeros((self.h,) + mask.shape, dtype=np.uint64)
        if self.owner is not None:
            out[self.owner] = mask
        return out

    def xor_public(self, x: np.ndarray, mask) -> np.ndarray:
        """x XOR public words (mask broadcast against x[0])."""
        y = x.copy()
        if self.owner is not None:
            y[self.owner] ^= np.asarray(mask, dtype=np.uint64)
        return y

    def not_(self, x: np.ndarray) -> np.ndarray:
        return self.xor_public(x, _ONES)

    def zeros(self, *shape) -> np.ndarray:
        return np.zeros((self.h,) + shape, dtype=np.uint64)

    # -- AND: one round ---------------------------------------------------
    async def and_(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        assert x.shape == y.shape and x.dtype == np.uint64 and y.dtype == np.uint64
        rt = self.rt
        shape = x.shape[1:]
        size = math.prod(shape)
        uci = rt._prss_uci()
        w = np.zeros(shape, dtype=np.uint64)
        for a, b in self.pairs:
            w ^= x[a] & y[b]
        masks = {}
        for p, members in enumerate(self.mask_members):
            if members:
                stream = self._prf(p, uci, b"M", len(members) * size)
                for r, i in enumerate(members):
                    masks[(p, i)] = stream[r * size:(r + 1) * size].reshape(shape)
        v = w
        for p, members in enumerate(self.mask_members):
            if self.pid in members:
                v = v ^ masks[(p, self.pid)]
        if self.send_to:
            payload = np.ascontiguousarray(v, dtype="<u8").tobytes()
            for i in self.send_to:
                rt._send_message(i, payload)
        received = {}
        if self.recv_from:
            # typed receive (jointstats.mpc.codec): exactly a uint64 array of this shape, or the
            # sender is dropped and named
            data = await rt.gather([rt.receive_array(i, np.uint64, shape) for i in self.recv_from])
            received = dict(zip(self.recv_from, data))
        z = np.empty_like(x)
        for p, j in enumerate(self.held):
            acc = np.zeros(shape, dtype=np.uint64)
            for i in self.subsets[j]:
                if self.D[i] == j:
                    acc ^= v if i == self.pid else received[i]
                else:
                    acc ^= masks[(p, i)]
            z[p] = acc
        return z

    async def reveal(self, x: np.ndarray) -> np.ndarray:
        """Open shared bits to every party (used only in tests of the engine)."""
        rt = self.rt
        rt._prss_uci()
        C = len(self.subsets)
        shape = x.shape[1:]
        comps = {j: x[p] for p, j in enumerate(self.held)}
        # component j is sent by min(S_j) to every party outside S_j, one message per peer
        for i in range(self.m):
            mine = [j for j in self.held if self.pid == min(self.subsets[j])
                    and i not in self.subsets[j]]
            if mine and i != self.pid:
                rt._send_message(i, b"".join(np.ascontiguousarray(comps[j], dtype="<u8").tobytes()
                                             for j in mine))
        senders = {}
        for j in range(C):
            if j not in comps:
                senders.setdefault(min(self.subsets[j]), []).append(j)
        if senders:
            peers = sorted(senders)
            data = await rt.gather([rt.receive_array(i, np.uint64, (len(senders[i]),) + shape)
                                    for i in peers])
            for i, parts in zip(peers, data):
                for r, j in enumerate(senders[i]):
                    comps[j] = parts[r]
        out = np.zeros(x.shape[1:], dtype=np.uint64)
        for j in range(C):
            out ^= comps[j]
        return out

    # -- conversion into an MPyC prime field ---------------------------------
    def shamir_factor(self, j: int, modulus: int) -> int:
        """f_S(pid + 1) mod p for f_S of degree t, f_S(0) = 1, zero outside S."""
        S = self.subsets[j]
        x = self.pid + 1
        num, den = 1, 1
        for i in range(self.m):
            if i not in S:
                num = num * (x - (i + 1)) % modulus
                den = den * (-(i + 1)) % modulus
        return num * pow(den, -1, modulus) % modulus

    def to_field(self, sectype, bits: np.ndarray):
        """Secure array of shape (rows, n) of sectype holding the shared bits (h, rows, n)
        (uint8, unpacked)."""
        field = sectype.field
        q = field.modulus
        rows, n = bits.shape[1:]
        parts = []
        for j in range(len(self.subsets)):
            if j in self.pos:
                f = self.shamir_factor(j, q)
                vals = bits[self.pos[j]].astype(object) * f
            else:
                vals = np.zeros((rows, n), dtype=object)
            parts.append(sectype.array(field.array(vals, check=False)))
        while len(parts) > 1:  # XOR tree: a ^ b = a + b - 2ab
            nxt = []
            for k in range(0, len(parts) - 1, 2):
                a, b = parts[k], parts[k + 1]
                nxt.append(a + b - 2 * (a * b))
            if len(parts) % 2:
                nxt.append(parts[-1])
            parts = nxt
        return parts[0]


def unpack(x: np.ndarray, n: int) -> np.ndarray:
    """uint64 words (..., W) -> bits (..., n) as uint8, sample i = bit i%64 of word i//64."""
    b = np.unpackbits(np.ascontiguousarray(x, dtype="<u8").view(np.uint8), axis=-1,
                      bitorder="little")
    return b[..., :n]


def pack(bits: np.ndarray) -> np.ndarray:
    """Inverse of unpack: bits (..., n) -> uint64 words (..., ceil(n/64))."""
    n = bits.shape[-1]
    W = -(-n // 64)
    pad = np.zeros(bits.shape[:-1] + (W * 64,), dtype=np.uint8)
    pad[..., :n] = bits
    return np.packbits(pad, axis=-1, bitorder="little").view("<u8").astype(np.uint64)


def _ctx(rt) -> _Ctx:
    c = getattr(rt, "_jointstats_noise_ctx", None)
    if c is None or c.rt is not rt or c.keys != [rt._prss_keys[c.subsets[j]] for j in c.held]:
        c = _Ctx(rt)
        rt._jointstats_noise_ctx = c
    return c


# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# circuits (all vectorized over lanes; rounds depend on public parameters only)
#
# One batch evaluates any number of draws, of any scales, in lock-step: every lane (one
# sample, or one trial of one sample) carries its own public constants as bit masks, so a
# job pays the AND rounds of one batch whatever the number of its distinct scales, and its
# lanes are packed densely (a draw of one sample costs one lane, not a 64-lane word).


def _cmask(bits) -> np.ndarray:
    """Public per-row words: all ones where bit set, shape (rows, 1)."""
    return np.where(np.asarray(bits, dtype=bool), _ONES, np.uint64(0)).reshape(-1, 1)


class _Lanes:
    """Public lane layout of one batch of draws (a function of the draws' plans and sizes).

    Draw g has ``counts[g]`` samples, the slots ``starts[g] ..``; every slot has
    ``trials[g]`` lanes (one per trial; 1 for the discrete Laplace). Lanes are packed
    densely, trial-major: block b holds, in slot order, the slots of the draws with more than
    b trials. ``lane_of[b, s]`` is the lane of trial b of slot s (-1 if none), lane i being
    bit i % 64 of word i // 64; ``gmask[g]`` (W words) marks the lanes of draw g."""

    def __init__(self, counts: list[int], trials: list[int]):
        G = len(counts)
        self.counts = list(counts)
        self.starts = [sum(counts[:g]) for g in range(G)]
        self.slots = S = sum(counts)
        self.blocks = K = max(trials)
        slot_group = np.repeat(np.arange(G), counts)
        slot_trials = np.repeat(np.asarray(trials), counts)
        lane_of = np.full((K, S), -1, dtype=np.intp)
        n = 0
        for b in range(K):
            live = np.nonzero(slot_trials > b)[0]
            lane_of[b, live] = n + np.arange(len(live))
            n += len(live)
        self.lane_of, self.lanes = lane_of, n
        self.W = max(1, -(-n // 64))
        self.Ws = max(1, -(-S // 64))
        lane_group = np.empty(n, dtype=np.intp)
        live = lane_of >= 0
        lane_group[lane_of[live]] = np.broadcast_to(slot_group, (K, S))[live]
        self.lane_group = lane_group
        self.gmask = pack((lane_group[None, :] == np.arange(G)[:, None]).astype(np.uint8))
        if self.gmask.shape[1] < self.W:  # pragma: no cover - n == 0 never reaches here
            self.gmask = np.zeros((G, self.W), dtype=np.uint64)
        last = np.zeros(n, dtype=np.uint8)
        last[lane_of[slot_trials - 1, np.arange(S)]] = 1
        self.last = pack(last)                              # (W,): each slot's last trial

    def spread(self, table) -> np.ndarray:
        """Per-draw public bits ``table`` (G, *rows) -> words (*rows, W): each lane gets its
        draw's bit."""
        table = np.asarray(table, dtype=bool)
        out = np.zeros(table.shape[1:] + (self.W,), dtype=np.uint64)
        for g in range(table.shape[0]):
            out |= np.where(table[g][..., None], self.gmask[g], np.uint64(0))
        return out

    def to_blocks(self, ctx: "_Ctx", x: np.ndarray, fill: int) -> np.ndarray:
        """Shared lanes (h, rows, W) -> (h, rows, K, Ws): trial b of slot s at bit s of block
        b, a public ``fill`` bit where slot s has no trial b (a local bit permutation)."""
        h, rows = x.shape[:2]
        bits = unpack(x, self.lanes)
        pad = np.zeros((h, rows, 1), dtype=np.uint8)
        if fill and ctx.owner is not None:
            pad[ctx.owner] = 1
        bits = np.concatenate([bits, pad], axis=-1)
        idx = np.where(self.lane_of >= 0, self.lane_of, self.lanes)
        return pack(bits[:, :, idx])

    def bits_of(self, x: np.ndarray, g: int) -> np.ndarray:
        """Shared slot words (h, rows, Ws) -> draw g's bits (h, rows, counts[g]) as uint8."""
        s0 = self.starts[g]
        return unpack(x, s0 + self.counts[g])[..., s0:]


_ZERO_COIN = Coin(0, 0, Fraction(0))
_ONE_COIN = Coin(0, 1, Fraction(0))


def _coin_bits(c: int, k: int) -> np.ndarray:
    """The k low bits of c (k <= _KMAX), least significant first."""
    return np.unpackbits(np.frombuffer(c.to_bytes(_KMAX // 8 + 1, "little"), dtype=np.uint8),
                         bitorder="little")[:k].astype(bool)


class _CoinProgram:
    """Public layout of the coins of one batch: every (row, lane) whose coin is not constant
    is one comparison [R < c], packed densely, grouped by coin (k, c) and each group word
    aligned, groups in decreasing k; constant coins are public."""

    def __init__(self, coins: list[list[Coin]], lanes: _Lanes):
        G, R = len(coins), len(coins[0])
        self.R = R
        spans: dict[tuple[int, int], list[tuple[int, int]]] = {}   # (k, c) -> [(row, group)]
        one = np.zeros((G, R), dtype=bool)
        for g in range(G):
            for r in range(R):
                coin = coins[g][r]
                if coin.k == 0:
                    one[g, r] = coin.c == 1
                else:
                    spans.setdefault((coin.k, coin.c), []).append((r, g))
        self.one = one
        keys = sorted(spans, key=lambda kc: (-kc[0], kc[1]))
        self.K = keys[0][0] if keys else 0
        lanes_of = [np.nonzero(lanes.lane_group == g)[0] for g in range(G)]
        rows, cols, pos = [], [], []
        word = 0
        word_key = []
        self.words_k = []                                  # words with k >= ... (prefix sizes)
        for k, c in keys:
            n0 = 0
            for r, g in spans[(k, c)]:
                ls = lanes_of[g]
                rows.append(np.full(len(ls), r, dtype=np.intp))
                cols.append(ls)
                pos.append(word * 64 + n0 + np.arange(len(ls)))
                n0 += len(ls)
            nw = -(-n0 // 64)
            word_key += [(k, c)] * nw
            word += nw
        self.nwords = word
        cat = (lambda a: np.concatenate(a) if a else np.zeros(0, dtype=np.intp))
        self.rows, self.cols, self.pos = cat(rows), cat(cols), cat(pos)
        # bit b of c << (K - k): its k bits end at the last step; zero before they start
        K = self.K
        table = {kc: _coin_bits(kc[1] << (K - kc[0]), K) for kc in keys}
        bits = np.array([table[kc] for kc in word_key], dtype=bool).reshape(word, K)
        self.masks = np.where(bits.T, _ONES, np.uint64(0))   # (K, words)
        ks = np.array([kc[0] for kc in word_key], dtype=np.intp)
        # step b touches the words of coins that have started: k >= K - b (a prefix)
        self.active = [int(np.count_nonzero(ks >= K - b)) for b in range(K)]


async def _lane_coins(ctx: _Ctx, coins: list[list[Coin]], lanes: _Lanes) -> np.ndarray:
    """Shared outcomes of independent coins, shape (h, rows, W): row r of draw g's lanes is
    the coin ``coins[g][r]``, fresh random bits for every (row, lane).

    Coin [R < c] on k random bits, least significant bit first: b = [r_0 < c_0], then
    b' = [r_i < c_i] or ([r_i == c_i] and b), i.e. not(r_i and not b) if c_i = 1 and
    (not r_i) and b if c_i = 0: one AND per bit. Every coin is aligned on the batch's longest,
    K bits: [R' < c 2**(K - k)] for K uniform bits R' has probability c / 2**k exactly (the
    shifted c's low bits are 0 and keep b = 0 until the coin's own k bits start), so all
    coins advance in lock-step, one AND round per bit position, each round touching only the
    coins that have started (``_CoinProgram``): the ANDs are those of the coins' own bits.
    """
    prog = _CoinProgram(coins, lanes)
    W = lanes.W
    state = ctx.zeros(max(prog.nwords, 1))
    if prog.K:
        na = prog.active[0]
        state[:, :na] = ctx.not_(ctx.rand(1, na)[:, 0]) & prog.masks[0, :na]   # b = [r_0 < c_0]
        for b in range(1, prog.K):
            na = prog.active[b]
            m = prog.masks[b, :na]
            prod = await ctx.and_(ctx.xor_public(ctx.rand(1, na)[:, 0], ~m),
                                  ctx.xor_public(state[:, :na], m))
            state[:, :na] = ctx.xor_public(prod, m)
    flat = unpack(state, 64 * state.shape[1])
    out = np.zeros((ctx.h, prog.R, W * 64), dtype=np.uint8)
    out[:, prog.rows, prog.cols] = flat[:, prog.pos]
    return ctx.xor_public(pack(out), lanes.spread(prog.one))


async def _coins(ctx: _Ctx, coins: list[Coin], W: int) -> np.ndarray:
    """Shared outcomes of independent coins, shape (h, len(coins), W): every lane draws the
    same coins (``_lane_coins`` with one draw filling all 64 W lanes)."""
    return await _lane_coins(ctx, [list(coins)], _Lanes([64 * W], [1]))


async def _and_tree(ctx: _Ctx, x: np.ndarray) -> np.ndarray:
    """AND over axis 1 (rows), keeping a single row; log depth."""
    while x.shape[1] > 1:
        r = x.shape[1]
        half = r // 2
        y = await ctx.and_(x[:, :half], x[:, half:2 * half])
        if r % 2:
            y = np.concatenate([y, x[:, 2 * half:]], axis=1)
        x = y
    return x


async def _prefix_sum(ctx: _Ctx, p: np.ndarray, g: np.ndarray, cin: np.ndarray | None = None) -> np.ndarray:
    """Sum bits of a two-operand addition, its carries by a Sklansky prefix.

    ``p`` and ``g`` (h, w, W): each position's propagate (a XOR b) and generate (a AND b), never
    both set; ``cin`` (h, W): an optional shared carry-in. Returns the w sum bits (the carry
    out is dropped: the sum is modulo 2**w). Carry i is the generate of the span [0, i): in
    round l every position with bit l set absorbs the span ending just below its block of
    2**(l+1), so the carries take ceil(log2(w + 1)) AND rounds (not w, as ripple carry) and
    about w/2 span merges per round (Kogge-Stone would merge w). A span's generate and
    propagate are disjoint too, so OR is XOR throughout.
    """
    h, w, W = p.shape
    G = np.concatenate([ctx.zeros(1, W) if cin is None else cin[:, None], g], axis=1)
    P = np.concatenate([ctx.zeros(1, W), p], axis=1)
    n = w + 1
    idx = np.arange(n)
    l = 0
    while (1 << l) < n:
        hi = idx[(idx >> l) & 1 == 1]
        lo = ((hi >> (l + 1)) << (l + 1)) + (1 << l) - 1
        if (2 << l) < n:  # later rounds still need the merged propagates
            m = len(hi)
            prod = await ctx.and_(np.concatenate([P[:, hi], P[:, hi]], axis=1),
                                  np.concatenate([G[:, lo], P[:, lo]], axis=1))
            G[:, hi] ^= prod[:, :m]
            P[:, hi] = prod[:, m:]
        else:
            G[:, hi] ^= await ctx.and_(P[:, hi], G[:, lo])
        l += 1
    return p ^ G[:, :w]


async def _add_public(ctx: _Ctx, xrows: list, k: int, width: int, W: int) -> np.ndarray:
    """(x + k) mod 2**width for a public k, by a prefix adder (log depth).

    ``xrows[i]`` is a shared row (h, W), or None for a public 0 bit. With b = k public, a
    position's generate x AND k_i is x or 0 and its propagate x XOR k_i: no AND before the
    prefix.
    """
    x = ctx.zeros(width, W)
    for i, row in enumerate(xrows[:width]):
        if row is not None:
            x[:, i] = row
    kb = _cmask([(k >> i) & 1 for i in range(width)])
    p = ctx.xor_public(x, kb)
    g = x & kb  # x where k has a 1, else 0 (a public AND: local)
    return await _prefix_sum(ctx, p, g)


async def _conditional_negate(ctx: _Ctx, x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(x XOR s) + s for a w-bit x (h, w, W) and a sign row s (h, 1, W): |x| if s = sign.

    Adding 0 with carry-in s: every position propagates its own bit and generates nothing.
    """
    y = x ^ s
    return await _prefix_sum(ctx, y, ctx.zeros(*y.shape[1:]), s[:, 0])


@lru_cache(maxsize=128)
def _square_schedule(w: int):
    """The Wallace tree of a w-bit square as index arrays (public, cached per width).

    Bit rows live in one pool: x (rows 0 .. w-1), then the products x_i x_j (i < j), then the
    outputs of every layer. A layer puts a full adder on every three bits of a column and a
    half adder on two bits left over (classic Wallace: without the half adders a column of 3
    ripples its carry one column per layer, 67 layers for w = 70 instead of 10). Returns
    (pairs I, J; layers (A, B, C, HA, HB, first output row); the two final rows per result
    column, pool index ``size`` for a 0; size)."""
    cols: list[list[int]] = [[] for _ in range(2 * w)]
    for i in range(w):
        cols[2 * i].append(i)
    I, J = [], []
    nxt = w
    for i in range(w):
        for j in range(i + 1, w):
            if i + j + 1 < 2 * w:
                I.append(i)
                J.append(j)
                cols[i + j + 1].append(nxt)
                nxt += 1
    layers = []
    while max((len(c) for c in cols), default=0) > 2:
        fa, ha = [], []                                   # (column, bits)
        keep: list[list[int]] = [[] for _ in range(2 * w)]
        for p, c in enumerate(cols):
            q = 0
            while len(c) - q >= 3:
                fa.append((p, c[q:q + 3]))
                q += 3
            if len(c) - q == 2:
                ha.append((p, c[q:q + 2]))
            elif len(c) - q == 1:
                keep[p].append(c[q])
        t, u = len(fa), len(ha)
        # outputs: FA sums [nxt, +t), FA carries [+t, +2t), HA sums [+2t, +2t+u), HA carries
        for r, (p, _) in enumerate(fa):
            keep[p].append(nxt + r)
            if p + 1 < 2 * w:
                keep[p + 1].append(nxt + t + r)
        for r, (p, _) in enumerate(ha):
            keep[p].append(nxt + 2 * t + r)
            if p + 1 < 2 * w:
                keep[p + 1].append(nxt + 2 * t + u + r)
        arr = (lambda v: np.array(v, dtype=np.intp))
        layers.append((arr([b[0] for _, b in fa]), arr([b[1] for _, b in fa]), arr([b[2] for _, b in fa]),
                       arr([b[0] for _, b in ha]), arr([b[1] for _, b in ha]), nxt))
        nxt += 2 * t + 2 * u
        cols = keep
    fa_ = np.array([c[0] if c else nxt for c in cols], dtype=np.intp)
    fb_ = np.array([c[1] if len(c) > 1 else nxt for c in cols], dtype=np.intp)
    return np.array(I, dtype=np.intp), np.array(J, dtype=np.intp), layers, fa_, fb_, nxt


async def _square(ctx: _Ctx, x: np.ndarray) -> np.ndarray:
    """x^2 for unsigned x (h, w, W): 2w result rows; Wallace tree (one AND per full adder,
    majority = a ^ ((a ^ b) and (a ^ c)), and per half adder) and a prefix adder for the last
    two rows."""
    h, w, W = x.shape
    I, J, layers, fa, fb, size = _square_schedule(w)
    pool = np.empty((h, size + 1, W), dtype=np.uint64)
    pool[:, size] = 0                                  # index `size`: a public 0
    pool[:, :w] = x
    if len(I):
        pool[:, w:w + len(I)] = await ctx.and_(x[:, I], x[:, J])
    for A, B, C, HA, HB, at in layers:
        t, u = len(A), len(HA)
        a, b, c = pool[:, A], pool[:, B], pool[:, C]
        ha, hb = pool[:, HA], pool[:, HB]
        ab = a ^ b
        prod = await ctx.and_(np.concatenate([ab, ha], axis=1), np.concatenate([a ^ c, hb], axis=1))
        pool[:, at:at + t] = ab ^ c
        pool[:, at + t:at + 2 * t] = a ^ prod[:, :t]
        pool[:, at + 2 * t:at + 2 * t + u] = ha ^ hb
        pool[:, at + 2 * t + u:at + 2 * t + 2 * u] = prod[:, t:]
    a, b = pool[:, fa], pool[:, fb]
    return await _prefix_sum(ctx, a ^ b, await ctx.and_(a, b))


def _check_sectype(rt, sectype):
    if not (issubclass(sectype, rt.SecureInteger) or issubclass(sectype, rt.SecureFiniteField)):
        raise TypeError("sectype must be an MPyC secure integer type (SecInt) or a prime "
                        f"field type (SecFld), found {getattr(sectype, '__name__', sectype)}")
    if getattr(sectype, "frac_length", 0):
        raise TypeError("noise is integer-valued: fixed-point types are not supported")
    if sectype.field.characteristic == 2:
        raise TypeError("sectype must have odd characteristic")


def _digit_coins(plan: DLPlan, L: int) -> list[Coin]:
    """The coins of digits 0 .. L-1 of the discrete Laplace's G (constant 0 beyond the plan's)."""
    row = [_ZERO_COIN] * L
    for i, c in plan.bits:
        row[i] = c
    return row


async def _dl_batch(ctx: _Ctx, plans: list[DLPlan], lanes: _Lanes) -> np.ndarray:
    """Discrete Laplace draws, one lane per sample: shared rows (h, 2 + L, Ws) of every slot,
    [pos, neg, digit 0 .. L-1 of G], the sample being (pos - neg) (1 + G)."""
    L = max(p.nbits for p in plans)
    out = await _lane_coins(ctx, [[p.zero] + _digit_coins(p, L) for p in plans], lanes)
    Z, G = out[:, 0:1], out[:, 1:]
    S = ctx.rand(1, lanes.W)
    notz = ctx.not_(Z)
    pos = await ctx.and_(notz, S)
    return np.concatenate([pos, notz ^ pos, G], axis=1)  # one block: lanes are the slots


async def _dg_batch(ctx: _Ctx, plans: list[DGPlan], lanes: _Lanes) -> np.ndarray:
    """Discrete Gaussian draws (CKS rejection, ``plans[g].trials`` trials for draw g, one lane
    per trial): shared rows (h, 2 + L, Ws) of every slot as ``_dl_batch``.

    Per lane, as for one draw alone: N = D (G + 1) - C in two's complement (the widest draw's
    width; every draw's N fits), |N|; its low ``hsq`` bits squared, bit p of N^2 rejected by
    the acceptance coin p (a constant 1 past the draw's 2 hsq coins, where N^2 has no bits);
    |N| >= 2**hsq rejected outright; Y == 0 accepted by coin0. Each slot's last trial is
    accepted by force, so the first accepted trial (prefix OR over trials) is the last one
    when all others reject: its discrete Laplace value, exactly the one-draw fallback."""
    L = max(p.dl.nbits for p in plans)
    H = max(p.hsq for p in plans)
    width = max(p.width for p in plans)
    coins = [[p.dl.zero] + _digit_coins(p.dl, L)
             + [p.acc[i] if i < 2 * p.hsq else _ONE_COIN for i in range(2 * H)] + [p.coin0]
             for p in plans]
    out = await _lane_coins(ctx, coins, lanes)
    Z, Gd, A, A0 = out[:, 0:1], out[:, 1:1 + L], out[:, 1 + L:1 + L + 2 * H], out[:, -1:]
    S = ctx.rand(1, lanes.W)
    # D G in `width` rows: digit i at row i + log2 D (modulo 2**width: N fits, so N is exact)
    x = ctx.zeros(width, lanes.W)
    shifts = [p.D.bit_length() - 1 for p in plans]
    for d in sorted(set(shifts)):
        rows = min(L, width - d)
        if rows > 0:
            x[:, d:d + rows] ^= Gd[:, :rows] & lanes.spread([sh == d for sh in shifts])
    # N = D G + (D - C) and -N = ~(D G) + (C - D + 1) by one prefix adder over twice the
    # lanes (the rounds of one addition), then |N| = N, or -N where N's sign bit is set
    plus = lanes.spread([[(((p.D - p.C) % (1 << width)) >> i) & 1 for i in range(width)] for p in plans])
    minus = lanes.spread([[(((p.C - p.D + 1) % (1 << width)) >> i) & 1 for i in range(width)]
                          for p in plans])
    xn = ctx.not_(x)
    both = await _prefix_sum(ctx, np.concatenate([ctx.xor_public(x, plus), ctx.xor_public(xn, minus)], axis=2),
                             np.concatenate([x & plus, xn & minus], axis=2))
    N, negN = both[:, :, :lanes.W], both[:, :, lanes.W:]
    sign = np.broadcast_to(N[:, -1:], N.shape).copy()
    absN = N ^ await ctx.and_(sign, N ^ negN)
    low = absN[:, :H] & lanes.spread([[i < p.hsq for i in range(H)] for p in plans])
    hmin = min(p.hsq for p in plans)
    big = absN[:, hmin:] & lanes.spread([[i >= p.hsq for i in range(hmin, width)] for p in plans])
    sq = await _square(ctx, low)
    rej = np.concatenate([await ctx.and_(sq, ctx.not_(A)), big], axis=1)
    accG = await _and_tree(ctx, ctx.not_(rej))                    # (h, 1, W)
    notz = ctx.not_(Z)
    both = await ctx.and_(np.concatenate([Z, notz], axis=1), np.concatenate([A0 ^ accG, S], axis=1))
    acc, pos = accG ^ both[:, 0:1], both[:, 1:2]                  # Y == 0 uses coin0
    acc = ctx.xor_public(acc & ~lanes.last, lanes.last)           # acc OR last trial
    # first accepted trial: prefix OR over trials (a missing trial counts as accepted)
    F = lanes.to_blocks(ctx, acc, 1)[:, 0]                        # (h, K, Ws)
    K = lanes.blocks
    off = 1
    while off < K:
        o = await ctx.and_(ctx.not_(F[:, off:]), ctx.not_(F[:, :-off]))
        F = np.concatenate([F[:, :off], ctx.not_(o)], axis=1)
        off *= 2
    sel = F.copy()
    sel[:, 1:] ^= F[:, :-1]
    vals = lanes.to_blocks(ctx, np.concatenate([pos, notz ^ pos, Gd], axis=1), 0)
    vals = np.ascontiguousarray(vals.transpose(0, 2, 1, 3))       # (h, K, rows, Ws)
    selb = np.broadcast_to(sel[:, :, None, :], vals.shape).copy()
    picked = await ctx.and_(vals, selb)
    return np.bitwise_xor.reduce(picked, axis=1)                  # (h, rows, Ws)


@_coroutine
async def _batch_coro(rt, kind: str, plans: list, counts: list[int]):
    """The Boolean part of one batch: a future of the shared bits (h, 2 + L, n) of all slots,
    [pos, neg, digit 0 .. L-1 of G], the sample being (pos - neg) (1 + G)."""
    await rt.returnType(asyncio.Future)
    ctx = _ctx(rt)
    if kind == "dl":
        lanes = _Lanes(counts, [1] * len(plans))
        rows = await _dl_batch(ctx, plans, lanes)
    else:
        lanes = _Lanes(counts, [p.trials for p in plans])
        rows = await _dg_batch(ctx, plans, lanes)
    return unpack(rows, lanes.slots)


@_coroutine
async def _convert_coro(rt, sectype, rows_future, slots: np.ndarray):
    """The samples of ``slots`` in sectype: their bits converted into the field (one XOR
    tree for all rows), then (pos - neg) (1 + sum_i 2**i digit_i)."""
    n = len(slots)
    await rt.returnType((sectype.array, (n,)))
    bits = (await rows_future)[:, :, slots]
    arr = _ctx(rt).to_field(sectype, bits)
    L = bits.shape[1] - 2
    mag = 1 + np.array([1 << i for i in range(L)], dtype=object) @ arr[2:] if L else 1
    return (arr[0] - arr[1]) * mag


def _empty(sectype):
    return sectype.array(sectype.field.array(np.zeros(0, dtype=object)))


def _batch(rt, kind: str, draws: list) -> list:
    """Validated draws (sectype, plan, n) -> their secure arrays, all sampled in one lock-step
    batch and converted once per secure type."""
    live = [i for i, (_, _, n) in enumerate(draws) if n > 0]
    out = [_empty(st) if n == 0 else None for st, _, n in draws]
    if not live:
        return out
    counts = [draws[i][2] for i in live]
    rows = _batch_coro(rt, kind, [draws[i][1] for i in live], counts)
    starts = np.cumsum([0] + counts)
    by_type: dict = {}
    for g, i in enumerate(live):
        by_type.setdefault(draws[i][0], []).append((g, i))
    for sectype, members in by_type.items():
        slots = np.concatenate([np.arange(starts[g], starts[g + 1]) for g, _ in members])
        values = _convert_coro(rt, sectype, rows, slots)
        at = 0
        for g, i in members:
            out[i] = values if len(members) == 1 else values[at:at + counts[g]]
            at += counts[g]
    return out


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("n must be a non-negative int")
    return n


def discrete_laplace_many(rt, draws) -> list:
    """Secret samples of several discrete Laplace laws in one lock-step batch.

    ``draws``: (sectype, scale, n) triples. Returns one ``sectype.array`` of shape (n,) per
    triple, in order; each triple's samples follow its own law exactly as
    ``discrete_laplace(rt, sectype, scale, n)`` (the same plan and circuit, per lane), all
    samples independent. The AND rounds are those of the longest coin, whatever the number
    of scales."""
    checked = []
    for sectype, scale, n in draws:
        _check_sectype(rt, sectype)
        checked.append((sectype, dl_plan(_as_fraction(scale, "scale")), _check_n(n)))
    return _batch(rt, "dl", checked)


def discrete_gaussian_many(rt, draws) -> list:
    """Secret samples of several discrete Gaussian laws in one lock-step batch.

    ``draws``: (sectype, sigma2, n) or (sectype, sigma2, n, trials) tuples (default trials as
    ``discrete_gaussian``). Returns one ``sectype.array`` per tuple, in order; each follows
    its own law exactly as ``discrete_gaussian`` with the same arguments, all samples
    independent."""
    checked = []
    for draw in draws:
        sectype, sigma2, n, *rest = draw
        trials = rest[0] if rest else None
        _check_sectype(rt, sectype)
        checked.append((sectype, _dg_plan_of(sigma2, trials), _check_n(n)))
    return _batch(rt, "dg", checked)


def discrete_laplace(rt, sectype, scale, n: int):
    """n secret samples of the discrete Laplace law P(k) ~ exp(-|k|/scale), in sectype.

    ``scale`` is an int or Fraction (for epsilon-DP of an integer query with L1
    sensitivity s use scale = s/epsilon).  Returns a ``sectype.array`` of shape (n,).
    Per-sample TV distance to the exact law: ``discrete_laplace_delta(scale)``.
    """
    return discrete_laplace_many(rt, [(sectype, scale, n)])[0]


def discrete_gaussian(rt, sectype, sigma2, n: int, trials: int | None = None):
    """n secret samples of the discrete Gaussian P(k) ~ exp(-k^2/(2 sigma2)), in sectype.

    ``sigma2`` is an int or Fraction (rho-zCDP for L2 sensitivity s: sigma2 = s^2/(2 rho)).
    ``trials`` defaults to the smallest number making the per-sample TV distance
    ``discrete_gaussian_delta(sigma2, trials)`` at most 2**-40.
    """
    return discrete_gaussian_many(rt, [(sectype, sigma2, n, trials)])[0]
