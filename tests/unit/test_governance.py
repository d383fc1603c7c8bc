"""Governance without MPC: agreements, sub-budgets in the ledger, consent lists, approvals,
release attestations and reports, catalog (docs/governance.md)."""
from __future__ import annotations

import datetime as dt
import json
from fractions import Fraction as F
from pathlib import Path

import pandas as pd
import pytest
import yaml

from jointstats.plan.accounting import JobCharge
from jointstats.consortium.approval import (WAITING_PREFIX, ApiRefusal, authenticate, rendezvous_entry,
                                  sign_decision, split_queues, verify_decision)
from jointstats.node.catalog import catalog_for, spec_template
from jointstats.ledger.consent import Exclusion, load_exclusion, subject_hash, withdraw, withdrawn
from jointstats.consortium.agreements import admit, explain, select_agreement
from jointstats.engine.report import ReportError, attest, merge, render, verify_file, verify_result
from jointstats.engine.sources import open_source
from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from jointstats.errors import BudgetError, ConfigError, DataError, PolicyError
from jointstats.consortium.keys import make_analyst_key
from jointstats.engine.output import add_noise_plans
from jointstats.plan.sealed import make_plan
from jointstats.plan.spec import Column, parse_spec

PARTIES = ["party_a", "party_b", "party_c"]
SHA = "0" * 64

AGREEMENT = {"id": "dua-1", "dataset": "cohort", "analysts": ["cardio-team"],
             "purposes": ["cardio"], "columns": ["age", "bmi", "smoker"],
             "kinds": ["count", "mean", "crosstab"], "modes": ["dp"],
             "budget": {"epsilon": 2.0, "delta": 0}, "valid": {"from": "2026-01-01", "until": "2027-06-30"},
             "description": "cardiovascular risk study"}


def _spec(purpose="cardio", columns=("age",), privacy="privacy: {epsilon: 1.0, delta: 0}",
          stats="  n: {kind: count}\n  m: {kind: mean, column: age}\n") -> str:
    schema = {"age": "{type: real, bounds: [18, 100]}", "bmi": "{type: real, bounds: [10, 60]}",
              "sbp": "{type: real, bounds: [80, 220]}", "smoker": "{type: categorical, levels: [no, yes]}"}
    cols = "".join(f"  {c}: {schema[c]}\n" for c in columns)
    return (f"name: t\ndataset: cohort\n" + (f"purpose: {purpose}\n" if purpose else "")
            + f"schema:\n{cols}{privacy}\nstatistics:\n{stats}")


def _config(tmp_path: Path, agreements=(AGREEMENT,), extra_policy=None, dataset_extra=None,
            name="cfg.yaml") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    frame = pd.DataFrame({"pid": ["a", "b", "c", "d"], "age": [20.0, 30.0, 40.0, 50.0],
                          "bmi": [20.0, 21.0, 22.0, 23.0], "smoker": ["no", "yes", "no", "yes"]})
    frame.to_csv(tmp_path / "data" / "cohort.csv", index=False)
    for who in ("alice", "bob", "carol"):
        if not (tmp_path / "keys" / f"{who}.pub").exists():
            make_analyst_key(who, tmp_path / "keys")
    pol = {"budget": {"epsilon": 5.0, "delta": 1e-5}, "max_epsilon_per_job": 2.0, "min_count": 0,
           "allow_exact": True, "analysts": {"alice": "keys/alice.pub", "bob": "keys/bob.pub"},
           "groups": {"cardio-team": ["alice"]}, "officers": {"carol": "keys/carol.pub"}}
    if agreements:
        pol["agreements"] = json.loads(json.dumps(list(agreements)))  # no YAML aliases
    pol.update(extra_policy or {})
    cfg = {"party": "party_a", "mpc": {"parties": [{"name": n, "host": "127.0.0.1", "port": 9000 + i}
                                                   for i, n in enumerate(PARTIES)]},
           "datasets": {"cohort": {"source": "data/cohort.csv", **(dataset_extra or {})}},
           "policy": pol, "state": "state/a.sqlite"}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _plan(spec):
    return add_noise_plans(spec, make_plan(spec, PARTIES))


