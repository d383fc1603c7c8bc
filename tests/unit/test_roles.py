"""Compute-only parties and the 2-party opt-in: config, policy, plan description, result, ledger."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from jointstats import ConfigError, PolicyError, load_party_config, parse_spec
from jointstats.engine.roles import ComputeOnlyHooks, job_hooks, mpc_block
from jointstats.engine.hooks import LedgerHooks
from jointstats.plan.sealed import make_plan
from jointstats.consortium.policy import check_job
from jointstats.result import Result

PEERS = [{"name": "a", "host": "127.0.0.1", "port": 11365},
         {"name": "b", "host": "127.0.0.1", "port": 11366},
         {"name": "t", "host": "127.0.0.1", "port": 11367, "role": "compute"}]
HOLDER = {"party": "a", "mpc": {"parties": PEERS}, "datasets": {"cohort": {"source": "a.csv"}},
          "policy": {"budget": {"epsilon": 10.0, "delta": 1.0e-5}, "max_epsilon_per_job": 2.0,
                     "allow_exact": True}}
TRUSTEE = {"party": "t", "mpc": {"parties": PEERS},
           "policy": {"max_epsilon_per_job": 2.0, "allow_exact": True}}
SPEC = """
name: s
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
  m: {kind: mean, column: age}
"""


def load(tmp_path: Path, cfg: dict, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return load_party_config(path)


def spec(privacy: str = "") -> object:
    return parse_spec(SPEC + (f"privacy: {privacy}\n" if privacy else ""))


def test_roles_come_from_the_public_party_list(tmp_path):
    holder, trustee = load(tmp_path, HOLDER, "a.yaml"), load(tmp_path, TRUSTEE, "t.yaml")
    assert [p.role for p in holder.peers] == ["data", "data", "compute"]
    assert holder.peers == trustee.peers  # the same list on every party
    assert holder.role == "data" and not holder.compute_only
    assert trustee.role == "compute" and trustee.compute_only and trustee.datasets == ()
    assert trustee.policy.allow_two_party is False and trustee.policy.budget_epsilon == 0
    with pytest.raises(ConfigError, match="party 't' is compute-only .* and holds no data"):
        trustee.dataset_source("cohort")
    assert holder.policy.public()["allow_two_party"] is False


@pytest.mark.parametrize("change,message", [
    (lambda c: c["mpc"]["parties"][2].update(role="helper"), "mpc.parties[2].role: expected data or compute, found 'helper'"),
    (lambda c: c.update(datasets={"cohort": {"source": "t.csv"}}), "datasets: party 't' is compute-only"),
    (lambda c: [p.update(role="compute") for p in c["mpc"]["parties"]], "every party is compute-only"),
    (lambda c: c["policy"].update(allow_two_party="yes"), "policy.allow_two_party: expected true or false"),
])
def test_bad_role_configs(tmp_path, change, message):
    cfg = copy.deepcopy(TRUSTEE)
    change(cfg)
    with pytest.raises(ConfigError) as err:
        load(tmp_path, cfg)
    assert message in str(err.value)


def test_compute_party_policy_checks(tmp_path):
    trustee = load(tmp_path, TRUSTEE)
    names = [p.name for p in trustee.peers]
    # no dataset to offer, no lifetime delta budget to exceed: it charges nothing
    s = spec("{epsilon: 1.0, delta: 1.0e-6}")
    check_job(trustee, s, make_plan(s, names))
    s = spec("{epsilon: 3.0, delta: 0}")
    with pytest.raises(PolicyError, match=r"party 't' refuses: privacy.epsilon 3 exceeds its policy.max_epsilon_per_job 2"):
        check_job(trustee, s, make_plan(s, names))
    cfg = copy.deepcopy(TRUSTEE)
    cfg["policy"]["allow_exact"] = False
    s = spec()
    with pytest.raises(PolicyError, match="party 't' refuses exact mode"):
        check_job(load(tmp_path, cfg), s, make_plan(s, names))


def test_two_party_jobs_need_the_opt_in(tmp_path):
    cfg = copy.deepcopy(HOLDER)
    cfg["mpc"]["parties"] = PEERS[:2]
    holder = load(tmp_path, cfg)
    s = spec("{epsilon: 1.0, delta: 0}")
    plan = make_plan(s, ["a", "b"])
    with pytest.raises(PolicyError) as err:
        check_job(holder, s, plan)
    assert str(err.value).startswith("party 'a' refuses a 2-party job (its policy.allow_two_party is false)")
    assert "\n" not in str(err.value)
    cfg["policy"]["allow_two_party"] = True
    check_job(load(tmp_path, cfg), s, plan)
    # 3 parties need no opt-in
    check_job(load(tmp_path, HOLDER), s, make_plan(s, ["a", "b", "t"]))


def test_plan_description_lists_roles():
    s = spec()
    text = make_plan(s, ["a", "b", "t"]).describe(["t"])
    assert "parties holding data: a, b; compute only (no data, zero partials): t" in text
    assert "threshold 1: no single party sees" in text
    assert "compute only" not in make_plan(s, ["a", "b", "t"]).describe()
    two = make_plan(s, ["a", "b"]).describe()
    assert "threshold is 0" in two and "policy.allow_two_party" in two


def test_result_keeps_the_mpc_block(tmp_path):
    peers = load(tmp_path, HOLDER).peers
    block = mpc_block(peers, dp=False)
    assert block["data_parties"] == ["a", "b"] and block["compute_parties"] == ["t"]
    assert block["threshold"] == 1 and set(block["sees"]) == {"a", "b", "t", "analyst"}
    data = {"protocol": "s", "job_id": "j", "spec_sha256": "x", "parties": ["a", "b", "t"],
            "mpc": block, "privacy": None, "results": {}}
    result = Result.from_dict(data)
    assert result.mpc == block and result.to_dict() == data
    assert "compute only (no data): t" in result.summary()
    legacy = Result.from_dict({k: v for k, v in data.items() if k != "mpc"})
    assert legacy.mpc is None and "mpc" not in legacy.to_dict()


def test_compute_party_ledger_charges_nothing_but_audits(tmp_path):
    trustee = load(tmp_path, TRUSTEE)
    holder = load(tmp_path, HOLDER, "a.yaml")
    s = spec("{epsilon: 1.0, delta: 0}")
    assert type(job_hooks(holder, s, "j0")) is LedgerHooks
    hooks = job_hooks(trustee, s, "j1")
    assert isinstance(hooks, ComputeOnlyHooks)
    plan = make_plan(s, ["a", "b", "t"])
    try:
        hooks.before_data(plan)
        hooks.before_reveal(plan)
        hooks.done({"results": {"n": {"kind": "count", "value": 3}}})
        failing = ComputeOnlyHooks(trustee, s, "j2")
        failing.before_data(plan)
        failing.failed("party 'b' refused")
        failing.close()
        assert hooks.state.jobs() == []
        events = [(r["event"], r["fields"].get("job_id"), r["fields"].get("role"))
                  for r in hooks.state.audit_records()]
        assert events == [("start", "j1", "compute"), ("reveal", "j1", "compute"),
                          ("start", "j2", "compute"), ("failure", "j2", None)]
        assert hooks.state.verify_audit()[0]
    finally:
        hooks.close()
