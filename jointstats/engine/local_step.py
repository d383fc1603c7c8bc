"""The local step: each owner turns its own rows into exact integer partial aggregates.

This runs in plain numpy at memory speed; only the partials produced here are ever
secret-shared. Reals are put on the plan's integer grid (``round(x * 2**f)``) so that
every sum and product is an exact integer.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from jointstats.plan.sealed import Plan, StatPlan, Term

# Exact integer Gram matrices through float64 BLAS: every grid value v (|v| <= 2**30) is
# an integer held exactly in float64. A term whose values are small (|v| <= 2**15: the
# constant, indicators, small integers) is one limb; any other is split into two limbs
# v = hi * 2**15 + lo with |hi| <= 2**15 and 0 <= lo < 2**15. Every product of two limbs
# is at most 2**30 in magnitude, so a block of 2**15 rows sums to at most 2**45: one float64
# matmul of the block's limb matrix is exact whatever order BLAS adds in, and the blocks
# are summed in int64 (at most 2**61 for the 2**31 rows a party may have).
_LIMB = 15
_BLOCK_ROWS = 1 << 15  # also keeps the limb buffer (limbs x rows float64) in the CPU cache
_GRAM_KINDS = ("sum", "mean", "variance", "correlation", "regression")


def _limbs_of(term: Term) -> tuple[int, ...]:
    """The shifts of ``term``'s limbs: (0,) for a small term, (15, 0) for a split one."""
    return (0,) if term.bound <= (1 << _LIMB) else (_LIMB, 0)


def _grid_values(col: np.ndarray, term: Term, out: np.ndarray) -> None:
    """``out = round((col - offset) * multiplier)``, within the term's grid bounds.

    Exact mode: offset 0 and multiplier 2**frac_bits (a power of two: no rounding of the
    product). DP mode: the column centred at its public midpoint and scaled by its public
    half-range onto [-2**30, 2**30]; the clip keeps float rounding from ever leaving it.
    """
    if term.offset:
        np.subtract(col, term.offset, out=out)
        np.multiply(out, term.multiplier, out=out)
    else:
        np.multiply(col, term.multiplier, out=out)
    np.rint(out, out=out)
    if term.mult:
        np.clip(out, term.grid_lo, term.grid_hi, out=out)


def _fill_limbs(out: np.ndarray, terms: list[Term], columns: list[np.ndarray | None]) -> np.ndarray:
    """Write the limbs of the design into ``out``, one row per limb (contiguous writes)."""
    scale, inv_scale = float(1 << _LIMB), 1.0 / (1 << _LIMB)
    pos = 0
    for term, col in zip(terms, columns):
        shift = _limbs_of(term)
        if term.kind == "one":
            out[pos] = 1.0
        elif term.kind == "ind":
            np.equal(col, term.level, out=out[pos], casting="unsafe")
        elif len(shift) == 1:
            _grid_values(col, term, out[pos])
        else:
            hi, lo = out[pos], out[pos + 1]
            _grid_values(col, term, lo)  # the grid value v, exact
            np.multiply(lo, inv_scale, out=hi)
            np.floor(hi, out=hi)
            lo -= hi * scale
        pos += len(shift)
    return out


def exact_gram(terms: list[Term], columns: list[np.ndarray | None]) -> list[list[int]]:
    """Exact Gram matrix (Python ints) of the terms' grid values over the given rows.

    ``columns[i]`` holds term i's raw column (floats for numeric terms, level codes for
    indicators, None for the constant), without missing values.
    """
    k = len(terms)
    rows = next((len(c) for c in columns if c is not None), 0)
    owner = [(i, shift) for i, t in enumerate(terms) for shift in _limbs_of(t)]
    acc = np.zeros((len(owner), len(owner)), dtype=np.int64)
    buffer = np.empty((len(owner), min(rows, _BLOCK_ROWS)))  # reused: no page faults per block
    for start in range(0, rows, _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, rows)
        out = buffer if stop - start == buffer.shape[1] else np.empty((len(owner), stop - start))
        limbs = _fill_limbs(out, terms, [None if c is None else c[start:stop] for c in columns])
        acc += (limbs @ limbs.T).astype(np.int64)
    total = [[0] * k for _ in range(k)]
    for a, (i, si) in enumerate(owner):
        for b, (j, sj) in enumerate(owner):
            if i <= j:
                total[i][j] += int(acc[a, b]) << (si + sj)
    for i in range(k):
        for j in range(i):
            total[i][j] = total[j][i]
    return total


