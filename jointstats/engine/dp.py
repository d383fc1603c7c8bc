"""Differential privacy inside the secure computation: noise plans, noisy reveals, post-processing.

Neighbouring datasets differ by adding or removing one row (one person at one party).

Every statistic releases a vector of integers computed from the parties' summed partial
aggregates; each entry gets discrete Laplace (pure epsilon) or discrete Gaussian (zCDP)
noise sampled inside the MPC, so nobody sees an exact joint value or the noise.

Moments, correlations and regressions use *sufficient-statistics perturbation on centred,
scaled columns*: in DP mode each owner encodes a numeric column as
``r = (x - mid) / half`` (public midpoint and half-range of its bounds, so ``|r| <= 1``) on
the grid ``round(r * 2**30)``; indicators stay 0/1. The released vector is the upper
triangle of the Gram matrix of ``[1, r_1, ..., r_k]``. One row changes that vector by
``c_ij = r_i r_j`` (in the entries' units), and the whole vector shares one budget under its
joint sensitivity: ``sum |c_ij| <= M`` and ``sum c_ij**2 <= M``, with ``M`` the number of
released entries a row can touch (a categorical column has at most one indicator set).
The noise therefore has the same law in every entry once expressed in units of ``c``: that
law is what the uncertainty of each result is computed from. Noising the uncentred Gram of
raw columns instead makes the noise cancel catastrophically against large means.

Everything after the reveal (division, solving, the data-adaptive ridge, correlation
repair, confidence intervals) is post-processing of public values.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from fractions import Fraction

import numpy as np

from jointstats.plan import accounting as acc
from jointstats.engine.secure import share_total, suppression_threshold
from jointstats.errors import SpecError
from jointstats.plan.sealed import NoisePlan, Plan, StatPlan, Term, seal
from jointstats.plan.spec import Spec

NEIGHBOURS = "add/remove one row (one person at one party)"
#: Grid of the centred, scaled columns in DP mode: r in [-1, 1] is held as round(r * 2**DP_GRID_BITS).
DP_GRID_BITS = 30
_UNIT = 1 << DP_GRID_BITS
#: Statistics released as (part of) the Gram matrix of centred, scaled columns.
_GRAM_DP = ("mean", "variance", "correlation", "regression")
#: Parametric-bootstrap draws for the uncertainty of derived statistics.
BOOTSTRAP_DRAWS = 400
SCALAR_BOOTSTRAP_DRAWS = 10_000
#: Data-adaptive ridge (post-processing): lambda = max(0, RIDGE_TAU * sd * sqrt(p) - lambda_min).
RIDGE_TAU = 2.0
_Z95 = 1.959963984540054


# ----------------------------------------------------------------------------- the plan


def _dp_term(term: Term) -> Term:
    """A numeric term re-encoded for DP: centred at its midpoint, scaled by its half-range."""
    if term.kind != "num":
        return term
    lo, hi = term.col_lo, term.col_hi
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    return replace(term, bound=_UNIT, grid_lo=-_UNIT, grid_hi=_UNIT, offset=mid,
                   mult=_UNIT / half if half > 0 else float(_UNIT))


def _unit(term: Term) -> int:
    return _UNIT if term.kind == "num" else 1


def release_slice(stat: StatPlan) -> slice:
    """Which entries of the statistic's partial vector are released (noised and revealed)."""
    if stat.kind == "sum":
        return slice(1, 2)  # sum of the grid values
    if stat.kind == "mean":
        return slice(0, 2)  # n, sum of r
    if stat.kind == "variance":
        return slice(0, 3)  # n, sum of r, sum of r^2
    return slice(0, stat.partial_size)


def _pairs(k: int) -> list[tuple[int, int]]:
    """(i, j), i <= j, in the row-major upper-triangle order of the partial vectors."""
    return [(i, j) for i in range(k) for j in range(i, k)]


def release_units(stat: StatPlan) -> tuple[int, ...]:
    """Per released entry: the integer u such that one row changes the entry by u * c, |c| <= 1."""
    if stat.kind in ("count", "crosstab", "histogram"):
        return (1,) * stat.partial_size
    if stat.kind == "sum":
        return (stat.terms[1].bound,)
    units = [_unit(t) for t in stat.terms]
    pairs = _pairs(len(stat.terms))[release_slice(stat)]
    return tuple(units[i] * units[j] for i, j in pairs)