DAY = dt.date(2026, 12, 4)


# ----------------------------------------------------------------------------- agreements

def test_agreement_covers_analyst_through_group(tmp_path):
    cfg = load_party_config(_config(tmp_path))
    spec = parse_spec(_spec(columns=("age", "bmi")))
    assert spec.purpose == "cardio"
    a = select_agreement(cfg, spec, "alice", DAY)
    assert a is not None and a.id == "dua-1" and a.budget_epsilon == 2
    assert "covered by agreement 'dua-1'" in explain(cfg, spec, "alice", DAY)


@pytest.mark.parametrize("analyst, text, kw, day, why", [
    ("bob", None, {}, DAY, "analyst 'bob' is not among its analysts"),
    ("alice", None, {"purpose": "marketing"}, DAY, "purpose 'marketing' is not among its purposes"),
    ("alice", None, {"purpose": None}, DAY, "the spec names no purpose"),
    ("alice", None, {"columns": ("age", "sbp")}, DAY, "column 'sbp' is not among the columns it releases"),
    ("alice", None, {"privacy": ""}, DAY, "exact mode is not allowed"),
    ("alice", None, {"stats": "  v: {kind: variance, column: age}\n"}, DAY,
     "statistic 'v' is a variance, not among its kinds"),
    ("alice", None, {}, dt.date(2027, 7, 1), "expired on 2027-06-30"),
    ("alice", None, {}, dt.date(2025, 12, 31), "not valid before 2026-01-01"),
])
def test_each_reason_an_agreement_refuses_is_named(tmp_path, analyst, text, kw, day, why):
    cfg = load_party_config(_config(tmp_path))
    spec = parse_spec(_spec(**kw))
    with pytest.raises(PolicyError) as err:
        select_agreement(cfg, spec, analyst, day)
    msg = str(err.value)
    assert msg.startswith("party 'party_a' refuses") and "agreement 'dua-1'" in msg and why in msg
    assert "\n" not in msg
    assert "NOT covered" in explain(cfg, spec, analyst, day) and why in explain(cfg, spec, analyst, day)


def test_first_covering_agreement_wins_and_no_agreements_is_backward_compatible(tmp_path):
    second = {**AGREEMENT, "id": "dua-2", "analysts": ["bob"], "columns": ["age", "sbp"]}
    cfg = load_party_config(_config(tmp_path, agreements=(AGREEMENT, second)))
    assert select_agreement(cfg, parse_spec(_spec(columns=("age", "sbp"))), "bob", DAY).id == "dua-2"
    with pytest.raises(PolicyError, match="agreement 'dua-1': analyst 'bob'.*agreement 'dua-2': column 'bmi'"):
        select_agreement(cfg, parse_spec(_spec(columns=("age", "bmi"))), "bob", DAY)
    (tmp_path / "p").mkdir()
    plain = load_party_config(_config(tmp_path / "p", agreements=()))
    assert not plain.policy.governance.enabled
    assert select_agreement(plain, parse_spec(_spec(purpose=None)), "anyone", DAY) is None


def test_a_spec_naming_an_agreement_runs_only_under_that_id_at_every_party(tmp_path):
    """``agreement:`` in the spec makes "an agreement that every party holds" literal: each
    party requires its covering agreement to carry exactly that id, and a party without
    agreements refuses instead of running ungoverned."""
    second = {**AGREEMENT, "id": "dua-2"}
    cfg = load_party_config(_config(tmp_path, agreements=(AGREEMENT, second)))
    assert select_agreement(cfg, parse_spec(_spec()), "alice", DAY).id == "dua-1"
    named = parse_spec(_spec() + "agreement: dua-2\n")
    assert named.agreement == "dua-2"
    assert select_agreement(cfg, named, "alice", DAY).id == "dua-2"
    with pytest.raises(PolicyError, match="agreement 'dua-1': the spec asks for agreement 'dua-9'.*"
                                          "agreement 'dua-2': the spec asks for agreement 'dua-9'"):
        select_agreement(cfg, parse_spec(_spec() + "agreement: dua-9\n"), "alice", DAY)
    (tmp_path / "p").mkdir()
    plain = load_party_config(_config(tmp_path / "p", agreements=()))
    with pytest.raises(PolicyError, match="^party 'party_a' refuses: the spec asks for agreement "
                                          "'dua-2' and this party holds no data-use agreements$"):
        select_agreement(plain, named, "alice", DAY)


