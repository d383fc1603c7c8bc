"""The exact local samplers (jointstats.noise.local): their laws, tested statistically."""
from __future__ import annotations

import math
from fractions import Fraction as F

import numpy as np
import pytest
from scipy import stats

from jointstats.noise.local import bernoulli_exp, discrete_laplace, truncated_shift


def _dl_pmf(scale: float, ks: np.ndarray) -> np.ndarray:
    a = math.exp(-1 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(ks)


@pytest.mark.parametrize("scale", [F(1, 3), F(2), F(7, 3), F(40)])
def test_discrete_laplace_follows_its_law(scale):
    n = 6000
    draws = np.array([discrete_laplace(scale) for _ in range(n)])
    K = 0
    while _dl_pmf(float(scale), np.array([K + 1]))[0] * n >= 5:
        K += 1
    ks = np.arange(-K, K + 1)
    expected = _dl_pmf(float(scale), ks) * n
    observed = np.array([(draws == k).sum() for k in ks])
    expected = np.append(expected, n - expected.sum())  # |x| > K
    observed = np.append(observed, (np.abs(draws) > K).sum())
    if expected[-1] < 1e-9:
        expected, observed = expected[:-1], observed[:-1]
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-4


def test_bernoulli_exp_probability():
    for gamma in (F(0), F(1, 5), F(1), F(5, 2)):
        hits = sum(bernoulli_exp(gamma) for _ in range(20000))
        assert stats.binomtest(hits, 20000, math.exp(-gamma)).pvalue > 1e-4


def test_truncated_shift_bounds_the_clamp_probability():
    """The clamp of k + DL(1/epsilon) to [0, 2k] acts with probability 2 a^(k+1) / (1 + a),
    a = exp(-epsilon): at most tv, and k is within a few steps of the smallest that does it."""
    for eps, tv in ((F(1, 4), F(1, 2**40)), (F(1), F(1, 10**6)), (F(3), F(1, 100))):
        k = truncated_shift(eps, tv)
        a = math.exp(-float(eps))
        assert 2 * a ** (k + 1) / (1 + a) <= float(tv)
        assert 2 * a ** (k - 4) / (1 + a) > float(tv)  # within 5 of the smallest k
    with pytest.raises(ValueError):
        truncated_shift(F(0), F(1, 10))