def release_bound(stat: StatPlan) -> int:
    """Joint sensitivity M of the released vector in units of c: sum |c| <= M and sum c^2 <= M.

    Counts, sums: one entry. Crosstabs and histograms: a row falls in one cell. Gram
    statistics: every |c_ij| = |r_i r_j| <= 1, and a row has at most one indicator of each
    categorical column set, so M is the number of released pairs among the constant, every
    numeric term and one indicator per categorical column.
    """
    if stat.kind not in _GRAM_DP:
        return 1
    active, seen = [], set()
    for i, t in enumerate(stat.terms):
        if t.kind == "ind":
            if t.column in seen:
                continue
            seen.add(t.column)
        active.append(i)
    chosen = set(active)
    pairs = _pairs(len(stat.terms))[release_slice(stat)]
    return sum(1 for i, j in pairs if i in chosen and j in chosen)


def _with_dp_terms(stat: StatPlan) -> StatPlan:
    if stat.kind not in _GRAM_DP:
        return stat
    return replace(stat, terms=tuple(_dp_term(t) for t in stat.terms))


def add_noise_plans(spec: Spec, plan: Plan) -> Plan:
    """Split the job's budget over its statistics and give every released entry its noise.

    Pure DP (delta 0): epsilon split by weight (basic composition). zCDP (delta > 0): the
    job's (epsilon, delta) is converted to rho once, after the sampler's total-variation
    allowance is set aside (``_accounting.job_charge``), and rho is split by weight.
    """
    from jointstats.engine.sources import MISFIT_RULE_DP
    privacy = spec.privacy
    if privacy.noise != "joint":
        raise SpecError("privacy.noise: only 'joint' noise (sampled inside the MPC) is supported "
                        "by this version")
    stats = [_with_dp_terms(s) for s in plan.statistics]
    samples = sum(len(release_units(s)) for s in stats)
    weights = {s.name: s.weight for s in spec.statistics}
    total_weight = sum(weights.values())
    # an inner linked job's dummy records (docs/linkage.md): each party's count is one more
    # draw, within the samplers' total variation per draw of its untruncated law (a left join
    # opens nothing of its matches: no dummies)
    linked = spec.vertical and spec.link.join != "left"
    draws = len(plan.parties) if linked else 0
    try:
        charge = acc.job_charge(privacy.epsilon, privacy.delta, samples + draws)
    except ValueError as exc:  # a delta too small for the samplers' total-variation allowance
        raise SpecError(f"privacy.delta: {exc}") from None
    pure = privacy.delta == 0
    eps_s, rho_s = privacy.epsilon, charge.rho
    linkage = None
    if linked:  # one more "statistic" of the average weight: 1 / (count + 1) of the budget
        linkage = _linkage_share(privacy.epsilon if pure else None, charge.rho, len(spec.statistics),
                                 len(plan.parties))
        if pure:
            eps_s = privacy.epsilon - linkage["epsilon"]
        else:
            rho_s = charge.rho - linkage["epsilon"] ** 2 / 2
    mechanism = "discrete_laplace" if pure else "discrete_gaussian"
    out = []
    sampler_tv = Fraction(0)
    for stat in stats:
        share = weights[stat.name] / total_weight
        bound = Fraction(release_bound(stat))
        units = release_units(stat)
        if pure:
            eps_i = eps_s * share
            noise = NoisePlan(mechanism, eps_i, None, bound, bound / eps_i, units)
        else:
            rho_i = rho_s * share
            noise = NoisePlan(mechanism, None, rho_i, bound, bound / (2 * rho_i), units)
        sampler_tv += _sampler_tv(noise)
        out.append(replace(stat, noise=noise, secure_bits=_noisy_bits(stat, noise)))
    if sampler_tv > samples * acc.SAMPLER_TV_PER_SAMPLE:  # the per-sample bound; checked, never assumed
        raise AssertionError("sampler total variation exceeds the charged allowance")
    block = {"epsilon": float(privacy.epsilon), "delta": float(privacy.delta), "mechanism": mechanism,
             "noise": "joint", "neighbours": NEIGHBOURS,
             "accounting": ("pure DP, epsilon split over the statistics (basic composition)" if pure else
                            "zCDP: the job's (epsilon, delta) converted to rho once (Canonne-Kamath-"
                            "Steinke), rho split over the statistics"),
             "guarantee": {"epsilon": float(charge.epsilon), "delta": float(charge.delta)},
             "sampler_tv": float(sampler_tv), "charge": charge.to_dict(), "misfit": MISFIT_RULE_DP}
    if not pure:
        block["rho"] = float(charge.rho)
    if linkage is not None:
        from jointstats.engine.vertical import LINK_SENSITIVITY
        block["linkage"] = {"epsilon": float(linkage["epsilon"]), "epsilon_exact": str(linkage["epsilon"]),
                            "shift": linkage["shift"], "draws": draws,
                            "sensitivity": LINK_SENSITIVITY,
                            "mechanism": "dummy linked records: clamp(k + discrete Laplace(1 / epsilon), "
                                         "0, 2k) per party"}
        block["accounting"] += ("; the linked counts the parties see: a share of "
                                + ("epsilon" if pure else "rho (epsilon^2 / 2 of it)")
                                + " like one more statistic, each party's dummy count one more draw "
                                  "in the total-variation term")
    return seal(replace(plan, statistics=tuple(out), privacy=block))


