"""The DP utility benchmark (bench/dp_utility.py, bench/dp_sim.py): its offline simulation is the engine's mechanism.

* the offline samplers draw the exact discrete Laplace / Gaussian laws;
* the vector the simulation noises (``_dp.release_clear``) is the one the secure step noises
  (``_dp.prepare`` on the single-process MPyC runtime, its sampler replaced by zeros);
* with zero noise, the engine's post-processing of that vector is the exact pooled statistic;
* the curator's (epsilon, delta) -> rho conversion agrees with the engine's own CKS conversion,
  and the curator is exact without noise.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("jointstats.engine.dp")
from bench import dp_sim, dp_utility as du  # noqa: E402
from jointstats.plan import accounting as acc  # noqa: E402
from jointstats.engine import dp as _dp
from jointstats.mpc.runtime import local_runtime  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _chi2_pvalue(x: np.ndarray, pmf) -> float:
    ks = np.arange(x.min(), x.max() + 1)
    p = pmf(ks)
    obs = np.array([np.count_nonzero(x == k) for k in ks], dtype=float)
    exp = p * len(x)
    keep = exp >= 5
    obs_k, exp_k = obs[keep], exp[keep]
    obs_k = np.append(obs_k, obs[~keep].sum())
    exp_k = np.append(exp_k, len(x) - exp_k.sum())
    return stats.chisquare(obs_k, exp_k * obs_k.sum() / exp_k.sum()).pvalue


@pytest.mark.parametrize("scale", [0.4, 1.0, 7.5])
def test_discrete_laplace_law(scale):
    x = dp_sim.discrete_laplace(np.random.default_rng(1), scale, 40_000)
    assert _chi2_pvalue(x, lambda ks: dp_sim.dlaplace_pmf(scale, ks)) > 1e-4


@pytest.mark.parametrize("sigma2", [0.3, 2.25, 40.0])
def test_discrete_gaussian_law(sigma2):
    x = dp_sim.discrete_gaussian(np.random.default_rng(2), sigma2, 40_000)
    assert _chi2_pvalue(x, lambda ks: dp_sim.dgauss_pmf(sigma2, ks)) > 1e-4


def test_big_scales_are_rounded_continuous_draws():
    rng = np.random.default_rng(3)
    b = 2.0 ** 50
    x = dp_sim.discrete_laplace(rng, b, 20_000)
    assert abs(x.var() / (2 * b * b) - 1) < 0.1 and np.all(x == np.rint(x))
    g = dp_sim.discrete_gaussian(rng, b, 20_000)
    assert abs(g.var() / b - 1) < 0.05
    assert dp_sim.draw(rng, "discrete_laplace", [b, 1, b])[1] in range(-40, 41)


@pytest.mark.parametrize("eps,delta", [(0.5, 1e-6), (1.0, 1e-6), (4.0, 1e-6), (1.0, 1e-9)])
def test_curator_rho_is_cks_and_beats_the_classical_conversion(eps, delta):
    rho = dp_sim.rho_cks(eps, delta)
    assert dp_sim.cks_delta(rho, eps) <= delta * (1 + 1e-9)
    assert rho > dp_sim.rho_bun_steinke(eps, delta)
    # the engine's exact-rational CKS conversion: the same number (independent implementations)
    ours = float(acc.rho_from_eps_delta_cks(eps, delta))
    assert ours == pytest.approx(rho, rel=1e-6)


def _data(n=5000, seed=7):
    return du.cohort(n, np.random.default_rng(seed))


@pytest.mark.parametrize("kind", du.KINDS)
def test_released_vector_is_the_secure_steps(kind, monkeypatch):
    """prepare() on the single-process runtime, noise replaced by zeros, reveals release_clear()."""
    data = _data(600)
    eps, delta = 1.0, 0.0
    stat = du.engine_stat(kind, eps, delta).statistics[0]
    partial = du.engine_partial(kind, du.encoded(data), eps, delta)

    def zeros(rt, secint, noise):
        return secint.array(np.array([0] * len(noise.scales), dtype=object))
    monkeypatch.setattr(_dp, "_sample", zeros)
    rt = local_runtime()
    noisy = rt.run(_dp.prepare(rt, stat, partial, 0))
    opened = [int(v) for v in rt.run(rt.output(noisy))]
    assert opened == _dp.release_clear(stat, partial)
    assert len(opened) == len(stat.noise.scales)


@pytest.mark.parametrize("kind", du.KINDS)
@pytest.mark.parametrize("delta", [0.0, 1e-6])
def test_zero_noise_postprocess_is_the_pooled_statistic(kind, delta):
    data = _data()
    eps = 4.0
    partial = du.engine_partial(kind, du.encoded(data), eps, delta)
    res = du.ours_offline(kind, partial, eps, delta, None, noise=False)
    got, exact = du.ours_value(kind, res), du.truth(kind, data)
    if kind in ("count", "crosstab", "histogram"):
        assert got.tolist() == exact.tolist()
    elif kind == "regression":
        assert res["noise"]["adaptive_ridge"] == 0
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6)
    else:
        # the DP grid rounds each value to 2**-31 of its half range: far below 1e-7
        np.testing.assert_allclose(got, exact, rtol=1e-7, atol=1e-9)


def test_noise_plan_terms_do_not_depend_on_the_budget():
    # the benchmark computes each dataset's partials once for every (epsilon, delta)
    for kind in du.KINDS:
        terms = {du.engine_stat(kind, e, d).statistics[0].terms for e, d in [(0.5, 0.0), (4.0, 1e-6)]}
        assert len(terms) == 1


def test_curator_without_noise_is_exact():
    data = _data()
    cur = dp_sim.Curator(1e12, 0.0, np.random.default_rng(0))
    for kind in du.KINDS:
        exact = du.truth(kind, data)
        got = du.curator_value(kind, cur, data, exact)
        np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6, err_msg=kind)


@pytest.mark.slow
def test_quick_mode_writes_its_table(tmp_path):
    env = {**os.environ, "JOINTSTATS_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "bench.dp_utility", "--quick", "--runs", "8",
                           "--out", str(tmp_path), "-q"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "dp_utility-quick.md").read_text()
    for kind in du.KINDS:
        assert f"| {kind} | 5e+03 | 1 | 0 | 8 |" in text
    assert "Real 3-party runs" in text and "| count | 3e+03 | 1 | 0 | 1 |" in text
    assert math.isfinite(float(text.split("| count | 3e+03 | 1 | 0 | 1 | ")[1].split(" |")[0]))
