"""Exact mode over real party processes (TCP on loopback) against numpy/statsmodels on pooled data."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from jointstats import run
from jointstats.errors import PartyError
from tests.common import cohort_schema
from tests.conftest import cohort_frame

SPEC = """
name: exact-check
dataset: cohort
""" + cohort_schema() + """statistics:
  n:        {kind: count}
  n_bmi:    {kind: count, column: bmi}
  age_sum:  {kind: sum, column: age}
  mean_age: {kind: mean, column: age}
  var_bmi:  {kind: variance, column: bmi}
  corr:     {kind: correlation, columns: [age, bmi, sbp, visits]}
  smoking:  {kind: crosstab, rows: smoker, cols: region, min_count: 60}
  all_cells: {kind: crosstab, rows: smoker, cols: region}
  age_hist: {kind: histogram, column: age, bins: [18, 30, 45, 60, 75, 100]}
  ols:      {kind: regression, target: sbp, features: [age, bmi, smoker, region]}
  ridge:    {kind: regression, target: sbp, features: [age, bmi, smoker, region], ridge: 2.5}
  noint:    {kind: regression, target: sbp, features: [age, bmi], intercept: false}
"""

REL = 1e-6


def close(a, b, rel=REL, abs_=1e-9):
    assert a == pytest.approx(b, rel=rel, abs=abs_), (a, b)


def pooled_design(df: pd.DataFrame, features, intercept=True):
    cols = [np.ones(len(df))] if intercept else []
    names = ["intercept"] if intercept else []
    for f in features:
        if f in ("smoker", "region"):
            levels = {"smoker": ["no", "yes"], "region": ["north", "south", "east", "west"]}[f]
            for lvl in levels[1:]:
                cols.append((df[f] == lvl).astype(float).to_numpy())
                names.append(f"{f}[{lvl}]")
        else:
            cols.append(df[f].to_numpy(dtype=float))
            names.append(f)
    return np.column_stack(cols), names


def check_against_pooled(result, frames):
    df = pd.concat(frames, ignore_index=True)
    bounds = {"age": (18, 100), "bmi": (10, 60), "sbp": (80, 220), "visits": (0, 50)}
    for c, (lo, hi) in bounds.items():
        df[c] = df[c].clip(lo, hi)
    r = result.results
    assert r["n"]["value"] == len(df)
    assert r["n_bmi"]["value"] == int(df["bmi"].notna().sum())
    close(r["age_sum"]["value"], df["age"].sum())
    close(r["mean_age"]["value"], df["age"].mean())
    close(r["var_bmi"]["value"], df["bmi"].dropna().var(ddof=1))
    sub = df[["age", "bmi", "sbp", "visits"]].dropna()
    expected = np.corrcoef(sub.to_numpy().T)
    np.testing.assert_allclose(np.array(r["corr"]["matrix"], dtype=float), expected, rtol=REL, atol=1e-9)
    table = pd.crosstab(df["smoker"], df["region"]).reindex(index=["no", "yes"],
                                                            columns=["north", "south", "east", "west"],
                                                            fill_value=0)
    assert r["all_cells"]["counts"] == table.to_numpy().tolist()
    suppressed = [[v if v >= 60 else None for v in row] for row in table.to_numpy().tolist()]
    assert r["smoking"]["counts"] == suppressed
    counts, _ = np.histogram(df["age"], bins=[18, 30, 45, 60, 75, 100])
    assert r["age_hist"]["counts"] == counts.tolist()
    reg = df.dropna(subset=["sbp", "age", "bmi"])
    X, names = pooled_design(reg, ["age", "bmi", "smoker", "region"])
    fit = sm.OLS(reg["sbp"].to_numpy(), X).fit()
    assert r["ols"]["terms"] == names
    assert r["ols"]["n"] == len(reg)
    np.testing.assert_allclose(r["ols"]["coefficients"], fit.params, rtol=REL)
    np.testing.assert_allclose(r["ols"]["std_errors"], fit.bse, rtol=REL)
    close(r["ols"]["r_squared"], fit.rsquared)
    # the typed result's table: statsmodels' intervals and p-values on the pooled data
    ols = result.stat("ols")
    np.testing.assert_allclose(ols.conf_int().to_numpy(), fit.conf_int(), rtol=REL)
    np.testing.assert_allclose(ols.pvalues.to_numpy(), fit.pvalues, rtol=1e-6, atol=1e-300)
    frame = result.to_frame("all_cells")
    assert frame.to_numpy().tolist() == table.to_numpy().tolist()
    assert list(frame.index) == ["no", "yes"] and list(frame.columns) == list(table.columns)
    # ridge: penalty on every coefficient but the intercept, closed form on pooled data
    pen = np.eye(X.shape[1]) * 2.5
    pen[0, 0] = 0
    beta = np.linalg.solve(X.T @ X + pen, X.T @ reg["sbp"].to_numpy())
    np.testing.assert_allclose(r["ridge"]["coefficients"], beta, rtol=REL)
    X2, _ = pooled_design(reg, ["age", "bmi"], intercept=False)
    fit2 = sm.OLS(reg["sbp"].to_numpy(), X2).fit()
    np.testing.assert_allclose(r["noint"]["coefficients"], fit2.params, rtol=REL)
    np.testing.assert_allclose(r["noint"]["std_errors"], fit2.bse, rtol=REL)
    close(r["noint"]["r_squared"], fit2.rsquared)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def test_three_parties_unequal_sizes_missing_and_out_of_bounds(consortium, spec_file, tmp_path):
    frames = [cohort_frame(900, 1), cohort_frame(250, 2), cohort_frame(1600, 3)]
    frames[0].loc[[3, 10, 77], "bmi"] = np.nan
    frames[1].loc[[5], "sbp"] = np.nan
    frames[2].loc[[0, 1], "age"] = [150.0, 5.0]  # outside the bounds: clipped by the owner
    frames[2].loc[[2], "visits"] = 80
    configs = consortium(frames)
    out = tmp_path / "result.json"
    result = run(spec_file, configs, out=out)
    check_against_pooled(result, frames)
    data = json.loads(out.read_text())
    assert data["privacy"] is None
    assert data["parties"] == ["party_a", "party_b", "party_c"]
    assert set(data["results"]) == {"n", "n_bmi", "age_sum", "mean_age", "var_bmi", "corr", "smoking",
                                    "all_cells", "age_hist", "ols", "ridge", "noint"}
    assert "coef" in result.summary() and "intercept" in result.summary()


def test_two_parties_one_with_zero_rows(consortium, spec_file):
    frames = [cohort_frame(700, 4), cohort_frame(0, 5)]
    result = run(spec_file, consortium(frames, fmt="parquet", policy={"allow_two_party": True}))
    check_against_pooled(result, frames)


def test_five_parties(consortium, tmp_path):
    spec = tmp_path / "five.yaml"
    spec.write_text(SPEC.split("statistics:")[0] + """statistics:
  n:        {kind: count}
  mean_age: {kind: mean, column: age}
  smoking:  {kind: crosstab, rows: smoker, cols: region}
  ols:      {kind: regression, target: sbp, features: [age, bmi, smoker]}
