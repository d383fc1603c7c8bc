"""Differential privacy inside the secure computation: noise plans and noisy reveals.

Neighbouring datasets differ by adding or removing one row (one person at one party).
Each statistic releases a vector of integer partial aggregates on the plan's grid;
every entry gets discrete Laplace (pure epsilon) or discrete Gaussian (zCDP) noise
sampled inside the MPC, calibrated to that entry's sensitivity from the public
bounds, so that no party ever sees an exact joint value or the noise. Small crosstab
cells are suppressed by a comparison inside the MPC. Everything after the reveal
(division, clamping, solving, positive-definite repair) is post-processing in the clear.
"""
from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np

from . import _accounting as acc
from ._secure import share_total, upper_index
from .errors import SpecError
from .plan import NoisePlan, Plan, StatPlan, seal
from .spec import Spec

NEIGHBOURS = "add/remove one row (one person at one party)"


# ----------------------------------------------------------------------------- release vectors


def _centre(stat: StatPlan, j: int) -> tuple[int, int]:
    """(midpoint, half-range) of term j on the grid; the constant term is (0, 1)."""
    term = stat.terms[j]
    if term.kind != "num":
        return 0, 1
    lo, hi = term.grid_bounds
    mid = (lo + hi) // 2
    return mid, max(hi - mid, mid - lo, 1)


def release_sensitivities(stat: StatPlan) -> list[int]:
    """L-infinity sensitivity of each released entry under add/remove of one row."""
    if stat.kind == "count":
        return [1]
    if stat.kind in ("crosstab", "histogram"):
        return [1] * stat.partial_size
    if stat.kind == "sum":
        lo, hi = stat.terms[1].grid_bounds
        return [max(abs(lo), abs(hi), 1)]
    k = len(stat.terms)
    if stat.kind in ("mean", "variance", "correlation"):
        halves = [_centre(stat, j)[1] for j in range(k)]
        out = [halves[i] * halves[j] for i in range(k) for j in range(i, k)]
        if stat.kind == "mean":
            return out[:2]  # n, centred sum
        if stat.kind == "variance":
            return out[:3]  # n, centred sum, centred sum of squares
        return out
    bounds = [t.bound for t in stat.terms]
    return [bounds[i] * bounds[j] for i in range(k) for j in range(i, k)]


def _joint_l1(stat: StatPlan) -> bool:
    """True when one row touches only one entry (cells, bins): the whole vector shares the budget."""
    return stat.kind in ("crosstab", "histogram")


def add_noise_plans(spec: Spec, plan: Plan) -> Plan:
    """Split the spec's budget over its statistics and give every released entry its noise scale."""
    privacy = spec.privacy
    if privacy.noise != "joint":
        raise SpecError("privacy.noise: only 'joint' noise (sampled inside the MPC) is supported "
                        "by this version")
    weights = {s.name: s.weight for s in spec.statistics}
    shares = acc.split_budget(privacy.epsilon, privacy.delta, weights)
    pure = privacy.delta == 0
    mechanism = "discrete_laplace" if pure else "discrete_gaussian"
    stats = []
    sampler_delta = Fraction(0)
    rho_total = Fraction(0)
    for stat in plan.statistics:
        eps_i, delta_i = shares[stat.name]
        sens = release_sensitivities(stat)
        count = 1 if _joint_l1(stat) else len(sens)
        rho = None
        if pure:
            scales = tuple(acc.laplace_scale(Fraction(s), eps_i / count) for s in sens)
            sampler_delta += sum(acc_delta_laplace(sc) for sc in scales)
        else:
            rho = acc.rho_from_eps_delta(eps_i, delta_i)
            rho_total += rho
            scales = tuple(acc.gaussian_sigma2(Fraction(s), rho / count) for s in sens)
            sampler_delta += sum(acc_delta_gaussian(sc) for sc in scales)
        noise = NoisePlan(mechanism, eps_i, delta_i, rho, scales, tuple(Fraction(s) for s in sens))
        stats.append(replace(stat, noise=noise, secure_bits=_noisy_bits(stat, scales, pure)))
    block = {"epsilon": float(privacy.epsilon), "delta": float(privacy.delta), "mechanism": mechanism,
             "noise": "joint", "neighbours": NEIGHBOURS}
    block["sampler_delta"] = float(sampler_delta)
    if not pure:
        block["rho"] = float(rho_total)
    return seal(replace(plan, statistics=tuple(stats), privacy=block))