def _linkage_share(epsilon: Fraction | None, rho: Fraction | None, statistics: int,
                   parties: int) -> dict:
    """A DP inner linked job's share for the dummy linked records (the count every party sees), as
    one more statistic of the statistics' average weight: 1 / (statistics + 1) of epsilon
    (pure job) or of rho (zCDP job: the dummies' pure epsilon_link is then the largest
    rational with epsilon_link^2 / 2 below that share, on a 2^-40 grid), with the shift k
    that keeps each draw (discrete Laplace of scale sensitivity / epsilon_link) within the
    samplers' total variation per draw. SpecError when the dummy rows would exceed the
    linked row limit."""
    from jointstats.engine.vertical import LINK_SENSITIVITY
    from jointstats.noise.local import truncated_shift
    from jointstats.plan.spec import MAX_LINK_ROWS
    if epsilon is not None:
        eps = epsilon / (statistics + 1)
    else:
        grid = 1 << 40
        eps = Fraction(math.isqrt(math.floor(2 * rho / (statistics + 1) * grid * grid)), grid)
    if eps <= 0:
        raise SpecError("privacy.epsilon: too small to noise the linkage's match counts")
    try:
        k = truncated_shift(eps / LINK_SENSITIVITY, acc.SAMPLER_TV_PER_SAMPLE)
    except (ValueError, OverflowError, ZeroDivisionError):
        raise SpecError("privacy.epsilon: too small to noise the linkage's match counts") from None
    rows = parties * 2 * k  # the table's dummy rows
    if rows > MAX_LINK_ROWS:
        raise SpecError(f"privacy.epsilon: the linkage's dummy records at this epsilon would be up "
                        f"to {rows} rows, over the limit of {MAX_LINK_ROWS}; raise "
                        "epsilon or use fewer statistics")
    return {"epsilon": eps, "shift": k}


def _sampler_tv(noise: NoisePlan) -> Fraction:
    """Total-variation distance of all of a statistic's samples to their exact laws (a bound)."""
    per = acc_delta_laplace if noise.mechanism == "discrete_laplace" else acc_delta_gaussian
    return sum((count * per(s) for s, count in Counter(noise.scales).items()), Fraction(0))


def acc_delta_laplace(scale: Fraction) -> Fraction:
    """Per-sample TV distance of the discrete Laplace sampler (truncation, finite precision)."""
    from jointstats.noise.sampler import discrete_laplace_delta
    return discrete_laplace_delta(scale)


def acc_delta_gaussian(sigma2: Fraction) -> Fraction:
    """Per-sample TV distance of the discrete Gaussian sampler (all trials rejected, precision)."""
    from jointstats.noise.sampler import discrete_gaussian_delta
    return discrete_gaussian_delta(sigma2)


