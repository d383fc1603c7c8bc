"""DP regressions with the data-adaptive ridge on: intervals cover, or the result says they cannot be read.

README: "``conf_int`` covers the model's true coefficients in about 95% of runs" and
"``value +/- ci95_halfwidth`` covers the value the same job would give without noise". At
n = 300 over three parties, epsilon 1 / delta 1e-6 split over six statistics (the adaptive
ridge is on in every run), the age and bmi slopes are shrunk by most of their size
(mean error vs the pooled fit about -0.46 on a slope of 0.55, -0.86 on 0.9) while the
reported half-widths stay near the spread of re-noised fits (~0.5, ~1.0): both intervals
cover in only about 50-65% of runs, and ``noise.dominates`` is false in ~99% of them.
The bias term in ``_dp._regression`` (mean shift of re-noised fits around the already
shrunk fit) measures only the *extra* shrinkage of a second round of noise, not the
shrinkage of the released fit itself.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jointstats.noise.sampler")
from jointstats.engine import dp as _dp  # noqa: E402
from jointstats.engine.local_step import compute_partials  # noqa: E402
from jointstats.plan.sealed import make_plan  # noqa: E402
from jointstats.plan.spec import parse_spec  # noqa: E402
from tests.unit.test_dp_mechanisms import BETA, SPEC, cohort, noisy  # noqa: E402


@pytest.mark.slow
def test_intervals_cover_when_the_adaptive_ridge_is_on():
    spec = parse_spec(SPEC % ("1.0", "1.0e-6"))
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    stat = {s.name: s for s in plan.statistics}["ols"]
    rng = np.random.default_rng(0)
    runs = 100
    hits_noise, hits_model, ridge_on, dominated = np.zeros(7), np.zeros(7), 0, 0
    for _ in range(runs):
        chunk, x = cohort(rng, 300)
        released = _dp.release_clear(stat, compute_partials(plan, [chunk])["ols"])
        r = _dp.postprocess(stat, noisy(stat, released, rng), None)
        pooled = np.linalg.lstsq(x, chunk.numeric["sbp"], rcond=None)[0]
        b = np.array(r["coefficients"])
        hits_noise += np.abs(b - pooled) <= np.array(r["noise"]["ci95_halfwidth"])
        ci = np.array(r["conf_int"])
        hits_model += (ci[:, 0] <= BETA) & (BETA <= ci[:, 1])
        ridge_on += r["noise"]["adaptive_ridge"] > 0
        dominated += r["noise"]["dominates"]
    assert ridge_on == runs  # the regime under test
    # either the intervals cover, or the result says plainly that they cannot be read
    if dominated < runs // 2:
        assert np.all(hits_noise / runs >= 0.85), hits_noise / runs
        assert np.all(hits_model / runs >= 0.85), hits_model / runs
