"""The DP mechanisms' post-processing, checked offline against pooled numpy answers.

The released vector is the engine's own (``_dp.release_clear`` on ``compute_partials``); the
noise added here is drawn from the plan's noise law (rounded continuous draws: close enough
for checking estimators and intervals; the samplers inside the MPC are tested elsewhere).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jointstats.engine import dp as _dp
from jointstats.engine.local_step import compute_partials
from jointstats.plan.sealed import make_plan
from jointstats.plan.spec import parse_spec

SPEC = """
name: t
dataset: d
schema:
  age:    {type: real, bounds: [18, 100]}
  bmi:    {type: real, bounds: [10, 60]}
  sbp:    {type: real, bounds: [80, 220]}
  smoker: {type: categorical, levels: ["no", "yes"]}
  region: {type: categorical, levels: [north, south, east, west]}
privacy: {epsilon: %s, delta: %s}
statistics:
  mean_age: {kind: mean, column: age}
  var_bmi:  {kind: variance, column: bmi}
  corr:     {kind: correlation, columns: [age, bmi, sbp]}
  ols:      {kind: regression, target: sbp, features: [age, bmi, smoker, region]}
  ridge:    {kind: regression, target: sbp, features: [age, bmi], ridge: 2.0}
  origin:   {kind: regression, target: sbp, features: [age, bmi], intercept: false}