def _noisy_bits(stat: StatPlan, noise: NoisePlan) -> int:
    """Bit length of the SecInt holding the summed partials plus noise, proven from the plan.

    Every released entry is at most (rows) * (largest |term value|)^2 in magnitude, rows below
    2**40 for any number of parties, and every noise sample is at most its sampler's hard bound
    ``max_abs``; two bits spare (sign and the sum).
    """
    from jointstats.noise.sampler import dg_plan, dl_plan
    plan_of = dl_plan if noise.mechanism == "discrete_laplace" else dg_plan
    noise_max = max(plan_of(s).max_abs for s in set(noise.scales))
    entry_max = (1 << 40) * max([t.bound for t in stat.terms] or [1]) ** 2
    return (entry_max + noise_max).bit_length() + 2


# ----------------------------------------------------------------------------- secure step


def _sampler_draws(rt, stats) -> tuple[list, list[list[int]]]:
    """The sampler draws (secure type, scale, count) of these statistics, one per distinct
    scale of each, and for each statistic the order of its entries among its draws."""
    draws, orders = [], []
    for stat in stats:
        secint = rt.SecInt(stat.secure_bits)
        groups: dict[Fraction, list[int]] = {}
        for i, s in enumerate(stat.noise.scales):
            groups.setdefault(s, []).append(i)
        draws += [(secint, s, len(idx)) for s, idx in groups.items()]
        orders.append([i for idx in groups.values() for i in idx])
    return draws, orders


def sample_noise(rt, plan: Plan) -> dict:
    """Every statistic's noise (one sample per released entry) as a secure array by name,
    all of the job's draws sampled in one lock-step batch: a job pays the AND rounds of one
    sampler circuit, whatever the number of its statistics and distinct scales."""
    from jointstats.noise.sampler import discrete_gaussian_many, discrete_laplace_many
    stats = [s for s in plan.statistics if s.noise is not None]
    if not stats:
        return {}
    mechanisms = {s.noise.mechanism for s in stats}
    if len(mechanisms) != 1:  # pragma: no cover - add_noise_plans gives a job one mechanism
        raise AssertionError("one noise mechanism per job")
    many = discrete_laplace_many if mechanisms == {"discrete_laplace"} else discrete_gaussian_many
    draws, orders = _sampler_draws(rt, stats)
    pieces = many(rt, draws)
    out, at = {}, 0
    for stat, order in zip(stats, orders):
        k = len({*stat.noise.scales})
        mine, at = pieces[at:at + k], at + k
        out[stat.name] = mine[0] if k == 1 else \
            np.concatenate(mine)[np.argsort(np.array(order))]
    return out


def _sample(rt, secint, noise: NoisePlan):
    """One noise sample per released entry of one statistic, all its scales in one lock-step
    batch, as a secure array (``sample_noise`` does the same for all of a job's statistics)."""
    from jointstats.noise.sampler import discrete_gaussian_many, discrete_laplace_many
    groups: dict[Fraction, list[int]] = {}
    for i, s in enumerate(noise.scales):
        groups.setdefault(s, []).append(i)
    many = discrete_laplace_many if noise.mechanism == "discrete_laplace" else discrete_gaussian_many
    pieces = many(rt, [(secint, s, len(idx)) for s, idx in groups.items()])
    if len(pieces) == 1:
        return pieces[0]
    order = [i for idx in groups.values() for i in idx]
    return np.concatenate(pieces)[np.argsort(np.array(order))]


def release_clear(stat: StatPlan, partial) -> list[int]:
    """The released entries (before noise) from summed partials in the clear.

    The secure step slices the secret sum the same way (``prepare``); offline simulations of
    the mechanism (the utility benchmark) use this to get the engine's exact release vector.
    """
    return [int(v) for v in list(partial)[release_slice(stat)]]


async def prepare(rt, stat: StatPlan, partial: list[int], min_count: int | None, noise=None):
    """Secure step up to (not including) the reveal: the noisy secret values. ``noise``: the
    statistic's noise from ``sample_noise`` (the job's one batch), else sampled here."""
    secint = rt.SecInt(stat.secure_bits)
    total = share_total(rt, secint, partial)
    if noise is None:
        noise = _sample(rt, secint, stat.noise)
    noisy = total[release_slice(stat)] + noise
    if stat.kind == "crosstab" and min_count:
        noisy = noisy * (noisy >= suppression_threshold(stat, min_count))  # inside the MPC
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


def _share_info(noise: NoisePlan) -> dict:
    info = {"mechanism": noise.mechanism}
    if noise.epsilon is not None:
        info["epsilon"] = float(noise.epsilon)
    if noise.rho is not None:
        info["rho"] = float(noise.rho)
    return info


