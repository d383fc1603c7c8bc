"""Shared data and helpers of the engine (pushdown) tests: every statistic kind, exact and DP
plans, data with missing values, out-of-bounds values, unknown levels and misfits."""
from __future__ import annotations

import numpy as np
import pandas as pd

from jointstats.engine.local_step import compute_partials
from jointstats.engine.sources import open_source
from jointstats.engine.output import add_noise_plans
from jointstats.plan.sealed import make_plan
from jointstats.plan.spec import parse_spec

STATS = """
statistics:
  n:    {kind: count}
  nv:   {kind: count, column: visits}
  s:    {kind: sum, column: big}
  m:    {kind: mean, column: age}
  v:    {kind: variance, column: tiny}
  c:    {kind: correlation, columns: [age, tiny, visits, big]}
  x:    {kind: crosstab, rows: smoker, cols: region}
  h:    {kind: histogram, column: age, bins: [-100, -0.5, 0, 50, 100]}
  r:    {kind: regression, target: tiny, features: [age, visits, big, smoker, region]}
  r2:   {kind: regression, target: age, features: [visits, region], ridge: 0.5}
"""
SCHEMA = """
dataset: cohort
schema:
  age:    {type: real, bounds: [-100, 100]}
  tiny:   {type: real, bounds: [0, 1]}
  visits: {type: integer, bounds: [0, 50]}
  big:    {type: integer, bounds: [-1000000, 1000000]}
  smoker: {type: categorical, levels: ["no", "yes"]}
  region: {type: categorical, levels: [north, south, east, west, "NA", 'o''b\\x']}
"""
EXACT = parse_spec("name: t\n" + SCHEMA + STATS)
DP = parse_spec("name: t\n" + SCHEMA + "privacy: {epsilon: 1.0, delta: 1.0e-6}\n" + STATS)
DP_PURE = parse_spec("name: t\n" + SCHEMA + "privacy: {epsilon: 1.0, delta: 0}\n" + STATS)


def plan_of(spec):
    return add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))


def frame(n: int, seed: int, misfits: bool) -> pd.DataFrame:
    """Typed data: missing values, values out of bounds (clipped), exact grid ties (x.5 after
    scaling), and with ``misfits`` unknown levels, case variants, non-integral integers and
    infinities."""
    rng = np.random.default_rng(seed)
    age = rng.choice([-100.0, 100.0, 0.0, 33.3, -0.5, 150.0, -1e9], n) + rng.uniform(-1, 1, n) * (rng.random(n) < 0.5)
    age[rng.random(n) < 0.1] = np.nan
    tiny = rng.uniform(-0.2, 1.2, n)
    tiny[:8] = [0.5, 0.25, 2.0 ** -31, 3 * 2.0 ** -32, 1.0, 0.0, -0.0, 1 - 2.0 ** -53]
    tiny[rng.random(n) < 0.05] = np.nan
    visits = rng.integers(-3, 60, n).astype(float)
    visits[rng.random(n) < 0.05] = np.nan
    big = rng.choice([-1e6, 1e6, 12345.0, 3e6], n) * (rng.random(n) < 0.7)
    smoker = rng.choice(["no", "yes", None], n, p=[0.6, 0.35, 0.05]).astype(object)
    region = rng.choice(["north", "south", "east", "west", "NA", "o'b\\x", None], n).astype(object)
    if misfits:
        visits[rng.random(n) < 0.03] = 2.5
        age[rng.random(n) < 0.02] = np.inf
        smoker[rng.random(n) < 0.05] = "maybe"
        smoker[rng.random(n) < 0.05] = " YES "
        region[rng.random(n) < 0.05] = "North"
        region[rng.random(n) < 0.02] = "mars"
        region[rng.random(n) < 0.02] = "O'B\\X"  # a case variant of a level with a quote and a backslash
        region[rng.random(n) < 0.02] = "x' OR '1'='1"
    return pd.DataFrame({"age": age, "tiny": tiny, "visits": visits, "big": big,
                         "smoker": smoker, "region": region, "extra": rng.random(n)})


def numpy_partials(source: str, base, spec, options=None, strict=None):
    plan = plan_of(spec)
    src = open_source(source, base, options)
    strict = plan.mode != "dp" if strict is None else strict
    chunks = src.iter_chunks(list(spec.schema), "p", chunk_rows=700, strict=strict)
    return compute_partials(plan, chunks)


def pushed_partials(source: str, base, spec, options=None, strict=None):
    plan = plan_of(spec)
    src = open_source(source, base, options)
    strict = plan.mode != "dp" if strict is None else strict
    try:
        out = src.aggregate(plan, list(spec.schema), "p", strict=strict)
    finally:
        src.close()
    assert out is not None, "the pushdown declined"
    return out