"""
BETA = np.array([78.0, 0.55, 0.9, 5.0, 2.0, 0.0, 0.0])  # the data-generating coefficients of ols


@dataclass
class Chunk:
    n_rows: int
    numeric: dict
    codes: dict


def cohort(rng, n):
    age = rng.uniform(18, 90, n)
    bmi = np.clip(rng.normal(27, 5, n), 10, 60)
    smoker = rng.integers(0, 2, n)
    region = rng.integers(0, 4, n)
    x = np.column_stack([np.ones(n), age, bmi, smoker] + [region == r for r in (1, 2, 3)]).astype(float)
    sbp = np.clip(x @ BETA + rng.normal(0, 12, n), 80, 220)
    return Chunk(n, {"age": age, "bmi": bmi, "sbp": sbp},
                 {"smoker": smoker.astype(np.int16), "region": region.astype(np.int16)}), x


def plan_for(eps="1.0", delta="1.0e-6"):
    spec = parse_spec(SPEC % (eps, delta))
    return _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))


def noisy(stat, values, rng):
    out = []
    for v, s in zip(values, stat.noise.scales):
        e = rng.laplace(0, float(s)) if stat.noise.mechanism == "discrete_laplace" else \
            rng.standard_normal() * math.sqrt(float(s))
        out.append(v + int(round(e)))
    return out


@pytest.mark.parametrize("delta", ["0", "1.0e-6"])
def test_without_noise_every_estimate_is_the_pooled_answer(delta):
    plan = plan_for("8", delta)  # a small noise level: the adaptive ridge stays off
    chunk, x = cohort(np.random.default_rng(1), 3000)
    partials = compute_partials(plan, [chunk])
    got = {s.name: _dp.postprocess(s, _dp.release_clear(s, partials[s.name]), None) for s in plan.statistics}
    assert got["mean_age"]["value"] == pytest.approx(chunk.numeric["age"].mean(), rel=1e-8)
    assert got["var_bmi"]["value"] == pytest.approx(chunk.numeric["bmi"].var(ddof=1), rel=1e-7)
    cols = np.column_stack([chunk.numeric[c] for c in ("age", "bmi", "sbp")])
    assert np.allclose(got["corr"]["matrix"], np.corrcoef(cols.T), atol=1e-7)
    y = chunk.numeric["sbp"]
    assert np.allclose(got["ols"]["coefficients"], np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-6, atol=1e-6)
    assert got["ols"]["noise"]["adaptive_ridge"] == 0.0  # well-conditioned: plain OLS
    z = x[:, :3]
    ridge = np.linalg.solve(z.T @ z + np.diag([0.0, 2.0, 2.0]), z.T @ y)
    assert np.allclose(got["ridge"]["coefficients"], ridge, rtol=1e-6)
    z = x[:, 1:3]
    assert np.allclose(got["origin"]["coefficients"], np.linalg.lstsq(z, y, rcond=None)[0], rtol=1e-6)
    resid = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    r2 = 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))
    assert got["ols"]["r_squared"] == pytest.approx(r2, rel=1e-6)


@pytest.mark.parametrize("eps,delta", [("1.0", "0"), ("1.0", "1.0e-6")])
@pytest.mark.slow
def test_intervals_cover_the_pooled_truth(eps, delta):
    """Noise-only intervals cover the pooled answer; regression conf_int (sampling + noise)
    covers the data-generating coefficients; both in about 95% of runs at demo size, with
    epsilon 0.5 for each statistic (the hardest point of the README's utility table)."""
    spec = parse_spec((SPEC % (eps, delta)).split("  var_bmi")[0] + "  ols: " + SPEC.split("  ols:")[1].split("\n")[0])
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    stats = {s.name: s for s in plan.statistics}
    assert set(stats) == {"mean_age", "ols"}
    rng = np.random.default_rng(7)
    runs, hits_mean, hits_noise, hits_model = 150, 0, np.zeros(7), np.zeros(7)
    for _ in range(runs):
        chunk, x = cohort(rng, 5000)
        partials = compute_partials(plan, [chunk])
        m = _dp.postprocess(stats["mean_age"], noisy(stats["mean_age"],
                            _dp.release_clear(stats["mean_age"], partials["mean_age"]), rng), None)
        hits_mean += abs(m["value"] - chunk.numeric["age"].mean()) <= m["noise"]["ci95_halfwidth"]
        r = _dp.postprocess(stats["ols"], noisy(stats["ols"], _dp.release_clear(stats["ols"], partials["ols"]), rng),
                            None)
        pooled = np.linalg.lstsq(x, chunk.numeric["sbp"], rcond=None)[0]
        b = np.array(r["coefficients"])
        hits_noise += np.abs(b - pooled) <= np.array(r["noise"]["ci95_halfwidth"])
        ci = np.array(r["conf_int"])
        hits_model += (ci[:, 0] <= BETA) & (BETA <= ci[:, 1])
        assert min(r["std_errors"]) > 0
    # 150 runs: a 95% rate gives 0.91-0.99 with probability > 0.995
    assert 0.90 <= hits_mean / runs <= 0.995
    assert np.all(hits_noise / runs >= 0.88) and np.mean(hits_noise / runs) >= 0.92
    assert np.all(hits_model / runs >= 0.88) and np.mean(hits_model / runs) >= 0.92


def test_demo_sized_regression_is_near_the_truth_not_noise():
    """The review's finding: with the demo's spec (two regressions, epsilon 1, delta 1e-6) on
    about 5,000 rows, the DP regression was in the millions with R^2 1. Centred, scaled
    sufficient statistics with rho converted once make it useful."""
    text = (SPEC % ("1.0", "1.0e-6")).split("  mean_age")[0]
    spec = parse_spec(text + "  ols: {kind: regression, target: sbp, features: [age, bmi, smoker, region]}\n"
                      "  ridge: {kind: regression, target: sbp, features: [age, bmi, smoker, region], ridge: 1.0}\n")
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    stat = plan.statistics[0]
    rng = np.random.default_rng(11)
    chunk, x = cohort(rng, 5000)
    partial = compute_partials(plan, [chunk])["ols"]
    pooled = np.linalg.lstsq(x, chunk.numeric["sbp"], rcond=None)[0]
    errors = []
    for _ in range(50):
        r = _dp.postprocess(stat, noisy(stat, _dp.release_clear(stat, partial), rng), None)
        errors.append(np.array(r["coefficients"]) - pooled)
        assert r["r_squared"] is None or r["r_squared"] < 0.99  # never 1 from noise
    rmse = np.sqrt(np.mean(np.square(errors), axis=0))
    assert rmse[0] < 25 and rmse[1] < 0.1 and rmse[2] < 0.8  # intercept 78, age 0.55, bmi 0.9 (was ~1e5)


def test_noise_figures_are_in_the_statistic_units():
    plan = plan_for("1.0", "1.0e-6")
    stat = next(s for s in plan.statistics if s.name == "mean_age")
    chunk, _ = cohort(np.random.default_rng(3), 5000)
    values = _dp.release_clear(stat, compute_partials(plan, [chunk])["mean_age"])
    res = _dp.postprocess(stat, noisy(stat, values, np.random.default_rng(4)), None)
    # about 1.96 * sqrt(M / (2 rho_share)) * half-range / n: a fraction of a year, never hundreds
    assert 0.01 < res["noise"]["ci95_halfwidth"] < 1.0
    assert not res["noise"]["dominates"]


def test_noise_dominates_is_said_plainly():
    plan = plan_for("0.01", "0")
    stat = next(s for s in plan.statistics if s.name == "ols")
    chunk, _ = cohort(np.random.default_rng(5), 200)
    values = _dp.release_clear(stat, compute_partials(plan, [chunk])["ols"])
    res = _dp.postprocess(stat, noisy(stat, values, np.random.default_rng(6)), None)
    assert res["noise"]["dominates"]
    from jointstats.result import _format
    assert any("dominates" in line for line in _format("ols", res))


def test_every_party_computes_the_same_intervals():
    plan = plan_for("1.0", "0")
    stat = next(s for s in plan.statistics if s.name == "corr")
    chunk, _ = cohort(np.random.default_rng(8), 1000)
    values = noisy(stat, _dp.release_clear(stat, compute_partials(plan, [chunk])["corr"]), np.random.default_rng(9))
    assert _dp.postprocess(stat, values, None) == _dp.postprocess(stat, list(values), None)


@settings(max_examples=60, deadline=None)
@given(st.data())
@pytest.mark.slow
def test_post_processing_never_fails_whatever_the_noise(data):
    """A failure after the reveal would depend on the data: post-processing must be total, and
    its output strict JSON (no NaN or infinity), for any revealed integers."""
    plan = plan_for("1.0", data.draw(st.sampled_from(["0", "1.0e-6"])))
    for stat in plan.statistics:
        size = len(stat.noise.units)
        scale = data.draw(st.sampled_from([1, 1 << 20, 1 << 60, 1 << 90]))
        values = data.draw(st.lists(st.integers(-scale, scale), min_size=size, max_size=size))
        res = _dp.postprocess(stat, values, None)
        json.dumps(res, allow_nan=False)
        assert res["noise"]["dominates"] in (True, False)