def test_agreements_file_and_config_errors(tmp_path):
    (tmp_path / "dua.yaml").write_text(yaml.safe_dump({"agreements": [AGREEMENT]}))
    cfg = load_party_config(_config(tmp_path, agreements=(), extra_policy={"agreements_file": "dua.yaml"}))
    assert [a.id for a in cfg.policy.governance.agreements] == ["dua-1"]
    bad = [
        ({**AGREEMENT, "colour": 1}, "colour: unknown field"),
        ({**AGREEMENT, "dataset": "other"}, "'other' is not one of this party's datasets"),
        ({**AGREEMENT, "budget": {"epsilon": 9.0}}, "exceeds the dataset's lifetime budget"),
        ({**AGREEMENT, "valid": {"from": "2026-13-01"}}, "expected a date YYYY-MM-DD"),
        ({**AGREEMENT, "kinds": ["median"]}, "expected one of count"),
        ({k: v for k, v in AGREEMENT.items() if k != "columns"}, "columns: required"),
    ]
    for entry, match in bad:
        with pytest.raises(ConfigError, match=match):
            load_party_config(_config(tmp_path, agreements=(entry,)))
    with pytest.raises(ConfigError, match="defined twice"):
        load_party_config(_config(tmp_path, agreements=(AGREEMENT, AGREEMENT)))
    with pytest.raises(ConfigError, match="no compliance officer"):
        load_party_config(_config(tmp_path, extra_policy={"officers": {}, "approval": {"exact": True}}))


# ----------------------------------------------------------------------------- ledger

def test_agreement_sub_budget_is_spent_in_the_same_ledger(tmp_path):
    cfg = load_party_config(_config(tmp_path))
    state = NodeState(cfg.state)
    try:
        a = ("dua-1", F(2), F(0))
        one = JobCharge(F(1), F(0), None, F(0))
        state.reserve("j1", "cohort", one, F(5), F(1, 10**5), analyst="alice", spec_sha256=SHA, agreement=a)
        state.commit("j1")
        state.reserve("j2", "cohort", one, F(5), F(1, 10**5), analyst="alice", spec_sha256=SHA, agreement=a)
        with pytest.raises(BudgetError, match="budget of data-use agreement 'dua-1'"):
            state.reserve("j3", "cohort", one, F(5), F(1, 10**5), analyst="alice", spec_sha256=SHA,
                          agreement=a)
        # outside the agreement the dataset's lifetime budget still has room: the same ledger
        state.reserve("j4", "cohort", one, F(5), F(1, 10**5), analyst="alice", spec_sha256=SHA)
        assert state.usage("cohort", F(2), F(0), agreement="dua-1").held.totals.pure_epsilon == 2
        assert state.usage("cohort", F(5), F(1, 10**5)).held.totals.pure_epsilon == 3
        assert state.job("j1").agreement == "dua-1" and state.job("j4").agreement is None
        refusal = [r for r in state.audit_records() if r["event"] == "refusal"][-1]["fields"]
        assert refusal["agreement"] == "dua-1" and refusal["reason"] == "agreement budget"
        ok, why = state.verify_audit()
        assert ok, why
        # moving a job to another agreement (to win its sub-budget back) is caught
        state._conn.execute("UPDATE jobs SET agreement = NULL WHERE job_id = 'j1'")
        ok, why = state.verify_audit()
        assert not ok and "agreement" in why
    finally:
        state.close()