def acc_delta_laplace(scale: Fraction) -> Fraction:
    """Per-sample delta of the discrete Laplace sampler's truncation and finite precision."""
    from ._noise import discrete_laplace_delta
    return discrete_laplace_delta(scale)


def acc_delta_gaussian(sigma2: Fraction) -> Fraction:
    """Per-sample delta of the discrete Gaussian sampler (all trials rejected, coin precision)."""
    from ._noise import discrete_gaussian_delta
    return discrete_gaussian_delta(sigma2)


def _noisy_bits(stat: StatPlan, scales, pure: bool) -> int:
    """Bit length of the SecInt holding partials plus noise (noise tails cut at 2**-40 or so)."""
    biggest = max(scales)
    spread = biggest if pure else Fraction(math.isqrt(int(biggest) + 1) + 1)
    noise_bits = max(int(spread).bit_length(), 1) + 8
    n_max = 1 << 40
    bound = max([t.bound for t in stat.terms] or [1]) ** 2
    return (n_max * bound).bit_length() + noise_bits + 4


# ----------------------------------------------------------------------------- secure step


def _sample(rt, secint, noise: NoisePlan):
    """One noise sample per released entry, grouped by scale, as a secure array."""
    from ._noise import discrete_gaussian, discrete_laplace
    scales = list(noise.scales)
    groups: dict[Fraction, list[int]] = {}
    for i, s in enumerate(scales):
        groups.setdefault(s, []).append(i)
    pieces = {}
    for s, idx in groups.items():
        if noise.mechanism == "discrete_laplace":
            pieces[s] = discrete_laplace(rt, secint, s, len(idx))
        else:
            pieces[s] = discrete_gaussian(rt, secint, s, len(idx))
    order = []
    for s, idx in groups.items():
        order.extend(idx)
    stacked = np.concatenate([pieces[s] for s in groups]) if len(groups) > 1 else pieces[next(iter(groups))]
    inverse = np.argsort(np.array(order))
    return stacked[inverse] if len(groups) > 1 else stacked


def _release_vector(stat: StatPlan, total):
    """The secret released entries computed from the summed partials (centred where planned)."""
    if stat.kind in ("count", "crosstab", "histogram"):
        return total
    if stat.kind == "sum":
        return total[1:2]
    k = len(stat.terms)
    if stat.kind == "regression":
        return total
    # centred moments: G_c = T^T G T with T the public shift x -> x - mid (linear, no interaction)
    idx = upper_index(k)
    mids = [_centre(stat, j)[0] for j in range(k)]
    entries = []
    for i in range(k):
        for j in range(i, k):
            # sum (x_i - m_i)(x_j - m_j) = G_ij - m_j G_i0 - m_i G_0j + m_i m_j G_00 (x_0 = 1, m_0 = 0)
            e = total[idx[i, j]:idx[i, j] + 1]
            if mids[j]:
                e = e - mids[j] * total[idx[i, 0]:idx[i, 0] + 1]
            if mids[i]:
                e = e - mids[i] * total[idx[0, j]:idx[0, j] + 1]
            if mids[i] and mids[j]:
                e = e + mids[i] * mids[j] * total[0:1]
            entries.append(e)
    size = len(stat.noise.scales)
    return np.concatenate(entries[:size])


async def prepare(rt, stat: StatPlan, partial: list[int], min_count: int | None):
    """Secure step up to (not including) the reveal: the noisy secret values and a keep mask."""
    secint = rt.SecInt(stat.secure_bits)
    total = share_total(rt, secint, partial)
    values = _release_vector(stat, total)
    noisy = values + _sample(rt, secint, stat.noise)
    if stat.kind == "crosstab" and min_count:
        noisy = noisy * (noisy >= min_count)  # suppression decided inside the MPC
    await rt.gather(noisy)  # finish the secure computation before the budget is committed
    return noisy


