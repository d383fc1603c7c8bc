"""Two organisations (issue 16 item 8): a compute-only third party, and 2-party jobs only by opt-in.

Real party processes on loopback. Two data holders plus a compute-only party make an MPC
of 3 (threshold 1): the results equal pooled numpy/statsmodels on the two holders' data,
the compute-only party never opens a data source and charges no budget. A job with only
2 parties is refused, naming the party and the field, unless every policy opts in; when it
runs, its result says what each party could see.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml

from jointstats import PartyError, PolicyError, run, validate
from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from tests.common import cohort_schema
from tests.conftest import cohort_frame
from tests import faults

HEAD = """
name: two-orgs
dataset: cohort
""" + cohort_schema("age", "bmi", "sbp", "smoker", "region")

STATS = """statistics:
  n:        {kind: count}
  mean_age: {kind: mean, column: age}
  smoking:  {kind: crosstab, rows: smoker, cols: region}
  ols:      {kind: regression, target: sbp, features: [age, bmi, smoker]}
"""


def write_spec(tmp_path, privacy: str | None = None, stats: str = STATS, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(HEAD + (f"privacy: {privacy}\n" if privacy else "") + stats)
    return path


def pooled(frames) -> pd.DataFrame:
    df = pd.concat(frames, ignore_index=True)
    df["sbp"] = df["sbp"].clip(80, 220)
    df["bmi"] = df["bmi"].clip(10, 60)
    return df


def audit(config) -> list[dict]:
    state = NodeState(load_party_config(config).state)
    try:
        assert state.verify_audit()[0]
        return list(state.audit_records())
    finally:
        state.close()


def spent(config, dataset="cohort") -> Fraction:
    state = NodeState(load_party_config(config).state)
    try:
        return state.spent(dataset)[0]
    finally:
        state.close()


@pytest.fixture
def frames():
    return [cohort_frame(900, 41), cohort_frame(600, 42)]


def test_two_holders_and_a_compute_party_exact_equals_pooled(consortium, frames, tmp_path, monkeypatch):
    configs = consortium(frames, compute=["trustee"])
    trustee = load_party_config(configs[2])
    assert trustee.compute_only and trustee.datasets == ()
    assert not (configs[2].parent / "data").exists()  # nothing it could read
    # were the trustee ever to reach its read path, this fault point would kill it there
    faults.arm(monkeypatch, "trustee:local_step")
    result = run(write_spec(tmp_path), configs)
    df = pooled(frames)
    assert result["n"]["value"] == len(df) == 1500
    assert result["mean_age"]["value"] == pytest.approx(df["age"].mean(), rel=1e-9)
    table = pd.crosstab(df["smoker"], df["region"]).reindex(
        index=["no", "yes"], columns=["north", "south", "east", "west"], fill_value=0)
    assert result["smoking"]["counts"] == table.to_numpy().tolist()
    X = np.column_stack([np.ones(len(df)), df["age"], df["bmi"], (df["smoker"] == "yes").astype(float)])
    fit = sm.OLS(df["sbp"].to_numpy(), X).fit()
    np.testing.assert_allclose(result["ols"]["coefficients"], fit.params, rtol=1e-6)
    np.testing.assert_allclose(result["ols"]["std_errors"], fit.bse, rtol=1e-6)
    assert result["ols"]["r_squared"] == pytest.approx(fit.rsquared, rel=1e-6)
    # the result says who held data and who only computed, and that no single party saw more
    assert result.parties == ("party_a", "party_b", "trustee")
    mpc = result.mpc
    assert mpc["data_parties"] == ["party_a", "party_b"] and mpc["compute_parties"] == ["trustee"]
    assert mpc["threshold"] == 1
    assert "no data of its own" in mpc["sees"]["trustee"] and "only random shares" in mpc["sees"]["trustee"]
    assert "only random shares" in mpc["sees"]["party_a"]
    assert result.to_dict()["mpc"] == mpc
    assert "compute only (no data): trustee" in result.summary()
    # the trustee audited the job as compute-only; its ledger holds nothing
    events = [(r["event"], r["fields"].get("role")) for r in audit(configs[2])]
    assert ("start", "compute") in events and ("reveal", "compute") in events


def test_dp_job_with_a_compute_party_charges_the_holders_only(consortium, frames, tmp_path):
    configs = consortium(frames, compute=["trustee"])
    spec = write_spec(tmp_path, "{epsilon: 2.0, delta: 1.0e-6}")
    result = run(spec, configs)
    df = pooled(frames)
    assert result.privacy["mechanism"] == "discrete_gaussian" and "two_party" not in result.privacy
    assert abs(result["n"]["value"] - len(df)) <= 3 * result["n"]["noise"]["ci95_halfwidth"]
    assert "party_a's partial aggregates and of the DP noise only random shares" in result.mpc["sees"]["party_b"]
    assert spent(configs[0]) == spent(configs[1]) == Fraction(2)
    # its own budget is 0 and it offers no dataset: it releases nothing of its own
    state = NodeState(load_party_config(configs[2]).state)
    try:
        assert state.jobs() == [] and state.verify_audit()[0]
    finally:
        state.close()
    assert [r["fields"]["mode"] for r in audit(configs[2]) if r["event"] == "reveal"] == ["dp"]


def test_compute_party_policy_still_applies(consortium, frames, tmp_path):
    configs = consortium(frames, compute=["trustee"])
    text = configs[2].read_text()
    # its per-job epsilon cap
    configs[2].write_text(text.replace("max_epsilon_per_job: 10.0", "max_epsilon_per_job: 0.5"))
    with pytest.raises(PartyError, match=r"party 'trustee' refuses: privacy.epsilon 1 exceeds its "
                                         r"policy.max_epsilon_per_job 0.5"):
        run(write_spec(tmp_path, "{epsilon: 1.0, delta: 0}"), configs)
    assert spent(configs[0]) == spent(configs[1]) == 0
    # exact mode needs its consent too
    configs[2].write_text(text.replace("allow_exact: true", "allow_exact: false"))
    with pytest.raises(PartyError, match=r"party 'trustee' refuses exact mode"):
        run(write_spec(tmp_path), configs)


def test_validate_lists_who_holds_data(consortium, frames, tmp_path):
    configs = consortium(frames, compute=["trustee"])
    text = validate(write_spec(tmp_path), configs)
    assert "3 parties (party_a, party_b, trustee)" in text
    assert "parties holding data: party_a, party_b; compute only (no data, zero partials): trustee" in text
    assert "threshold 1: no single party sees another's partial aggregates or the DP noise" in text


def opt_in(config, value: bool) -> None:
    data = yaml.safe_load(config.read_text())
    data["policy"]["allow_two_party"] = value
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def test_two_party_job_refused_without_every_opt_in(consortium, frames, tmp_path):
    configs = consortium(frames, policy={"allow_two_party": True})
    opt_in(configs[1], False)
    spec = write_spec(tmp_path, "{epsilon: 1.0, delta: 0}")
    message = r"party 'party_b' refuses a 2-party job \(its policy.allow_two_party is false\)"
    with pytest.raises(PartyError, match=message) as err:
        run(spec, configs)
    assert "\n" not in str(err.value)
    assert spent(configs[0]) == spent(configs[1]) == 0
    with pytest.raises(PolicyError, match=message):
        validate(spec, configs)
    # the default is to refuse
    for cfg in configs:
        data = yaml.safe_load(cfg.read_text())
        del data["policy"]["allow_two_party"]
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PartyError, match=r"party 'party_a' refuses a 2-party job"):
        run(spec, configs)


def test_two_party_job_with_opt_in_says_what_each_could_see(consortium, frames, tmp_path):
    configs = consortium(frames, policy={"allow_two_party": True})
    exact = run(write_spec(tmp_path), configs)
    df = pooled(frames)
    assert exact["n"]["value"] == len(df)
    assert exact.privacy is None
    sees = exact.mpc["sees"]
    assert exact.mpc["threshold"] == 0 and exact.mpc["compute_parties"] == []
    assert "party_b's partial aggregates (not its rows)" in sees["party_a"]
    assert "party_a's partial aggregates (not its rows)" in sees["party_b"]
    assert "noise" not in sees["party_a"]
    assert sees["analyst"] == "only the released values"
    assert "WARNING: 2-party job" in exact.summary() and "party_a could see:" in exact.summary()
    dp = run(write_spec(tmp_path, "{epsilon: 1.0, delta: 0}", name="dp.yaml"), configs)
    assert "the DP noise included" in dp.mpc["sees"]["party_a"]
    assert "(with DP noise)" in dp.mpc["sees"]["analyst"]
    assert "party_a and party_b each saw the other's partial aggregates and the DP noise" \
        in dp.privacy["two_party"]
    assert "party 'party_a'" not in validate(write_spec(tmp_path), configs)  # validates
    assert "allow_two_party is true" in validate(write_spec(tmp_path), configs)