def test_admit_checks_agreement_budget_and_approval(tmp_path):
    agreement = {**AGREEMENT, "approval": {"above_epsilon": 0.5}}
    cfg = load_party_config(_config(tmp_path, agreements=(agreement,)))
    state = NodeState(cfg.state)
    try:
        spec = parse_spec(_spec())
        adm = admit(cfg, state, spec, _plan(spec), "alice")
        assert adm.agreement.id == "dua-1" and adm.waits and "epsilon 1 above 0.5" in adm.approval_reasons[0]
        state.reserve("x", "cohort", JobCharge(F(3, 2), F(0), None, F(0)), F(5), F(1, 10**5),
                      analyst="alice", spec_sha256=SHA, agreement=("dua-1", F(2), F(0)))
        with pytest.raises(BudgetError, match="party 'party_a': budget of data-use agreement 'dua-1'"):
            admit(cfg, state, spec, _plan(spec), "alice")
    finally:
        state.close()


# ----------------------------------------------------------------------------- consent

def test_withdrawal_list_audits_a_salted_hash_and_sources_leave_rows_out(tmp_path):
    cfg = load_party_config(_config(tmp_path, dataset_extra={"subject_id": "pid"}))
    state = NodeState(cfg.state)
    try:
        assert load_exclusion(cfg, "cohort") == Exclusion("pid", frozenset())
        assert withdraw(cfg, ["b", "b", "zz"], state) == ("cohort", 2)
        assert withdraw(cfg, ["b"], state) == ("cohort", 0)
        assert withdrawn(cfg) == ("cohort", ["b", "zz"])
        text = json.dumps(list(state.audit_records()))
        assert '"b"' not in text and '"zz"' not in text
        from jointstats.ledger.consent import node_secret
        hashes = [r["fields"]["subject_hash"] for r in state.audit_records() if r["event"] == "withdrawal"]
        assert hashes == [subject_hash(node_secret(cfg), "cohort", s) for s in ("b", "zz")]
        assert state.verify_audit()[0]
    finally:
        state.close()
    ex = load_exclusion(cfg, "cohort")
    cols = [Column("age", "real", (18.0, 100.0))]
    frame = pd.read_csv(tmp_path / "data" / "cohort.csv")
    frame.to_parquet(tmp_path / "data" / "c.parquet", index=False)
    import sqlite3
    with sqlite3.connect(tmp_path / "data" / "c.db") as con:
        frame.to_sql("t", con, index=False)
    for source in ("data/cohort.csv", "data/c.parquet", "sqlite:///data/c.db?table=t"):
        chunks = list(open_source(source, tmp_path).iter_chunks(cols, "party_a", exclude=ex))
        assert sorted(v for c in chunks for v in c.numeric["age"]) == [20.0, 40.0, 50.0], source
    with pytest.raises(DataError, match="column 'nope' .*subject_id.* is missing"):
        list(open_source("data/cohort.csv", tmp_path).iter_chunks(cols, "party_a",
                                                                   exclude=Exclusion("nope", frozenset("x"))))


def test_consent_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not for engine sources"):
        load_party_config(_config(tmp_path, dataset_extra={"subject_id": "pid",
                                                           "source": "postgresql://h/db?table=t"}))
    cfg = load_party_config(_config(tmp_path, agreements=()))
    state = NodeState(cfg.state)
    try:
        with pytest.raises(ConfigError, match="has no subject_id"):
            withdraw(cfg, ["x"], state, "cohort")
    finally:
        state.close()


# ----------------------------------------------------------------------------- approvals and roles