def _count_noise(stat: StatPlan, unit: float = 1.0) -> dict:
    """Noise of a directly released entry (count, cell, bin, sum), in the statistic's units."""
    noise = stat.noise
    scale = noise.scales[0]
    info = _share_info(noise)
    laplace = noise.mechanism == "discrete_laplace"
    info["scale"] = (float(scale) if laplace else math.sqrt(float(scale))) * unit
    info["sd"] = (math.sqrt(2.0) * float(scale) if laplace else math.sqrt(float(scale))) * unit
    info["ci95_halfwidth"] = acc.noise_interval_95(noise.mechanism, scale) * unit
    return info


def _rng(stat: StatPlan, values: list[int]) -> np.random.Generator:
    """A generator seeded by the revealed values: every party computes the same intervals."""
    return np.random.default_rng([len(stat.name)] + [v % (1 << 32) for v in values])


def _draws(noise: NoisePlan, rng: np.random.Generator, size: int, count: int = BOOTSTRAP_DRAWS) -> np.ndarray:
    """``count`` fresh draws of the released vector's noise, in units of c."""
    shape = (count, size)
    if noise.mechanism == "discrete_laplace":
        return rng.laplace(0.0, float(noise.base), shape)
    return rng.standard_normal(shape) * math.sqrt(float(noise.base))


def _scaled(stat: StatPlan, values: list[int]) -> np.ndarray:
    """Released entries in units of c (floats)."""
    return np.array([v / u for v, u in zip(values, stat.noise.units)], dtype=float)


