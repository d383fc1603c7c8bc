"""DP mode over three real party processes: noise inside MPC, budgets enforced by each party."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

pytest.importorskip("jointstats.noise.sampler")
from jointstats import PartyError, run  # noqa: E402
from jointstats.ledger.state import NodeState  # noqa: E402
from jointstats.consortium.config import load_party_config  # noqa: E402
from tests.common import cohort_schema  # noqa: E402
from tests.conftest import cohort_frame  # noqa: E402
from tests import faults

HEAD = """
name: dp-check
dataset: cohort
""" + cohort_schema("age", "bmi", "sbp", "smoker", "region")

STATS = """
statistics:
  n:        {kind: count}
  mean_age: {kind: mean, column: age}
  var_bmi:  {kind: variance, column: bmi}
  corr:     {kind: correlation, columns: [age, bmi]}
  smoking:  {kind: crosstab, rows: smoker, cols: region, min_count: 20}
  age_hist: {kind: histogram, column: age, bins: [18, 40, 60, 100]}
  ols:      {kind: regression, target: sbp, features: [age, bmi, smoker]}
"""


@pytest.fixture
def data():
    return [cohort_frame(3000, 21), cohort_frame(2000, 22), cohort_frame(4000, 23)]


def write_spec(tmp_path, privacy, stats=STATS, name="s.yaml"):
    path = tmp_path / name
    path.write_text(HEAD + f"privacy: {privacy}\n" + stats)
    return path


def spent(config) -> Fraction:
    state = NodeState(load_party_config(config).state)
    try:
        return state.spent("cohort")[0]
    finally:
        state.close()


def test_dp_job_noise_within_reported_scale_and_budget_spent(consortium, data, tmp_path):
    configs = consortium(data)
    spec = write_spec(tmp_path, "{epsilon: 4.0, delta: 1.0e-6}")
    first = run(spec, configs)
    second = run(spec, configs)
    df = pd.concat(data, ignore_index=True)
    df["sbp"] = df["sbp"].clip(80, 220)
    df["bmi"] = df["bmi"].clip(10, 60)
    r = first.results
    assert first.privacy["mechanism"] == "discrete_gaussian"
    assert "add/remove one row" in first.privacy["neighbours"]
    # different noise on each run
    assert (first["n"]["value"], first["age_hist"]["counts"]) != (second["n"]["value"], second["age_hist"]["counts"])
    assert abs(r["n"]["value"] - len(df)) <= 3 * r["n"]["noise"]["ci95_halfwidth"]
    assert abs(r["mean_age"]["value"] - df["age"].mean()) < 1.0
    X = np.column_stack([np.ones(len(df)), df["age"], df["bmi"], (df["smoker"] == "yes").astype(float)])
    exact = sm.OLS(df["sbp"].to_numpy(), X).fit().params
    sd = np.array(r["ols"]["noise"]["coefficient_noise_sd"])
    assert np.all(np.abs(np.array(r["ols"]["coefficients"]) - exact) <= 5 * sd + 1e-9)
    cells = [c for row in r["smoking"]["counts"] for c in row]
    assert all(c is None or c >= 20 for c in cells)
    for cfg in configs:
        assert spent(cfg) == Fraction(8)  # two jobs of epsilon 4 each


def test_pure_dp_laplace(consortium, data, tmp_path):
    configs = consortium(data)
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}",
                      stats="statistics:\n  n: {kind: count}\n  h: {kind: histogram, column: age, bins: [18, 50, 100]}\n")
    res = run(spec, configs)
    assert res.privacy["mechanism"] == "discrete_laplace"
    assert abs(res["n"]["value"] - 9000) < 60  # scale 2 for eps 0.5: P(|noise| >= 60) ~ e^-30


def test_each_party_enforces_its_own_limits(consortium, data, tmp_path):
    configs = consortium(data, policy={"budget": {"epsilon": 3.0, "delta": 1.0e-5}, "max_epsilon_per_job": 2.0})
    # per-job cap at one party
    text = configs[1].read_text().replace("max_epsilon_per_job: 2.0", "max_epsilon_per_job: 0.5")
    configs[1].write_text(text)
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}", stats="statistics:\n  n: {kind: count}\n")
    with pytest.raises(PartyError, match=r"party 'party_b' refuses: privacy.epsilon 1 exceeds its policy.max_epsilon_per_job 0.5"):
        run(spec, configs)
    assert all(spent(c) == 0 for c in configs)
    configs[1].write_text(text.replace("max_epsilon_per_job: 0.5", "max_epsilon_per_job: 2.0"))
    # lifetime budget: 3 jobs of 1.0 fit, the 4th is refused, nothing partially spent
    for _ in range(3):
        run(spec, configs)
    with pytest.raises(PartyError, match=r"budget of dataset 'cohort' exceeded"):
        run(spec, configs)
    assert all(spent(c) == 3 for c in configs)
    for c in configs:
        state = NodeState(load_party_config(c).state)
        assert state.verify_audit()[0]
        assert state.reserved("cohort")[0] == 0
        state.close()


def test_min_count_floor_refusal(consortium, data, tmp_path):
    configs = consortium(data, policy={"min_count": 10})
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}",
                      stats="statistics:\n  x: {kind: crosstab, rows: smoker, cols: region, min_count: 5}\n")
    with pytest.raises(PartyError, match=r"statistics.x.min_count 5 is below its policy floor 10"):
        run(spec, configs)


def test_party_dying_before_commit_spends_nothing(consortium, data, tmp_path, monkeypatch):
    configs = consortium(data)
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}", stats="statistics:\n  n: {kind: count}\n")
    faults.arm(monkeypatch, "party_c:before_commit")
    with pytest.raises(PartyError, match="party 'party_c' died"):
        run(spec, configs)
    for c in configs[:2]:
        assert spent(c) == 0
        state = NodeState(load_party_config(c).state)
        assert state.reserved("cohort")[0] == 0 and state.verify_audit()[0]
        state.close()


def test_party_dying_at_its_commit_stops_every_reveal(consortium, data, tmp_path, monkeypatch):
    """Parties reveal only after every party has committed its budget: one that dies before its
    commit leaves nothing revealed anywhere (the others fail naming it; it spent nothing)."""
    configs = consortium(data)
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}", stats="statistics:\n  n: {kind: count}\n")
    faults.arm(monkeypatch, "party_c:commit")
    with pytest.raises(PartyError, match="party 'party_c'"):
        run(spec, configs)
    for c in configs:
        state = NodeState(load_party_config(c).state)
        try:
            assert state.verify_audit()[0]
            assert not [r for r in state.audit_records() if r["event"] in ("reveal", "done")]
        finally:
            state.close()
    # the two that committed keep it spent (fail safe); the dead one's reservation is
    # given back when it next starts a job
    assert [spent(c) for c in configs[:2]] == [1, 1]
