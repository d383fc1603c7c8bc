"""Every DP mechanism's sensitivity, checked on neighbouring datasets (add or remove one row).

For pure DP the privacy loss of a release vector with Laplace scales b_i is
sum_i |f_i(D) - f_i(D')| / b_i; it must not exceed the statistic's epsilon share. For zCDP
the loss is sum_i (f_i(D) - f_i(D'))^2 / (2 sigma_i^2) and must not exceed its rho share.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("jointstats.noise.sampler")
from jointstats.engine import dp as _dp  # noqa: E402
from jointstats.engine.local_step import compute_partials  # noqa: E402
from jointstats.plan.sealed import make_plan  # noqa: E402
from jointstats.plan.spec import parse_spec  # noqa: E402
from tests.common import cohort_schema  # noqa: E402

SPEC = """
dataset: d
""" + cohort_schema("age", "bmi", "visits", "smoker", "region") + """privacy: {epsilon: 2.0, delta: %s}
statistics:
  n:    {kind: count}
  s:    {kind: sum, column: visits}
  m:    {kind: mean, column: age, weight: 2}
  v:    {kind: variance, column: bmi}
  c:    {kind: correlation, columns: [age, bmi, visits]}
  x:    {kind: crosstab, rows: smoker, cols: region, min_count: 0}
  h:    {kind: histogram, column: age, bins: [18, 40, 60, 100]}
  r:    {kind: regression, target: bmi, features: [age, visits, smoker, region]}
"""


@dataclass
class Chunk:
    n_rows: int
    numeric: dict
    codes: dict


def frame(rng, n):
    return Chunk(n, {"age": rng.uniform(18, 100, n).round(1), "bmi": rng.uniform(10, 60, n).round(1),
                     "visits": rng.integers(0, 51, n).astype(float)},
                 {"smoker": rng.integers(0, 2, n), "region": rng.integers(0, 4, n)})


def extreme_row(rng):
    pick = lambda lo, hi: float(rng.choice([lo, hi, rng.uniform(lo, hi)]))  # noqa: E731
    return Chunk(1, {"age": np.array([pick(18, 100)]), "bmi": np.array([pick(10, 60)]),
                     "visits": np.array([float(rng.choice([0, 50]))])},
                 {"smoker": np.array([rng.integers(0, 2)]), "region": np.array([rng.integers(0, 4)])})


@pytest.mark.parametrize("delta", ["0", "1.0e-6"])
def test_privacy_loss_of_every_mechanism_on_neighbours(delta):
    spec = parse_spec(SPEC % delta)
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    rng = np.random.default_rng(3)
    base = frame(rng, 200)
    worst = {s.name: 0.0 for s in plan.statistics}
    for _ in range(40):
        row = extreme_row(rng)
        p0 = compute_partials(plan, [base])
        p1 = compute_partials(plan, [base, row])
        for stat in plan.statistics:
            f0 = _dp.release_clear(stat, p0[stat.name])
            f1 = _dp.release_clear(stat, p1[stat.name])
            diff = [abs(a - b) for a, b in zip(f0, f1)]
            units = stat.noise.units
            assert all(dv <= u for dv, u in zip(diff, units)), stat.name
            # the joint bound in units of c = diff / unit
            c = [Fraction(dv, u) for dv, u in zip(diff, units)]
            assert sum(c) <= stat.noise.bound and sum(x * x for x in c) <= stat.noise.bound, stat.name
            noise = stat.noise
            if noise.mechanism == "discrete_laplace":
                loss = sum(Fraction(dv) / b for dv, b in zip(diff, noise.scales))
                assert loss <= noise.epsilon, (stat.name, float(loss), float(noise.epsilon))
            else:
                loss = sum(Fraction(dv * dv) / (2 * s2) for dv, s2 in zip(diff, noise.scales))
                assert loss <= noise.rho, (stat.name, float(loss), float(noise.rho))
            worst[stat.name] = max(worst[stat.name], float(loss))
    # the calibration is tight enough to be useful: some neighbour uses a good part of the budget
    for stat in plan.statistics:
        budget = float(stat.noise.epsilon if delta == "0" else stat.noise.rho)
        assert worst[stat.name] > 0.05 * budget, stat.name


def test_budget_split_by_weight():
    spec = parse_spec(SPEC % "0")
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b"]))
    eps = {s.name: s.noise.epsilon for s in plan.statistics}
    assert sum(eps.values()) == Fraction(2)
    assert eps["m"] == 2 * eps["n"]
    assert plan.privacy["mechanism"] == "discrete_laplace"