""")
    frames = [cohort_frame(120 * (i + 1), 10 + i) for i in range(5)]
    result = run(spec, consortium(frames))
    df = pd.concat(frames, ignore_index=True)
    df["sbp"] = df["sbp"].clip(80, 220)
    df["bmi"] = df["bmi"].clip(10, 60)
    assert result["n"]["value"] == len(df)
    close(result["mean_age"]["value"], df["age"].mean())
    X, _ = pooled_design(df, ["age", "bmi", "smoker"])
    fit = sm.OLS(df["sbp"].to_numpy(), X).fit()
    np.testing.assert_allclose(result["ols"]["coefficients"], fit.params, rtol=REL)
    np.testing.assert_allclose(result["ols"]["std_errors"], fit.bse, rtol=REL)


def test_exact_mode_refused_without_consent(consortium, spec_file):
    frames = [cohort_frame(50, 1), cohort_frame(50, 2), cohort_frame(50, 3)]
    configs = consortium(frames)
    text = configs[1].read_text().replace("allow_exact: true", "allow_exact: false")
    configs[1].write_text(text)
    with pytest.raises(PartyError, match=r"party 'party_b' refuses exact mode"):
        run(spec_file, configs)


def test_schema_violation_names_party_column_and_count(consortium, spec_file):
    frames = [cohort_frame(60, 1), cohort_frame(60, 2), cohort_frame(60, 3)]
    frames[2].loc[[1, 2, 3], "region"] = "mars"
    with pytest.raises(PartyError) as err:
        run(spec_file, consortium(frames))
    msg = str(err.value)
    assert "party_c" in msg and "region" in msg and "3 rows" in msg and "mars" not in msg


def test_singular_regression_is_a_clear_error(consortium, tmp_path):
    spec = tmp_path / "sing.yaml"
    spec.write_text(SPEC.split("statistics:")[0] + """statistics:
  ols: {kind: regression, target: sbp, features: [age, bmi]}
""")
    frames = [cohort_frame(1, 1), cohort_frame(1, 2)]  # 2 rows, 3 terms
    with pytest.raises(PartyError, match="singular"):
        run(spec, consortium(frames, policy={"allow_two_party": True}))