async def reveal(rt, stat: StatPlan, noisy, min_count: int | None) -> dict:
    """Reveal the noisy values and post-process them in the clear into the contract's entry."""
    opened = [int(v) for v in await rt.output(noisy)]
    return postprocess(stat, opened, min_count)


async def dp_statistic(rt, stat: StatPlan, partial: list[int], min_count: int | None) -> dict:
    """Prepare and reveal in one go (the party loop commits the budget in between)."""
    noisy = await prepare(rt, stat, partial, min_count)
    return await reveal(rt, stat, noisy, min_count)


# ----------------------------------------------------------------------------- post-processing


def _noise_info(stat: StatPlan, unit: float = 1.0, entry: int = 0) -> dict:
    noise = stat.noise
    scale = noise.scales[entry]
    half = acc.noise_interval_95(noise.mechanism, scale)
    info = {"mechanism": noise.mechanism, "epsilon": float(noise.epsilon),
            "scale": float(scale) * unit if noise.mechanism == "discrete_laplace"
            else math.sqrt(float(scale)) * unit,
            "ci95_halfwidth": half * unit}
    if noise.rho is not None:
        info["rho"] = float(noise.rho)
        info["delta"] = float(noise.delta)
    return info


def postprocess(stat: StatPlan, values: list[int], min_count: int | None) -> dict:
    """Turn revealed noisy integers into the statistic (free post-processing)."""
    kind = stat.kind
    if kind == "count":
        return {"kind": "count", "value": max(values[0], 0), "noise": _noise_info(stat)}
    if kind == "histogram":
        return {"kind": "histogram", "edges": list(stat.edges), "counts": [max(v, 0) for v in values],
                "noise": _noise_info(stat)}
    if kind == "crosstab":
        nr, nc = stat.shape
        cells = [None if (min_count and v == 0) else max(v, 0) for v in values]
        return {"kind": "crosstab", "rows": list(stat.labels[0]), "cols": list(stat.labels[1]),
                "counts": [cells[i * nc:(i + 1) * nc] for i in range(nr)], "min_count": min_count or 0,
                "noise": _noise_info(stat)}
    if kind == "sum":
        f = stat.terms[1].frac_bits
        return {"kind": "sum", "value": math.ldexp(values[0], -f),
                "noise": _noise_info(stat, 2.0 ** -f)}
    if kind in ("mean", "variance", "correlation"):
        return _moments(stat, values)
    return _regression(stat, values)


