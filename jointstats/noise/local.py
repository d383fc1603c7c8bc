"""Exact noise drawn by one party in the clear, for what a party itself adds (the linkage's dummy
records): integer arithmetic and ``secrets`` only, never floating point.

The discrete Laplace sampler is Canonne, Kamath and Steinke's ("The discrete Gaussian for
differential privacy", NeurIPS 2020, Algorithms 1 and 2): Bernoulli(exp(-gamma)) for a
rational gamma by a series of Bernoulli(gamma / k) trials, geometric tails from it, and a
discrete Laplace of rational scale ``s / t`` from a uniform remainder and a geometric
quotient. The noise inside the MPC (what the analyst's results get) is ``noise.sampler``.
"""
from __future__ import annotations

import math
import secrets
from fractions import Fraction

__all__ = ["bernoulli", "bernoulli_exp", "discrete_laplace", "truncated_shift"]


def bernoulli(p: Fraction) -> bool:
    """True with probability ``p`` (a fraction in [0, 1]), exactly."""
    if not 0 <= p <= 1:
        raise ValueError(f"probability must be in [0, 1], found {p}")
    return secrets.randbelow(p.denominator) < p.numerator


def _bernoulli_exp_unit(gamma: Fraction) -> bool:
    """True with probability exp(-gamma), for 0 <= gamma <= 1."""
    k = 1
    while bernoulli(gamma / k):
        k += 1
    return k % 2 == 1


def bernoulli_exp(gamma: Fraction) -> bool:
    """True with probability exp(-gamma), for a rational gamma >= 0, exactly."""
    gamma = Fraction(gamma)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, found {gamma}")
    for _ in range(math.floor(gamma)):
        if not _bernoulli_exp_unit(Fraction(1)):
            return False
    return _bernoulli_exp_unit(gamma - math.floor(gamma))


def discrete_laplace(scale: Fraction) -> int:
    """An integer X with P(X = x) proportional to exp(-|x| / scale), exactly (``scale`` a
    positive fraction)."""
    scale = Fraction(scale)
    if scale <= 0:
        raise ValueError(f"scale must be > 0, found {scale}")
    t, s = scale.numerator, scale.denominator  # scale t / s: X = U + tV has law ~ exp(-x / t)
    while True:
        u = secrets.randbelow(t)
        if not bernoulli_exp(Fraction(u, t)):
            continue
        v = 0
        while bernoulli_exp(Fraction(1)):
            v += 1
        y = (u + t * v) // s
        negative = secrets.randbelow(2) == 1
        if negative and y == 0:
            continue
        return -y if negative else y


def truncated_shift(epsilon: Fraction, tv: Fraction) -> int:
    """The shift k of a count released as ``count + clamp(k + DL(1 / epsilon), 0, 2k)``: the
    smallest k (give or take one) with which the clamp changes the draw with probability at
    most ``tv``, so that the release is within total variation ``tv`` of the epsilon-DP
    ``count + k + DL``.

    The clamp acts only when |DL| > k, with probability 2 a^(k+1) / (1 + a) < 2 a^(k+1),
    a = exp(-epsilon): k = ceil(ln(2 / tv) / epsilon) makes that at most tv (with a margin of
    a whole step for the floating-point logarithm)."""
    epsilon, tv = Fraction(epsilon), Fraction(tv)
    if epsilon <= 0 or not 0 < tv < 1:
        raise ValueError("need epsilon > 0 and 0 < tv < 1")
    return math.ceil(math.log(2 / tv) / epsilon)