def _complete_mask(columns: tuple[str, ...], chunk) -> np.ndarray | None:
    """Rows of the chunk with every one of ``columns`` present; None if that is all rows."""
    mask = None
    for name in columns:
        present = ~np.isnan(chunk.numeric[name]) if name in chunk.numeric else chunk.codes[name] >= 0
        if not present.all():
            mask = present if mask is None else mask & present
    return mask


def _term_column(term: Term, chunk, mask: np.ndarray | None):
    if term.kind == "one":
        return None
    col = chunk.numeric[term.column] if term.kind == "num" else chunk.codes[term.column]
    return col if mask is None else col[mask]


def _gram_partials(stats: list[StatPlan], chunk) -> dict[str, list[int]]:
    """Upper-triangle Gram partials of the Gram statistics over one chunk.

    Statistics that leave out the same rows (all of them, when the chunk has no missing
    values) share one design over the union of their terms and one exact Gram.
    """
    groups: dict[object, list[StatPlan]] = {}
    masks: dict[object, np.ndarray | None] = {}
    for stat in stats:
        mask = _complete_mask(stat.columns, chunk)
        key = None if mask is None else tuple(sorted(set(stat.columns)))
        masks[key] = mask
        groups.setdefault(key, []).append(stat)
    out = {}
    for key, members in groups.items():
        union = list(dict.fromkeys(t for stat in members for t in stat.terms))
        mask = masks[key]
        gram = exact_gram(union, [_term_column(t, chunk, mask) for t in union])
        for stat in members:
            pos = [union.index(t) for t in stat.terms]
            k = len(pos)
            out[stat.name] = [gram[pos[i]][pos[j]] for i in range(k) for j in range(i, k)]
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
    return _gram_partials([stat], chunk)[stat.name]


def _first_rows(chunk, n: int):
    """The first ``n`` rows of an encoded chunk."""
    import dataclasses
    return dataclasses.replace(chunk, n_rows=n, numeric={k: v[:n] for k, v in chunk.numeric.items()},
                               codes={k: v[:n] for k, v in chunk.codes.items()})


def compute_partials(plan: Plan, chunks: Iterable) -> dict[str, list[int]]:
    """Stream the owner's chunks once and return each statistic's exact partial vector.

    The plan's numbers are sized for at most ``plan.max_rows_per_party`` rows (2**31). A
    party with more refuses in exact mode (PolicyError). In DP mode a refusal that depends
    on the data would bypass the noise: the party uses its first ``max_rows_per_party``
    rows, leaves out the rest and says how many only in its own log.
    """
    totals = {stat.name: _zero_partial(stat) for stat in plan.statistics}
    gram_stats = [stat for stat in plan.statistics if stat.kind in _GRAM_KINDS]
    other_stats = [stat for stat in plan.statistics if stat.kind not in _GRAM_KINDS]
    limit = plan.max_rows_per_party
    rows = 0
    for chunk in chunks:
        rows += chunk.n_rows
        if plan.mode == "dp" and rows > limit:  # only the first `limit` rows are used
            keep = chunk.n_rows - (rows - limit)
            if keep <= 0:
                continue
            chunk = _first_rows(chunk, keep)
        parts = _gram_partials(gram_stats, chunk) if gram_stats else {}
        for stat in other_stats:
            parts[stat.name] = _chunk_partial(stat, chunk)
        for name, part in parts.items():
            acc = totals[name]
            for i, v in enumerate(part):
                acc[i] += v
    if rows > limit:
        if plan.mode == "dp":  # the owner's own log only
            import logging
            logging.getLogger("jointstats.local").warning(
                "%d rows, more than the plan's limit of %d per party: the last %d rows are left out",
                rows, limit, rows - limit)
            return totals
        from jointstats.errors import PolicyError
        raise PolicyError(f"has {rows} rows, more than the plan's limit of {limit} per party")
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