def _moments(stat: StatPlan, values: list[int]) -> dict:
    k = len(stat.terms)
    n = max(values[0], 0)
    term = stat.terms[1]
    f = term.frac_bits
    unit = 2.0 ** -f
    if stat.kind == "mean":
        mid = _centre(stat, 1)[0]
        lo, hi = term.column_bounds
        if n < 1:
            return {"kind": "mean", "value": None, "noise": _noise_info(stat, unit, 1)}
        value = (mid + values[1] / n) * unit
        return {"kind": "mean", "value": min(max(value, lo), hi), "noise": _noise_info(stat, unit, 1)}
    if stat.kind == "variance":
        lo, hi = term.column_bounds
        if n < 2:
            return {"kind": "variance", "value": None, "noise": _noise_info(stat, unit * unit, 2)}
        s, ss = values[1], values[2]
        var = (ss - s * s / n) / (n - 1) * unit * unit
        top = (hi - lo) ** 2 / 4 * n / (n - 1)
        return {"kind": "variance", "value": min(max(var, 0.0), top), "noise": _noise_info(stat, unit * unit, 2)}
    idx = upper_index(k)
    g = np.array([[values[idx[i, j]] for j in range(k)] for i in range(k)], dtype=float)
    d = k - 1
    matrix = [[None] * d for _ in range(d)]
    if n >= 2:
        s = g[0, 1:]
        cov = (g[1:, 1:] - np.outer(s, s) / n) / (n - 1)
        sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
        corr = np.clip(cov / np.outer(sd, sd), -1.0, 1.0)
        corr = _nearest_correlation(corr)
        matrix = [[float(corr[i, j]) for j in range(d)] for i in range(d)]
    return {"kind": "correlation", "columns": list(stat.columns), "matrix": matrix,
            "noise": _noise_info(stat, 1.0, len(values) - 1)}


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    """Repair a noisy correlation matrix to positive semi-definite with unit diagonal."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    if w.min() >= 0:
        out = c
    else:
        out = v @ np.diag(np.clip(w, 1e-9, None)) @ v.T
        dd = np.sqrt(np.diag(out))
        out = out / np.outer(dd, dd)
    np.fill_diagonal(out, 1.0)
    return np.clip(out, -1.0, 1.0)


def _solve(stat: StatPlan, g: np.ndarray):
    """Ridge/OLS from a (noisy) Gram matrix of [1, terms..., y] on the grid; returns the fit."""
    k = len(stat.terms)
    y = k - 1
    z = list(range(0 if stat.intercept else 1, k - 1))
    scale = np.array([2.0 ** -stat.terms[j].frac_bits for j in range(k)])
    g = g * np.outer(scale, scale)  # back to original units
    a = g[np.ix_(z, z)].copy()
    b = g[z, y]
    n = max(g[0, 0], 1.0)
    for pos, j in enumerate(z):
        if stat.terms[j].kind != "one":
            a[pos, pos] += float(stat.ridge)
    w, v = np.linalg.eigh((a + a.T) / 2)
    floor = 1e-8 * max(abs(w).max(), 1.0)
    if w.min() < floor:  # positive definite repair after noise
        a = v @ np.diag(np.clip(w, floor, None)) @ v.T
    a_inv = np.linalg.inv(a)
    beta = a_inv @ b
    gzz = g[np.ix_(z, z)]
    rss = g[y, y] - 2 * beta @ b + beta @ gzz @ beta
    dof = max(n - len(z), 1.0)
    sigma2 = max(rss / dof, 0.0)
    cov = sigma2 * (a_inv @ gzz @ a_inv) if stat.ridge else sigma2 * a_inv
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    tss = g[y, y] - (g[0, y] ** 2 / n if stat.intercept else 0.0)
    r2 = float(min(max(1 - rss / tss, 0.0), 1.0)) if tss > 0 else None
    return beta, se, r2, n


def _regression(stat: StatPlan, values: list[int]) -> dict:
    k = len(stat.terms)
    idx = upper_index(k)
    g = np.array([[values[idx[i, j]] for j in range(k)] for i in range(k)], dtype=float)
    beta, se, r2, n = _solve(stat, g)
    # Noise scale of the coefficients, by propagating fresh draws of the same (public)
    # noise distribution through the solve: post-processing of public values only.
    # Seeded from the revealed values so every party computes the identical result.
    rng = np.random.default_rng([v % (1 << 32) for v in values])
    scales = np.array([float(s) for s in stat.noise.scales])
    sd = scales * math.sqrt(2) if stat.noise.mechanism == "discrete_laplace" else np.sqrt(scales)
    draws = []
    for _ in range(100):
        e = rng.normal(0.0, 1.0, len(values)) * sd
        ge = np.array([[values[idx[i, j]] + e[idx[i, j]] for j in range(k)] for i in range(k)])
        draws.append(_solve(stat, ge)[0])
    coef_sd = np.std(np.array(draws), axis=0)
    terms = [t.name if t.kind != "one" else "intercept" for t in stat.terms[:-1]
             if stat.intercept or t.kind != "one"]
    noise = _noise_info(stat, 1.0, 0)
    noise["coefficient_noise_sd"] = [float(v) for v in coef_sd]
    return {"kind": "regression", "terms": terms, "coefficients": [float(v) for v in beta],
            "std_errors": [float(v) for v in se], "n": int(round(n)), "r_squared": r2,
            "ridge": float(stat.ridge), "noise": noise}