def _halfwidths(estimate: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """95% quantile of |draw - estimate| per output (NaN where a draw has no value)."""
    dev = np.abs(draws - estimate)
    return np.nanquantile(dev, 0.95, axis=0) if np.isfinite(dev).any() else np.full(estimate.shape, np.nan)


def postprocess(stat: StatPlan, values: list[int], min_count: int | None) -> dict:
    """Turn revealed noisy integers into the statistic and its uncertainty (free post-processing)."""
    kind = stat.kind
    if kind == "count":
        info = _count_noise(stat)
        value = max(values[0], 0)
        info["dominates"] = info["ci95_halfwidth"] >= max(value, 1)
        return {"kind": "count", "value": value, "noise": info}
    if kind == "histogram":
        info = _count_noise(stat)
        counts = [max(v, 0) for v in values]
        info["dominates"] = info["ci95_halfwidth"] >= max(counts + [1])
        return {"kind": "histogram", "edges": list(stat.edges), "counts": counts, "noise": info}
    if kind == "crosstab":
        nr, nc = stat.shape
        cells = [None if (min_count and v == 0) else max(v, 0) for v in values]
        info = _count_noise(stat)
        info["dominates"] = info["ci95_halfwidth"] >= max([c for c in cells if c is not None] + [1])
        return {"kind": "crosstab", "rows": list(stat.labels[0]), "cols": list(stat.labels[1]),
                "counts": [cells[i * nc:(i + 1) * nc] for i in range(nr)], "min_count": min_count or 0,
                "noise": info}
    if kind == "sum":
        unit = 2.0 ** -stat.terms[1].frac_bits
        info = _count_noise(stat, unit)
        value = math.ldexp(values[0], -stat.terms[1].frac_bits)
        info["dominates"] = info["ci95_halfwidth"] >= abs(value)
        return {"kind": "sum", "value": value, "noise": info}
    vec = _scaled(stat, values)
    # means and variances are cheap to re-evaluate: more draws, so that the interval's own
    # Monte Carlo error does not shorten it (400 draws covered 94.3% +/- 0.5% over 2,000 runs)
    count = SCALAR_BOOTSTRAP_DRAWS if kind in ("mean", "variance") else BOOTSTRAP_DRAWS
    draws = vec + _draws(stat.noise, _rng(stat, values), len(vec), count)
    if kind == "mean":
        return _mean(stat, vec, draws)
    if kind == "variance":
        return _variance(stat, vec, draws)
    if kind == "correlation":
        return _correlation(stat, vec, draws)
    return _regression(stat, vec, draws)


def _derived_noise(stat: StatPlan, estimate, draws: np.ndarray, wide: float) -> dict:
    """Noise info of a derived statistic from bootstrap draws, in the statistic's units.

    ``wide``: an interval wider than this (the statistic's possible range) means the noise
    dominates the statistic.
    """
    info = _share_info(stat.noise)
    est = np.asarray(estimate, dtype=float)
    half = _halfwidths(est, draws)
    sd = np.nanstd(draws, axis=0)
    as_out = _json_floats
    info["scale"] = as_out(sd)
    info["sd"] = as_out(sd)
    info["ci95_halfwidth"] = as_out(half)
    info["dominates"] = bool(np.any(~np.isfinite(half)) or np.any(2 * half > wide))
    return info


def _no_value_noise(stat: StatPlan) -> dict:
    """Noise info of a derived statistic the noise left without a value (e.g. a count below 1)."""
    return {**_share_info(stat.noise), "scale": None, "sd": None, "ci95_halfwidth": None, "dominates": True}


def _json_floats(a):
    """Floats (or nested lists of them) for JSON: NaN and infinities become None."""
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return float(a) if np.isfinite(a) else None
    return [_json_floats(v) for v in a]


def _mean_of(stat: StatPlan, v: np.ndarray):
    """Mean in the column's units from [n, sum r] (vectorised over leading axes); NaN if n < 1."""
    lo, hi = stat.terms[1].column_bounds
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    n = v[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(n >= 1, mid + half * v[..., 1] / np.where(n >= 1, n, 1), np.nan)
    return np.clip(m, lo, hi)


def _mean(stat: StatPlan, vec: np.ndarray, draws: np.ndarray) -> dict:
    lo, hi = stat.terms[1].column_bounds
    value = _mean_of(stat, vec)
    if not np.isfinite(value):
        return {"kind": "mean", "value": None, "noise": _no_value_noise(stat)}
    info = _derived_noise(stat, value, _mean_of(stat, draws), hi - lo)
    return {"kind": "mean", "value": float(value), "noise": info}


def _variance_of(stat: StatPlan, v: np.ndarray):
    """Sample variance in squared column units from [n, sum r, sum r^2]; NaN if n < 2."""
    lo, hi = stat.terms[1].column_bounds
    half = (hi - lo) / 2
    n = v[..., 0]
    ok = n >= 2
    safe = np.where(ok, n, 2)
    var = (v[..., 2] - v[..., 1] ** 2 / safe) / (safe - 1) * half * half
    top = (hi - lo) ** 2 / 4 * safe / (safe - 1)
    return np.where(ok, np.clip(var, 0.0, top), np.nan)


def _variance(stat: StatPlan, vec: np.ndarray, draws: np.ndarray) -> dict:
    lo, hi = stat.terms[1].column_bounds
    value = _variance_of(stat, vec)
    if not np.isfinite(value):
        return {"kind": "variance", "value": None, "noise": _no_value_noise(stat)}
    boot = _variance_of(stat, draws)
    info = _derived_noise(stat, value, boot, (hi - lo) ** 2 / 4)
    # a variance pushed to 0 by the noise is clipped there, which biases it upwards: when that
    # happens to more than a few re-noised draws, the value is the noise's, not the data's
    if value <= 0 or np.mean(boot <= 0) > 0.05:
        info["dominates"] = True
    return {"kind": "variance", "value": float(value), "noise": info}


def _gram(k: int, vec: np.ndarray) -> np.ndarray:
    """Symmetric k x k matrix from its row-major upper triangle."""
    g = np.empty((k, k))
    iu = np.triu_indices(k)
    g[iu] = vec
    g.T[iu] = vec
    return g


def _correlation_of(stat: StatPlan, vec: np.ndarray) -> np.ndarray | None:
    k = len(stat.terms)
    g = _gram(k, vec)
    n = g[0, 0]
    if not n >= 2:
        return None
    s = g[0, 1:]
    cov = (g[1:, 1:] - np.outer(s, s) / n) / (n - 1)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    with np.errstate(over="ignore", invalid="ignore"):  # a variance the noise made ~0
        corr = np.nan_to_num(cov / np.outer(sd, sd), nan=0.0)
    return _nearest_correlation(np.clip(corr, -1.0, 1.0))


def _correlation(stat: StatPlan, vec: np.ndarray, draws: np.ndarray) -> dict:
    d = len(stat.terms) - 1
    corr = _correlation_of(stat, vec)
    if corr is None:
        return {"kind": "correlation", "columns": list(stat.columns), "matrix": [[None] * d for _ in range(d)],
                "noise": _no_value_noise(stat)}
    boot = np.array([c if c is not None else np.full((d, d), np.nan)
                     for c in (_correlation_of(stat, row) for row in draws)])
    info = _derived_noise(stat, corr, boot, 2.0)
    return {"kind": "correlation", "columns": list(stat.columns),
            "matrix": [[float(corr[i, j]) for j in range(d)] for i in range(d)], "noise": info}


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    """Repair a noisy correlation matrix to positive semi-definite with unit diagonal."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    if w.min() >= 0:
        out = (c + c.T) / 2
    else:
        out = v @ np.diag(np.clip(w, 1e-9, None)) @ v.T
        dd = np.sqrt(np.diag(out))
        out = out / np.outer(dd, dd)
    np.fill_diagonal(out, 1.0)
    return np.clip(out, -1.0, 1.0)


def _fit(stat: StatPlan, vecs: np.ndarray, noise_sd: float) -> dict:
    """Ridge/OLS fits from (noisy) Gram vectors of [1, scaled terms..., scaled target].

    ``vecs`` has shape (B, entries): B fits at once (the estimate, or bootstrap draws).
    Returns arrays: beta (B, p), sampling standard errors (B, p), r2 (B,), n (B,), ridge (B,).
    """
    terms = stat.terms
    k = len(terms)
    c = np.empty((len(vecs), k, k))
    iu = np.triu_indices(k)
    c[:, iu[0], iu[1]] = vecs
    c[:, iu[1], iu[0]] = vecs
    # back to the original units: x = mid + half * r for numeric terms, x = r otherwise
    t = np.eye(k)
    halves = np.ones(k)
    for i, term in enumerate(terms):
        if term.kind == "num":
            lo, hi = term.column_bounds
            t[i, 0], t[i, i] = (lo + hi) / 2, (hi - lo) / 2
            halves[i] = t[i, i]
    g = t @ c @ t.T
    y = k - 1
    z = list(range(0 if stat.intercept else 1, k - 1))
    feats = [i for i in z if terms[i].kind != "one"]
    n = c[:, 0, 0]
    # Data-adaptive ridge in the scaled units (in the spirit of AdaSSP, Wang 2018): when the
    # smallest eigenvalue of the noisy centred Gram is not well above the noise level, add the
    # difference. It depends only on released values: post-processing, no budget.
    lam = np.zeros(len(vecs))
    if feats:
        sf = c[:, feats][:, :, feats]
        if stat.intercept:
            s0 = c[:, 0, feats]
            sf = sf - s0[:, :, None] * s0[:, None, :] / np.where(n > 0, n, np.inf)[:, None, None]
        lam_min = np.linalg.eigvalsh(sf)[:, 0]
        lam = np.maximum(0.0, RIDGE_TAU * noise_sd * math.sqrt(len(feats)) - lam_min)
    penalty = np.array([0.0 if terms[i].kind == "one" else halves[i] ** 2 for i in z])
    user = np.array([0.0 if terms[i].kind == "one" else float(stat.ridge) for i in z])
    gzz = g[:, z][:, :, z]
    b = g[:, z, y]

    def solve(extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = gzz + np.eye(len(z)) * (user + extra[:, None] * penalty)[:, None, :]
        w, v = np.linalg.eigh(a)
        floor = 1e-10 * np.maximum(np.abs(w).max(axis=1), 1.0)
        w = np.maximum(w, floor[:, None])  # positive definite repair (a no-op where it already is)
        a_inv = (v / w[:, None, :]) @ np.swapaxes(v, 1, 2)
        return a_inv, np.einsum("bij,bj->bi", a_inv, b)

    a_inv, beta = solve(lam)
    # what the adaptive ridge did: the fit without it, minus the fit with it (the plug-in
    # estimate of the ridge's shrinkage bias; zero where the ridge is off)
    shrink = np.where((lam > 0)[:, None], solve(np.zeros_like(lam))[1] - beta, 0.0)
    rss = g[:, y, y] - 2 * np.einsum("bi,bi->b", beta, b) + np.einsum("bi,bij,bj->b", beta, gzz, beta)
    dof = np.maximum(n - len(z), 1.0)
    sigma2 = np.maximum(rss / dof, 0.0)
    cov_diag = np.einsum("bij,bjk,bki->bi", a_inv, gzz, a_inv) * sigma2[:, None]
    tss = g[:, y, y] - (g[:, 0, y] ** 2 / np.where(n > 0, n, np.inf) if stat.intercept else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a residual sum of squares at or below zero is the noise's, not a perfect fit
        r2 = np.where((tss > 0) & (rss > 0), np.clip(1 - rss / tss, 0.0, 1.0), np.nan)
    return {"beta": beta, "se": np.sqrt(np.clip(cov_diag, 0.0, None)), "r2": r2, "n": n, "ridge": lam,
            "shrink": shrink}


def _regression(stat: StatPlan, vec: np.ndarray, draws: np.ndarray) -> dict:
    sd = stat.noise.sd
    fit = {key: v[0] for key, v in _fit(stat, vec[None, :], sd).items()}
    boot_fit = _fit(stat, draws, sd)
    boot = boot_fit["beta"]
    z_terms = [t for t in stat.terms[:-1] if stat.intercept or t.kind != "one"]
    names = ["intercept" if t.kind == "one" else t.name for t in z_terms]
    # the widest plausible coefficient: the target's range over the term's range
    ylo, yhi = stat.terms[-1].column_bounds
    wide = np.array([np.inf if t.kind == "one" else
                     (yhi - ylo) / max(t.column_bounds[1] - t.column_bounds[0], 1e-300) if t.kind == "num"
                     else (yhi - ylo) for t in z_terms]) * 2
    # an intercept: the target's largest size plus every slope's widest effect
    slope_reach = sum(w * max(abs(t.column_bounds[0]), abs(t.column_bounds[1])) if t.kind == "num" else w
                      for t, w in zip(z_terms, wide / 2) if t.kind != "one")
    plausible = np.where(np.isfinite(wide), wide, 2 * (max(abs(ylo), abs(yhi)) + slope_reach))
    info = _share_info(stat.noise)
    # The spread of re-noised fits around this fit, plus, where the adaptive ridge is on, the
    # shrinkage it caused (the fit without it minus the fit with it): the ridge trades noise
    # for bias, and an interval that left the bias out would not cover.
    # The shrinkage is held to the widest plausible coefficient: where the ridge is strong the
    # fit without it is near-singular and the difference would be unbounded (a plug-in bias at
    # the shrunk fit instead under-covers there: tests/unit/test_dp_ridge_coverage.py).
    bias = np.maximum(np.abs(boot.mean(axis=0) - fit["beta"]), np.minimum(np.abs(fit["shrink"]), plausible))
    noise_half = _halfwidths(fit["beta"], boot) + bias
    noise_sd = np.sqrt(np.var(boot, axis=0) + bias ** 2)
    info["scale"] = _json_floats(noise_sd)
    info["sd"] = _json_floats(noise_sd)
    info["ci95_halfwidth"] = _json_floats(noise_half)
    info["coefficient_noise_sd"] = _json_floats(noise_sd)
    info["sampling_std_errors"] = _json_floats(fit["se"])
    info["dominates"] = bool(np.any(2 * noise_half > wide))
    info["adaptive_ridge"] = float(fit["ridge"])
    se = np.sqrt(fit["se"] ** 2 + noise_sd ** 2)
    half = np.sqrt((_Z95 * fit["se"]) ** 2 + noise_half ** 2)
    conf = _json_floats(np.column_stack([fit["beta"] - half, fit["beta"] + half]))
    r2 = float(fit["r2"]) if np.isfinite(fit["r2"]) else None
    if r2 is not None:  # the noise moves R^2 too: its 95% half-width from the same draws
        info["r_squared_ci95_halfwidth"] = _json_floats(_halfwidths(np.asarray(r2), boot_fit["r2"]))
    return {"kind": "regression", "terms": names, "coefficients": _json_floats(fit["beta"]),
            "std_errors": _json_floats(se), "conf_int": conf, "n": max(int(round(float(fit["n"]))), 0),
            "r_squared": r2, "ridge": float(stat.ridge), "noise": info}
