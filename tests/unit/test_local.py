"""The local step's exact partials against a Python-integer reference.

The fast path builds one limb design per group of statistics that leave out the same rows
and sums it with float64 BLAS; the reference rounds every value onto the plan's grid as a
Python int and sums the products one by one. They must agree exactly, with missing values,
at the extremes of the grid and across chunks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from jointstats.engine import local_step as _local
from jointstats.plan.sealed import make_plan
from jointstats.plan.spec import parse_spec

SPEC = """
dataset: d
schema:
  age:    {type: real, bounds: [-100, 100]}
  tiny:   {type: real, bounds: [0, 1]}
  visits: {type: integer, bounds: [0, 50]}
  big:    {type: integer, bounds: [-1000000, 1000000]}
  smoker: {type: categorical, levels: [no, yes]}
  region: {type: categorical, levels: [north, south, east, west]}
statistics:
  n:    {kind: count}
  s:    {kind: sum, column: big}
  m:    {kind: mean, column: age}
  v:    {kind: variance, column: tiny}
  c:    {kind: correlation, columns: [age, tiny, visits, big]}
  x:    {kind: crosstab, rows: smoker, cols: region}
  h:    {kind: histogram, column: age, bins: [-100, 0, 50, 100]}
  r:    {kind: regression, target: tiny, features: [age, visits, big, smoker, region]}
  r2:   {kind: regression, target: age, features: [visits, region]}
"""


@dataclass
class Chunk:
    n_rows: int
    numeric: dict
    codes: dict


def make_chunk(rng, n: int, missing: float) -> Chunk:
    numeric = {
        # values at both ends of the bounds reach the largest grid magnitude (2**30)
        "age": rng.choice([-100.0, 100.0, 0.0, 33.3], n) + rng.uniform(-1, 1, n) * (rng.random(n) < 0.5),
        "tiny": rng.uniform(0, 1, n),
        "visits": rng.integers(0, 51, n).astype(float),
        "big": rng.choice([-1e6, 1e6], n) * (rng.random(n) < 0.7),
    }
    numeric["age"] = np.clip(numeric["age"], -100, 100)
    codes = {"smoker": rng.integers(0, 2, n).astype(np.int16), "region": rng.integers(0, 4, n).astype(np.int16)}
    if missing:
        for col in numeric.values():
            col[rng.random(n) < missing] = np.nan
        for col in codes.values():
            col[rng.random(n) < missing] = -1
    return Chunk(n, numeric, codes)


def reference(stat, chunks) -> list[int]:
    """Exact partial of one Gram statistic, by Python-int arithmetic row by row."""
    k = len(stat.terms)
    total = [[0] * k for _ in range(k)]
    for chunk in chunks:
        for row in range(chunk.n_rows):
            values = []
            for term in stat.terms:
                if term.kind == "one":
                    values.append(1)
                    continue
                if term.kind == "num":
                    x = chunk.numeric[term.column][row]
                    values.append(None if np.isnan(x) else int(np.rint(x * 2.0 ** term.frac_bits)))
                else:
                    c = int(chunk.codes[term.column][row])
                    values.append(None if c < 0 else int(c == term.level))
            present = all(
                (not np.isnan(chunk.numeric[c][row])) if c in chunk.numeric else chunk.codes[c][row] >= 0
                for c in stat.columns)
            if not present:
                continue
            for i in range(k):
                for j in range(k):
                    total[i][j] += values[i] * values[j]
    return [total[i][j] for i in range(k) for j in range(i, k)]


@pytest.mark.parametrize("missing", [0.0, 0.1])
def test_gram_partials_match_python_integers(missing):
    spec = parse_spec(SPEC)
    plan = make_plan(spec, ["a", "b"])
    rng = np.random.default_rng(7)
    chunks = [make_chunk(rng, 700, missing), make_chunk(rng, 300, missing)]
    partials = _local.compute_partials(plan, chunks)
    for stat in plan.statistics:
        if stat.kind in ("sum", "mean", "variance", "correlation", "regression"):
            assert partials[stat.name] == reference(stat, chunks), stat.name
    assert partials["n"] == [1000]
    cells = np.zeros(8, dtype=int)
    for ch in chunks:
        ok = (ch.codes["smoker"] >= 0) & (ch.codes["region"] >= 0)
        np.add.at(cells, ch.codes["smoker"][ok] * 4 + ch.codes["region"][ok], 1)
    assert partials["x"] == cells.tolist()


def test_largest_grid_values_stay_exact_in_float64():
    # every row next to the grid's largest magnitude, with an odd grid value: each product
    # needs 60 bits and float64 holds 53, so only the limb split keeps the sums exact
    spec = parse_spec(SPEC)
    plan = make_plan(spec, ["a"])
    n = 70_000  # more than two BLAS blocks of 2**15 rows, and a partial one
    age_f = next(t for t in plan.statistics[2].terms if t.column == "age").frac_bits
    odd = 100.0 - 2.0 ** -age_f
    chunk = Chunk(n, {"age": np.full(n, odd), "tiny": np.full(n, 1 - 2.0 ** -30), "visits": np.full(n, 50.0),
                      "big": np.full(n, 999999.0)},
                  {"smoker": np.ones(n, dtype=np.int16), "region": np.full(n, 3, dtype=np.int16)})
    partials = _local.compute_partials(plan, [chunk])
    stat = next(s for s in plan.statistics if s.name == "r")
    one_row = Chunk(1, {k: v[:1] for k, v in chunk.numeric.items()}, {k: v[:1] for k, v in chunk.codes.items()})
    assert partials["r"] == [n * v for v in reference(stat, [one_row])]
    age = next(t for t in stat.terms if t.column == "age")
    assert partials["m"][2] == n * (100 * 2 ** age.frac_bits - 1) ** 2


def test_empty_chunk_gives_zero_partials():
    spec = parse_spec(SPEC)
    plan = make_plan(spec, ["a"])
    rng = np.random.default_rng(1)
    empty = make_chunk(rng, 0, 0.0)
    partials = _local.compute_partials(plan, [empty])
    assert all(v == 0 for part in partials.values() for v in part)


def test_row_limit_exact_refuses_dp_uses_the_first_rows(caplog):
    """Over the plan's row limit, exact mode refuses; DP mode never refuses on the data (that
    would be an un-noised bit): it uses the first max_rows_per_party rows, logging only locally."""
    import dataclasses

    from jointstats.errors import PolicyError
    plan = dataclasses.replace(make_plan(parse_spec(SPEC), ["a"]), max_rows_per_party=25)
    rng = np.random.default_rng(5)
    chunks = [make_chunk(rng, 10, 0.1) for _ in range(4)]  # 40 rows
    with pytest.raises(PolicyError, match="has 40 rows, more than the plan's limit of 25"):
        _local.compute_partials(plan, chunks)
    dp = dataclasses.replace(plan, mode="dp")
    with caplog.at_level("WARNING", logger="jointstats.local"):
        got = _local.compute_partials(dp, chunks)
    first = chunks[:2] + [Chunk(5, {k: v[:5] for k, v in chunks[2].numeric.items()},
                                {k: v[:5] for k, v in chunks[2].codes.items()})]
    assert got == _local.compute_partials(plan, first)
    assert got["n"] == [25]
    assert "the last 15 rows are left out" in caplog.text
    assert _local.compute_partials(dp, chunks[:2]) == _local.compute_partials(plan, chunks[:2])