def test_officer_decisions_and_roles(tmp_path):
    cfg = load_party_config(_config(tmp_path))
    keys = tmp_path / "keys"
    body = sign_decision(keys / "carol.key", "carol", "job-1", False, "too much epsilon")
    d = verify_decision(cfg, "job-1", body, False)
    assert (d.officer, d.approve, d.reason) == ("carol", False, "too much epsilon")
    with pytest.raises(ApiRefusal, match="invalid signature"):
        verify_decision(cfg, "job-2", body, False)          # another job
    with pytest.raises(ApiRefusal, match="invalid signature"):
        verify_decision(cfg, "job-1", body, True)           # a rejection is no approval
    with pytest.raises(ApiRefusal, match="not a compliance officer") as err:
        verify_decision(cfg, "job-1", sign_decision(keys / "alice.key", "alice", "job-1", True), True)
    assert err.value.status == 403
    with pytest.raises(ApiRefusal, match="needs a reason"):
        verify_decision(cfg, "job-1", sign_decision(keys / "carol.key", "carol", "job-1", False), False)
    from jointstats.node.client import signed_headers
    h = signed_headers(keys / "alice.key", "GET /audit", "GET /audit", "alice")
    with pytest.raises(ApiRefusal, match="analyst 'alice' may not") as err:
        authenticate(cfg, h, "GET /audit", "GET /audit", ("officer",))
    assert err.value.status == 403
    h = signed_headers(keys / "carol.key", "GET /audit", "GET /audit", "carol")
    assert authenticate(cfg, h, "GET /audit", "GET /audit", ("officer",)).role == "officer"
    revoked = load_party_config(_config(tmp_path, extra_policy={"revoked": ["carol", "alice"]}, name="r.yaml"))
    with pytest.raises(ApiRefusal, match=r"revoked at party .* \(policy.revoked\)"):
        authenticate(revoked, h, "GET /audit", "GET /audit", ("officer",))
    assert revoked.policy.analyst_key("alice") is None
    with pytest.raises(PolicyError, match="analyst 'alice' is revoked"):
        select_agreement(revoked, parse_spec(_spec()), "alice", DAY)


def test_waiting_jobs_in_the_rendezvous():
    entry = (1, "j", "alice", "abc")
    marked = rendezvous_entry(entry, True)
    assert marked[3] == WAITING_PREFIX + "abc" and rendezvous_entry(entry, False) == entry
    ready, waiting = split_queues({"a": [list(entry)], "b": [list(marked)]})
    assert ready == {"a": [list(entry)], "b": []} and waiting == {"a": set(), "b": {entry}}


# ----------------------------------------------------------------------------- reports

def _signed(tmp_path):
    cfgs = []
    for i, name in enumerate(PARTIES):
        d = tmp_path / name
        d.mkdir()
        path = _config(d, agreements=())
        text = path.read_text().replace("party: party_a", f"party: {name}")
        path.write_text(text)
        cfgs.append(load_party_config(path))
    result = {"protocol": "t", "job_id": "j1", "spec_sha256": SHA, "parties": PARTIES,
              "privacy": {"epsilon": 1.0, "delta": 0, "mechanism": "discrete_laplace"},
              "results": {"n": {"kind": "count", "value": 12,
                                "noise": {"mechanism": "discrete_laplace", "scale": 1.0, "ci95_halfwidth": 3.0}},
                          "t": {"kind": "crosstab", "rows": ["no", "yes"], "cols": ["x"],
                                "counts": [[5], [None]], "min_count": 3}}}
    atts = {c.party: attest(c, result, analyst="alice", purpose="cardio", agreement="dua-1",
                            dataset_fingerprint={"value": "f" * 64, "scope": "file contents"},
                            approvals=[{"officer": "carol", "decision": "approved", "reason": ""}])
            for c in cfgs}
    return cfgs, merge(result, atts)


