"""Typed per-kind results, DataFrames, notebook HTML and plots (jointstats.results_kinds).

The results are the demo protocols' (tests/unit/data/demo_results.json: real runs, DP and
exact); regression intervals and p-values are checked against statsmodels."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jointstats as js
from jointstats.result import Result
from jointstats.results_kinds import statistic_result

RUNS = json.loads((Path(__file__).parent / "data" / "demo_results.json").read_text())


def run(name: str, exact: bool = False) -> Result:
    return Result.from_dict(RUNS[f"protocols/{name}.yaml" + (":exact" if exact else "")])


KINDS = {"n": js.CountResult, "visits_sum": js.SumResult, "mean_age": js.MeanResult,
         "var_bmi": js.VarianceResult, "age_hist": js.HistogramResult,
         "corr": js.CorrelationResult}


@pytest.mark.parametrize("exact", [False, True])
def test_every_kind_has_its_class_summary_and_dict(exact):
    for protocol in ("cohort-summary", "smoking-crosstab", "bp-regression"):
        result = run(protocol, exact)
        for name, stat in result.statistics.items():
            assert stat.kind == result[name]["kind"] and stat.name == name
            assert stat.to_dict() == result[name]  # the contract's object, unchanged
            assert stat.to_dict() is not result[name]
            assert stat.summary().startswith(f"{name} [{stat.kind}")
            assert stat.summary() in result.summary()
            assert stat.exact == exact
    cohort = run("cohort-summary", exact)
    for name, cls in KINDS.items():
        assert type(cohort.stat(name)) is cls
    assert type(run("smoking-crosstab").stat("sex_by_region")) is js.CrosstabResult
    assert type(run("bp-regression").stat("bp_ols")) is js.RegressionResult


def test_the_result_json_is_unchanged():
    for key, data in RUNS.items():
        result = Result.from_dict(data)
        assert result.to_dict() == data
        assert json.loads(result.to_json()) == data


def test_unknown_statistic_names_the_closest():
    with pytest.raises(KeyError, match=r"no statistic 'mean_aeg'.*did you mean 'mean_age'"):
        run("cohort-summary").stat("mean_aeg")
    with pytest.raises(js.JointStatsError, match="results.x.kind: unknown kind 'median'"):
        statistic_result("x", {"kind": "median"})


def test_scalar_frames_and_noise_intervals():
    dp = run("cohort-summary")
    n = dp.stat("n")
    assert n.value == dp["n"]["value"] and n.ci95_halfwidth == dp["n"]["noise"]["ci95_halfwidth"]
    assert n.noise_interval == (n.value - n.ci95_halfwidth, n.value + n.ci95_halfwidth)
    frame = dp.to_frame()
    assert list(frame.index) == ["n", "visits_sum", "mean_age", "mean_sbp", "var_bmi"]
    assert frame.loc["mean_age", "value"] == dp["mean_age"]["value"]
    assert frame.loc["n", "ci95_low"] == n.value - n.ci95_halfwidth
    exact = run("cohort-summary", exact=True)
    assert exact.stat("n").noise_interval is None
    assert list(exact.to_frame().columns) == ["kind", "value"]
    assert exact.to_frame("n").loc["n", "value"] == exact["n"]["value"]
    assert run("bp-regression").to_frame().empty


def test_histogram_correlation_and_crosstab_frames():
    r = run("cohort-summary")
    h = r.to_frame("age_hist")
    assert h["count"].tolist() == r["age_hist"]["counts"]
    assert h["low"].tolist() == r["age_hist"]["edges"][:-1] and h["high"].tolist() == r["age_hist"]["edges"][1:]
    c = r.to_frame("corr")
    assert list(c.index) == list(c.columns) == r["corr"]["columns"]
    np.testing.assert_array_equal(c.to_numpy(), np.array(r["corr"]["matrix"], dtype=float))
    x = run("smoking-crosstab").stat("smoking_by_region")
    suppressed = dict(x.to_dict(), counts=[[5, None], [None, 7]], rows=["no", "yes"], cols=["a", "b"])
    f = statistic_result("t", suppressed).to_frame()
    assert f.loc["no", "a"] == 5 and pd.isna(f.loc["no", "b"]) and str(f.dtypes.iloc[0]) == "Int64"
    assert x.to_frame().to_numpy().tolist() == x.counts and x.min_count == 10


def _ols_result(exact: bool):
    import statsmodels.api as sm
    rng = np.random.default_rng(7)
    X = sm.add_constant(rng.normal(size=(60, 3)))
    y = X @ [1.0, 0.5, 0.0, -2.0] + rng.normal(size=60)
    fit = sm.OLS(y, X).fit()
    data = {"kind": "regression", "terms": ["intercept", "a", "b", "c"],
            "coefficients": fit.params.tolist(), "std_errors": fit.bse.tolist(), "n": 60,
            "r_squared": fit.rsquared, "ridge": 0.0}
    if not exact:
        data["conf_int"] = fit.conf_int().tolist()
        data["noise"] = {"mechanism": "discrete_gaussian", "dominates": False}
    return fit, statistic_result("m", data)


def test_regression_table_matches_statsmodels_in_exact_mode():
    fit, reg = _ols_result(exact=True)
    np.testing.assert_allclose(reg.params, fit.params, rtol=1e-12)
    np.testing.assert_allclose(reg.conf_int().to_numpy(), fit.conf_int(), rtol=1e-10)
    np.testing.assert_allclose(reg.conf_int(0.1).to_numpy(), fit.conf_int(0.1), rtol=1e-10)
    np.testing.assert_allclose(reg.tvalues, fit.tvalues, rtol=1e-10)
    np.testing.assert_allclose(reg.pvalues, fit.pvalues, rtol=1e-8)
    assert reg.df_resid == fit.df_resid
    table = reg.to_frame()
    assert list(table.columns) == ["coef", "std_err", "ci95_low", "ci95_high", "t", "p_value"]
    assert table.index.name == "term" and list(table.index) == ["intercept", "a", "b", "c"]
    text = reg.summary()
    assert "P>|t|" in text and "[0.025" in text and "0.975]" in text


def test_regression_table_under_dp_has_the_released_intervals_and_no_p_values():
    fit, reg = _ols_result(exact=False)
    assert reg.pvalues is None and reg.tvalues is None and reg.df_resid is None
    np.testing.assert_array_equal(reg.conf_int().to_numpy(), fit.conf_int())
    with pytest.raises(ValueError, match="95% intervals only"):
        reg.conf_int(0.1)
    assert list(reg.to_frame().columns) == ["coef", "std_err", "ci95_low", "ci95_high"]
    assert "P>|t|" not in reg.summary() and "[0.025" in reg.summary()
    real = run("bp-regression").stat("bp_ols")
    assert real.conf_int().to_numpy().tolist() == real.to_dict()["conf_int"]


def test_repr_html_for_notebooks():
    r = run("cohort-summary")
    page = r._repr_html_()
    assert page.startswith("<div>") and "cohort-summary" in page
    assert page.count("<table") == len(r.results)
    assert "<table" in r.stat("corr")._repr_html_()
    hostile = statistic_result("<b>x</b>", {"kind": "count", "value": 1})
    assert "<b>x</b>" not in hostile._repr_html_() and "&lt;b&gt;x&lt;/b&gt;" in hostile._repr_html_()


def test_plots_of_histograms_and_crosstabs(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    r = run("cohort-summary")
    ax = r.plot("age_hist")
    heights = [p.get_height() for p in ax.patches]
    assert heights == r["age_hist"]["counts"]
    assert [p.get_x() for p in ax.patches] == r["age_hist"]["edges"][:-1]
    ax.figure.savefig(tmp_path / "hist.png")
    x = run("smoking-crosstab", exact=True)
    ax = x.plot("smoking_by_region")
    assert len(ax.patches) == 2 * 4
    assert sorted(p.get_height() for p in ax.patches) == sorted(v for row in x["smoking_by_region"]["counts"] for v in row)
    with pytest.raises(TypeError, match="only histograms and crosstabs"):
        r.plot("mean_age")


def test_plot_without_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"needs matplotlib.*jointstats\[plot\]"):
        run("cohort-summary").plot("age_hist")


def test_parse_spec_takes_a_mapping():
    data = {"name": "nb", "dataset": "cohort",
            "schema": {"age": {"type": "real", "bounds": [18, 100]},
                       "smoker": {"type": "categorical", "levels": ["no", "yes"]}},
            "privacy": {"epsilon": 1.0, "delta": 1e-6},
            "statistics": {"n": {"kind": "count"}, "m": {"kind": "mean", "column": "age"}}}
    spec = js.parse_spec(data)
    assert spec.name == "nb" and spec.column("smoker").levels == ("no", "yes")
    assert spec.privacy.budget == js.PrivacyBudget(1, "1/1000000")
    assert js.parse_spec(spec.text) == spec and len(spec.sha256) == 64
    with pytest.raises(js.SpecError, match=r"statistics.m.column: unknown column 'aeg' \(did you mean 'age'\?\)"):
        js.parse_spec({**data, "statistics": {"m": {"kind": "mean", "column": "aeg"}}})
    with pytest.raises(js.SpecError, match="cannot be written as YAML"):
        js.parse_spec({**data, "name": object()})
    assert "plan" in js.validate(data)  # js.run takes the mapping the same way
