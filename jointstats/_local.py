"""The local step: each owner turns its own rows into exact integer partial aggregates.

This runs in plain numpy at memory speed; only the partials produced here are ever
secret-shared. Reals are put on the plan's integer grid (``round(x * 2**f)``) so that
every sum and product is an exact integer.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .plan import Plan, StatPlan

# Exact integer Gram matrices through float64 BLAS: every grid value v (|v| <= 2**30) is
# an integer held exactly in float64; split it into limbs v = hi * 2**15 + lo with
# |hi| <= 2**15 and 0 <= lo < 2**15. Every product of limbs is below 2**30 in magnitude,
# so a block of at most 2**22 rows sums to below 2**52 and one float64 matmul of the
# limb matrix [hi | lo] is exact whatever order BLAS adds in.
_LIMB = 15
_BLOCK_ROWS = 1 << 22


def exact_gram(values: np.ndarray) -> list[list[int]]:
    """Exact ``values.T @ values`` (as Python ints) for integer-valued |entries| <= 2**30."""
    k = values.shape[1]
    total = [[0] * k for _ in range(k)]
    for start in range(0, values.shape[0], _BLOCK_ROWS):
        block = np.asarray(values[start:start + _BLOCK_ROWS], dtype=np.float64)
        hi = np.floor(block * (1.0 / (1 << _LIMB)))
        limbs = np.concatenate([hi, block - hi * (1 << _LIMB)], axis=1)
        g = limbs.T @ limbs
        for i in range(k):
            for j in range(i, k):
                hh, hl, lh, ll = int(g[i, j]), int(g[i, k + j]), int(g[k + i, j]), int(g[k + i, k + j])
                total[i][j] += (hh << (2 * _LIMB)) + ((hl + lh) << _LIMB) + ll
    for i in range(k):
        for j in range(i):
            total[i][j] = total[j][i]
    return total


def _design(stat: StatPlan, chunk) -> np.ndarray:
    """The design matrix (grid values as exact float64 integers) over the chunk's complete rows."""
    n = chunk.n_rows
    mask = np.ones(n, dtype=bool)
    for name in stat.columns:
        if name in chunk.numeric:
            mask &= ~np.isnan(chunk.numeric[name])
        else:
            mask &= chunk.codes[name] >= 0
    full = bool(mask.all())
    rows = n if full else int(mask.sum())
    out = np.empty((rows, len(stat.terms)), dtype=np.float64)
    for j, term in enumerate(stat.terms):
        if term.kind == "one":
            out[:, j] = 1.0
        elif term.kind == "num":
            x = chunk.numeric[term.column]
            np.rint(np.ldexp(x if full else x[mask], term.frac_bits), out=out[:, j])
        else:
            codes = chunk.codes[term.column]
            out[:, j] = (codes if full else codes[mask]) == term.level
    return out


def _zero_partial(stat: StatPlan) -> list[int]:
    return [0] * stat.partial_size


def _chunk_partial(stat: StatPlan, chunk) -> list[int]:
    """One chunk's contribution to ``stat``'s partial vector."""
    if stat.kind == "count":
        if stat.columns:
            col = stat.columns[0]
            if col in chunk.numeric:
                return [int(np.count_nonzero(~np.isnan(chunk.numeric[col])))]
            return [int(np.count_nonzero(chunk.codes[col] >= 0))]
        return [int(chunk.n_rows)]
    if stat.kind == "crosstab":
        r = chunk.codes[stat.columns[0]]
        c = chunk.codes[stat.columns[1]]
        ok = (r >= 0) & (c >= 0)
        nr, nc = stat.shape
        cells = np.bincount(r[ok].astype(np.int64) * nc + c[ok], minlength=nr * nc)
        return [int(v) for v in cells]
    if stat.kind == "histogram":
        x = chunk.numeric[stat.columns[0]]
        x = x[~np.isnan(x)]
        counts, _ = np.histogram(x, bins=np.asarray(stat.edges, dtype=np.float64))
        return [int(v) for v in counts]
    gram = exact_gram(_design(stat, chunk))
    k = len(stat.terms)
    return [gram[i][j] for i in range(k) for j in range(i, k)]


def compute_partials(plan: Plan, chunks: Iterable) -> dict[str, list[int]]:
    """Stream the owner's chunks once and return each statistic's exact partial vector."""
    totals = {stat.name: _zero_partial(stat) for stat in plan.statistics}
    rows = 0
    for chunk in chunks:
        rows += chunk.n_rows
        for stat in plan.statistics:
            part = _chunk_partial(stat, chunk)
            acc = totals[stat.name]
            for i, v in enumerate(part):
                acc[i] += v
    if rows > plan.max_rows_per_party:
        from .errors import PolicyError
        raise PolicyError(f"has {rows} rows, more than the plan's limit of {plan.max_rows_per_party} per party")
    return totals


def gram_from_upper(upper: list, k: int) -> list[list]:
    """Rebuild a symmetric k x k matrix from its row-major upper triangle."""
    out = [[None] * k for _ in range(k)]
    pos = 0
    for i in range(k):
        for j in range(i, k):
            out[i][j] = out[j][i] = upper[pos]
            pos += 1
    return out