def test_release_report_renders_verifies_and_fails_after_any_change(tmp_path):
    cfgs, result = _signed(tmp_path)
    assert len(verify_result(result)) == 3
    from jointstats.engine.report import release_public_key
    pins = {c.party: release_public_key(c) for c in cfgs}
    assert "key not pinned" not in verify_result(result, pins)[0]
    with pytest.raises(ReportError, match="other than its pinned"):
        verify_result(result, {**pins, "party_b": pins["party_a"]})
    assert result["provenance"]["agreement"] == "dua-1"
    for key, value in (("purpose", "marketing"), ("agreement", "dua-9"), ("analyst", "mallory")):
        summary = json.loads(json.dumps(result))
        summary["provenance"][key] = value     # the unsigned summary must agree with the signed
        with pytest.raises(ReportError, match="provenance summary"):
            verify_result(summary)
    tampered = json.loads(json.dumps(result))
    tampered["results"]["n"]["value"] = 13
    with pytest.raises(ReportError, match="party 'party_a': signature does NOT match"):
        verify_result(tampered)
    for fmt in ("md", "html"):
        text = render(result, fmt)
        assert "cardio" in text and "dua-1" in text and "suppressed cells (below min_count): 1" in text
        assert "approved by carol" in text and "95% half-width 3" in text
        path = tmp_path / f"r.{fmt}"
        path.write_text(text)
        assert verify_file(path)[-1].endswith(f"report verified ({fmt})")
        for pos in (10, len(text) // 2, len(text) - 5):   # any byte, prose or embedded result
            changed = text[:pos] + ("X" if text[pos] != "X" else "Y") + text[pos + 1:]
            path.write_text(changed)
            with pytest.raises(ReportError):
                verify_file(path)
    from jointstats.result import Result
    path = tmp_path / "r.json"
    path.write_text(Result.from_dict(result).to_json())
    assert verify_file(path)[-1].endswith("result verified")
    path.write_text(Result.from_dict(result).to_json() + " ")
    with pytest.raises(ReportError, match="not as released"):
        verify_file(path)


# ----------------------------------------------------------------------------- catalog

def test_catalog_lets_an_analyst_write_a_covered_spec(tmp_path):
    schema = {"age": {"type": "real", "bounds": [18, 100]}, "bmi": {"type": "real", "bounds": [10, 60]},
              "smoker": {"type": "categorical", "levels": ["no", "yes"]},
              "sbp": {"type": "real", "bounds": [80, 220]}}
    cfg = load_party_config(_config(tmp_path, dataset_extra={"schema": schema, "description": "cohort"}))
    state = NodeState(cfg.state)
    try:
        cat = catalog_for(cfg, state, "alice")
        ds = cat["datasets"]["cohort"]
        assert set(ds["columns"]) == {"age", "bmi", "smoker"}   # sbp is not released to alice
        assert ds["agreements"][0]["id"] == "dua-1" and ds["description"] == "cohort"
        assert ds["agreements"][0]["remaining"]["epsilon"] == 2.0 and not ds["exact_possible"]
        assert catalog_for(cfg, state, "bob")["datasets"] == {}
        text = spec_template([cat, cat, cat], "cohort")
        spec = parse_spec(text)
        assert spec.purpose == "cardio"
        assert select_agreement(cfg, spec, "alice").id == "dua-1"
        with pytest.raises(ConfigError, match="offers no dataset"):
            spec_template([cat, catalog_for(cfg, state, "bob")], "cohort")
    finally:
        state.close()


# ----------------------------------------------------------------------------- certificates

def test_crl_revoke_and_scheduled_rotation(tmp_path):
    from jointstats.consortium.crl import issue_crl, issue_pending, revoke, revoked_serials, rotate
    from jointstats.consortium.keys import make_ca, make_party_cert
    from cryptography import x509
    make_ca(tmp_path / "ca")
    old, _ = make_party_cert("party_c", 2, tmp_path / "ca", tmp_path / "keys")
    serial = x509.load_pem_x509_certificate(old.read_bytes()).serial_number
    crl = issue_crl(tmp_path / "ca", [])
    assert revoked_serials(crl) == []
    new, _ = rotate("party_c", 2, tmp_path / "ca", tmp_path / "new", old,
                    dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    assert new.exists() and new != old
    _, due = issue_pending(tmp_path / "ca")                       # not yet: both still valid
    assert due == 0 and revoked_serials(crl) == []
    _, due = issue_pending(tmp_path / "ca", now=dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc))
    assert due == 1 and revoked_serials(crl) == [serial]
    with pytest.raises(ConfigError, match="not party 'party_a'"):
        rotate("party_a", 0, tmp_path / "ca", tmp_path / "x", new, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    path, who = revoke(new, tmp_path / "ca")
    assert who == "party_c (index 2)" and len(revoked_serials(path)) == 2
