"""Offline DP simulation for the utility benchmark (``bench/dp_utility.py``): plain numpy only.

Two things live here, both independent of the engine's code:

* **Exact samplers** of the laws the engine samples inside the MPC (its in-MPC samplers are
  within 2**-40 total variation of these per sample, ``privacy.sampler_tv``):

  - discrete Laplace ``P(k) ~ exp(-|k|/b)``: the difference of two i.i.d. geometrics with
    success probability ``p = 1 - exp(-1/b)``;
  - discrete Gaussian ``P(k) ~ exp(-k^2 / (2 sigma^2))``: Canonne-Kamath-Steinke 2020,
    Algorithm 3 (rejection from the discrete Laplace of scale ``t = floor(sigma) + 1``,
    acceptance ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``), vectorised.

  The acceptance probabilities and ``p`` are computed in float64 (relative error about
  1e-16: a TV distance far below anything measurable here). For scales above
  ``BIG_SCALE`` = 2**40 (Laplace b, or Gaussian sigma^2) a continuous Laplace/normal draw
  rounded to the nearest integer is used instead: its TV distance to the discrete law is
  O(1/b) resp. O(1/sigma^2), below 1e-12, and float64 keeps 53 significant bits of the
  noise, far finer than the noise itself (the engine's Gram entries are in units of
  2**30 or 2**60, so their scales are that large).

* **The central curator**: what a trusted curator holding the pooled, clipped data would
  release with the same (epsilon, delta) and the same public bounds (see ``Curator``).
  For delta > 0 it converts (epsilon, delta) to rho with Canonne-Kamath-Steinke 2020,
  Corollary 13 (``rho_cks``), tighter than the classical rho + 2 sqrt(rho ln(1/delta)).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

#: above this scale (Laplace b or Gaussian sigma^2) noise is a rounded continuous draw
BIG_SCALE = float(2 ** 40)


# ----------------------------------------------------------------------------- exact samplers


def discrete_laplace(rng: np.random.Generator, scale, size: int) -> np.ndarray:
    """``size`` draws of P(k) ~ exp(-|k|/scale), as int64 (float64 above BIG_SCALE)."""
    b = float(scale)
    if b <= 0:
        raise ValueError("scale must be > 0")
    if b > BIG_SCALE:
        return np.rint(rng.laplace(0.0, b, size))
    p = -math.expm1(-1.0 / b)  # 1 - exp(-1/b), accurate for large b
    # numpy's geometric counts trials (support 1, 2, ...); the offsets cancel in the difference
    return rng.geometric(p, size).astype(np.int64) - rng.geometric(p, size).astype(np.int64)


def discrete_gaussian(rng: np.random.Generator, sigma2, size: int) -> np.ndarray:
    """``size`` draws of P(k) ~ exp(-k^2 / (2 sigma2)) (CKS rejection), int64 (float64 above BIG_SCALE)."""
    s2 = float(sigma2)
    if s2 <= 0:
        raise ValueError("sigma2 must be > 0")
    if s2 > BIG_SCALE:
        return np.rint(rng.normal(0.0, math.sqrt(s2), size))
    t = math.floor(math.sqrt(s2)) + 1
    out = np.empty(size, dtype=np.int64)
    todo = np.arange(size)
    while todo.size:
        # a few extra proposals per round: the acceptance rate is at least about 0.6
        m = todo.size
        y = discrete_laplace(rng, t, m)
        accept = rng.random(m) < np.exp(-((np.abs(y) - s2 / t) ** 2) / (2 * s2))
        k = int(accept.sum())
        out[todo[:k]] = y[accept]
        todo = todo[k:]
    return out


def draw(rng: np.random.Generator, mechanism: str, scales) -> list[int]:
    """One draw per entry of ``scales`` (Laplace b or Gaussian sigma^2 each), as Python ints.

    Entries sharing a scale are drawn together (as the engine groups them).
    """
    scales = list(scales)
    out: list[int] = [0] * len(scales)
    groups: dict = {}
    for i, s in enumerate(scales):
        groups.setdefault(s, []).append(i)
    sampler = discrete_laplace if mechanism == "discrete_laplace" else discrete_gaussian
    for s, idx in groups.items():
        for i, v in zip(idx, sampler(rng, s, len(idx))):
            out[i] = int(v)
    return out


def dlaplace_pmf(scale: float, ks: np.ndarray) -> np.ndarray:
    a = math.exp(-1.0 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(ks)


def dgauss_pmf(sigma2: float, ks: np.ndarray) -> np.ndarray:
    span = int(40 * math.sqrt(sigma2)) + 40
    z = np.exp(-np.arange(-span, span + 1, dtype=float) ** 2 / (2 * sigma2)).sum()
    return np.exp(-ks.astype(float) ** 2 / (2 * sigma2)) / z


# ----------------------------------------------------------------------------- (eps, delta) -> rho


def cks_delta(rho: float, eps: float) -> float:
    """delta of rho-zCDP at eps by Canonne-Kamath-Steinke 2020, Cor. 13 (minimised over alpha).

    delta = inf_{alpha > 1} exp((alpha - 1)(alpha rho - eps)) / (alpha - 1) * (1 - 1/alpha)^alpha
    """
    def log_delta(alpha: np.ndarray) -> np.ndarray:
        return ((alpha - 1) * (alpha * rho - eps) - np.log(alpha - 1)
                + alpha * np.log1p(-1 / alpha))
    # the exponent is convex-ish in alpha around its minimum; a log grid then a local refinement
    grid = 1 + np.logspace(-6, 6, 4000)
    vals = log_delta(grid)
    i = int(np.argmin(vals))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    fine = np.linspace(lo, hi, 2001)
    return float(min(np.exp(log_delta(fine).min()), 1.0))


def rho_cks(eps: float, delta: float) -> float:
    """Largest rho (within 1e-12 relative) with cks_delta(rho, eps) <= delta."""
    lo, hi = 0.0, float(eps)
    while cks_delta(hi, eps) <= delta:  # pragma: no cover - rho < eps always for delta < 1
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if cks_delta(mid, eps) <= delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo


def rho_bun_steinke(eps: float, delta: float) -> float:
    """The classical conversion: largest rho with rho + 2 sqrt(rho ln(1/delta)) <= eps."""
    ell = math.log(1 / delta)
    return (math.sqrt(ell + eps) - math.sqrt(ell)) ** 2


# ----------------------------------------------------------------------------- the curator

#: AdaSSP's failure probability when the job's delta is 0 (its ridge and lambda_min margin
#: need one; with delta > 0 the paper uses delta itself)
ADASSP_FAILURE = 1e-6
#: grid of real-valued curator releases (sums of values): noise is discrete on this grid
#: relative to the sensitivity, i.e. effectively continuous
REAL_GRID_BITS = 20


class Curator:
    """A trusted central curator with the pooled clipped data, (epsilon, delta) and the bounds.

    Budget: pure epsilon-DP (delta = 0) with discrete Laplace noise, or rho-zCDP with
    discrete Gaussian noise (rho from (epsilon, delta) by CKS Cor. 13). Sensitivities are
    for add/remove-one-row neighbours, from the public bounds only. Every release is a
    textbook mechanism, calibrated tightly:

    * count, histogram, crosstab: each cell +-1 for one row, one cell per row: L1 = L2 = 1.
    * sum: L1 = L2 = max |bound|.
    * mean: [n, sum r] with r = (x - mid) / half in [-1, 1] (the public midpoint and half
      range); budget split equally (each entry sensitivity 1), mean = mid + half S / N
      (Google's BoundedMean layout), clamped to the bounds.
    * variance: [n, sum r, sum r^2], budget split in three; clamped to [0, (range/2)^2 n/(n-1)].
    * correlation: sufficient statistics of the centred, scaled columns: the upper triangle
      of the Gram matrix of [1, r_1, ..., r_k], joint sensitivity over the triangle
      (L1 and squared L2 both at most the number of entries, each |r_i r_j| <= 1),
      covariance from the noisy moments, repaired to a correlation matrix.
    * regression: AdaSSP (Wang 2018, Algorithm 2), see ``regression``.

    Noise on real-valued releases is discrete on a grid 2**-REAL_GRID_BITS of the entry's
    sensitivity (effectively continuous).
    """

    def __init__(self, epsilon: float, delta: float, rng: np.random.Generator, rho: float | None = None):
        self.eps = float(epsilon)
        self.delta = float(delta)
        self.pure = self.delta == 0
        self.rho = None if self.pure else (rho if rho is not None else rho_cks(self.eps, self.delta))
        self.rng = rng

    # noise of `size` entries whose joint L1 (pure) / squared L2 (zCDP) sensitivity is
    # `bound` in units of `unit`, with `share` of the budget
    def noise(self, size: int, bound: float, share: float = 1.0, unit: float = 1.0,
              grid: bool = False) -> np.ndarray:
        g = 2.0 ** -REAL_GRID_BITS if grid else 1.0
        if self.pure:
            scale = bound / (self.eps * share) / g
            k = discrete_laplace(self.rng, scale, size)
        else:
            sigma2 = bound / (2 * self.rho * share) / (g * g)
            k = discrete_gaussian(self.rng, sigma2, size)
        return np.asarray(k, dtype=float) * g * unit

    def sd(self, bound: float, share: float = 1.0) -> float:
        """Standard deviation of one entry's noise from ``noise(.., bound, share)``."""
        if self.pure:
            return math.sqrt(2.0) * bound / (self.eps * share)
        return math.sqrt(bound / (2 * self.rho * share))

    # -- statistics -------------------------------------------------------------------

    def count(self, n: int) -> float:
        return max(n + self.noise(1, 1.0)[0], 0.0)

    def cells(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, dtype=float)
        return np.maximum(counts + self.noise(counts.size, 1.0).reshape(counts.shape), 0.0)

    def sum(self, x: np.ndarray, lo: float, hi: float) -> float:
        sens = max(abs(lo), abs(hi))
        bound = 1.0  # in units of the sensitivity
        return float(x.sum() + self.noise(1, bound, unit=sens, grid=True)[0])

    def mean(self, x: np.ndarray, lo: float, hi: float) -> float:
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        r = (x - mid) / half
        n_t = len(x) + self.noise(1, 1.0, share=0.5)[0]
        s_t = r.sum() + self.noise(1, 1.0, share=0.5, grid=True)[0]
        if n_t < 1:
            return mid
        return float(np.clip(mid + half * s_t / n_t, lo, hi))

    def variance(self, x: np.ndarray, lo: float, hi: float) -> float:
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        r = (x - mid) / half
        third = 1.0 / 3.0
        n_t = len(x) + self.noise(1, 1.0, share=third)[0]
        s_t = r.sum() + self.noise(1, 1.0, share=third, grid=True)[0]
        q_t = (r * r).sum() + self.noise(1, 1.0, share=third, grid=True)[0]
        if n_t < 2:
            return (hi - lo) ** 2 / 12
        v = (q_t - s_t * s_t / n_t) / (n_t - 1) * half * half
        return float(np.clip(v, 0.0, (hi - lo) ** 2 / 4 * n_t / (n_t - 1)))

    def correlation(self, cols: list[np.ndarray], bounds: list[tuple[float, float]],
                    gram: np.ndarray | None = None) -> np.ndarray:
        """``gram``: ``correlation_gram(cols, bounds)`` if already computed (the same data)."""
        if gram is None:
            gram = correlation_gram(cols, bounds)
        k = gram.shape[0]
        iu = np.triu_indices(k)
        m = len(iu[0])  # joint sensitivity: m entries, each |change| <= 1
        noisy = gram[iu] + self.noise(m, float(m), grid=True)
        g = np.empty((k, k))
        g[iu] = noisy
        g.T[iu] = noisy
        n = g[0, 0]
        s = g[0, 1:]
        cov = (g[1:, 1:] - np.outer(s, s) / n) / (n - 1)
        sd = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
        return nearest_correlation(np.clip(cov / np.outer(sd, sd), -1, 1))

    def regression(self, x: np.ndarray, y: np.ndarray, x_bounds: list[tuple[float, float] | None],
                   y_bounds: tuple[float, float], moments: tuple | None = None) -> np.ndarray:
        """AdaSSP (Wang 2018, "Revisiting differentially private linear regression", Alg. 2).

        Features: numeric columns centred at their midpoint and scaled by their half range
        (indicators, ``None`` bounds, kept 0/1), an intercept column of ones, the row then
        divided by sqrt(p) so that ||x|| <= 1 (p = columns incl. the intercept); target
        y = (sbp - mid) / half, |y| <= 1. Budget in three equal parts: lambda_min(X'X)
        (sensitivity ||x||^2 <= 1), X'X (upper triangle: squared L2 sensitivity
        sum_{i<=j} (x_i x_j)^2 <= ||x||^4 <= 1, L1 sensitivity (||x||_1^2 + ||x||^2)/2 <=
        (p + 1)/2), X'y (L2 ||x|| |y| <= 1, L1 ||x||_1 <= sqrt(p)). Then, with sigma the
        X'X noise's standard deviation and beta the failure probability (delta, or
        ADASSP_FAILURE when delta = 0):
        lambda~ = max(0, lambda_min + noise - sd_lambda sqrt(log(6/beta))),
        lambda = max(0, sigma sqrt(p log(2 p^2 / beta)) - lambda~),
        theta = (X'X~ + lambda I)^-1 X'y~, mapped back to the original units.
        Returns the coefficients [intercept, features...] in the original units.
        ``moments``: ``regression_moments(x, y, x_bounds, y_bounds)`` if already computed.
        """
        xtx, xty, lam_min = moments or regression_moments(x, y, x_bounds, y_bounds)
        p = xtx.shape[0]
        ylo, yhi = y_bounds
        ymid, yhalf = (ylo + yhi) / 2, (yhi - ylo) / 2
        beta = self.delta if not self.pure else ADASSP_FAILURE
        third = 1.0 / 3.0
        # 1. lambda_min, privately
        sd_lam = self.sd(1.0, third)
        margin = sd_lam * math.sqrt(math.log(6 / beta))
        lam_t = max(0.0, lam_min + self.noise(1, 1.0, third, grid=True)[0] - margin)
        # 2. X'X and X'y
        iu = np.triu_indices(p)
        bound_xx = 1.0 if not self.pure else (p + 1) / 2
        bound_xy = 1.0 if not self.pure else math.sqrt(p)
        e = self.noise(len(iu[0]), bound_xx, third, grid=True)
        noise_xx = np.zeros((p, p))
        noise_xx[iu] = e
        noise_xx.T[iu] = e
        xtx_t = xtx + noise_xx
        xty_t = xty + self.noise(p, bound_xy, third, grid=True)
        sigma = self.sd(bound_xx, third)
        lam = max(0.0, sigma * math.sqrt(p * math.log(2 * p * p / beta)) - lam_t)
        theta = np.linalg.solve(xtx_t + lam * np.eye(p), xty_t)
        # back to original units: y = ymid + yhalf * (z . theta)
        coef = yhalf * theta / math.sqrt(p)
        out = np.empty(p)
        out[1:] = coef[1:]
        intercept = ymid + coef[0]
        for j, b in enumerate(x_bounds):
            if b is not None:
                lo, hi = b
                out[j + 1] = coef[j + 1] / ((hi - lo) / 2)
                intercept -= out[j + 1] * (lo + hi) / 2
        out[0] = intercept
        return out


def correlation_gram(cols: list[np.ndarray], bounds: list[tuple[float, float]]) -> np.ndarray:
    """Gram matrix of [1, r_1, ..., r_k], r = (x - mid) / half (the curator's exact moments)."""
    rs = [(x - (lo + hi) / 2) / ((hi - lo) / 2) for x, (lo, hi) in zip(cols, bounds)]
    v = np.column_stack([np.ones(len(cols[0]))] + rs)
    return v.T @ v


def regression_moments(x: np.ndarray, y: np.ndarray, x_bounds: list[tuple[float, float] | None],
                       y_bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, float]:
    """AdaSSP's exact X'X, X'y and lambda_min(X'X) on the scaled rows (see Curator.regression)."""
    n, d = x.shape
    p = d + 1
    z = np.empty((n, p))
    z[:, 0] = 1.0
    for j, b in enumerate(x_bounds):
        if b is None:
            z[:, j + 1] = x[:, j]
        else:
            lo, hi = b
            z[:, j + 1] = (x[:, j] - (lo + hi) / 2) / ((hi - lo) / 2)
    z /= math.sqrt(p)
    ylo, yhi = y_bounds
    t = (y - (ylo + yhi) / 2) / ((yhi - ylo) / 2)
    xtx = z.T @ z
    return xtx, z.T @ t, float(np.linalg.eigvalsh(xtx).min())


def nearest_correlation(c: np.ndarray) -> np.ndarray:
    """Symmetrise; if not positive semi-definite, clip the eigenvalues and renormalise."""
    c = (c + c.T) / 2
    w, v = np.linalg.eigh(c)
    if w.min() < 0:
        c = v @ np.diag(np.clip(w, 1e-9, None)) @ v.T
        dd = np.sqrt(np.diag(c))
        c = c / np.outer(dd, dd)
    np.fill_diagonal(c, 1.0)
    return np.clip(c, -1.0, 1.0)


def as_float(x) -> float:
    return float(Fraction(x)) if isinstance(x, Fraction) else float(x)
