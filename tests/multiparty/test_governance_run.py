"""Governance over real party processes (``jointstats run``): data-use agreements, consent
withdrawal, sub-budgets, signed release reports (docs/governance.md)."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from jointstats import run, validate
from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from jointstats.errors import PartyError, PolicyError
from jointstats.consortium.keys import make_analyst_key
from tests.conftest import cohort_frame, write_consortium

ROWS = 40


def _spec(purpose="cardio", extra_col="", privacy="", stats=None):
    stats = stats or "  n: {kind: count}\n  mean_age: {kind: mean, column: age}\n  smoking: {kind: crosstab, rows: smoker, cols: region}\n"
    return (f"name: gov\ndataset: cohort\npurpose: {purpose}\nschema:\n"
            "  age: {type: real, bounds: [18, 100]}\n"
            "  smoker: {type: categorical, levels: [\"no\", \"yes\"]}\n"
            "  region: {type: categorical, levels: [north, south, east, west]}\n"
            + extra_col + privacy + f"statistics:\n{stats}")


@pytest.fixture
def governed(tmp_path):
    frames = [cohort_frame(ROWS, 40 + i) for i in range(3)]
    for i, f in enumerate(frames):
        f.insert(0, "pid", [f"{'abc'[i]}-subject-{k}" for k in range(len(f))])
    paths = write_consortium(tmp_path, frames)
    for p in paths:
        cfg = yaml.safe_load(p.read_text())
        cfg["datasets"]["cohort"]["subject_id"] = "pid"
        cfg["policy"]["agreements"] = [{
            "id": f"dua-{cfg['party']}", "dataset": "cohort", "analysts": ["local"],
            "purposes": ["cardio"], "columns": ["age", "smoker", "region"],
            "kinds": ["count", "mean", "crosstab"], "modes": ["dp", "exact"],
            "budget": {"epsilon": 1.5, "delta": 0},
            "valid": {"from": "2026-01-01", "until": "2099-12-31"}}]
        p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tmp_path, frames, paths


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jointstats.cli.commands", *args], capture_output=True, text=True)


def test_agreements_consent_and_signed_report(governed):
    root, frames, paths = governed
    spec = root / "spec.yaml"
    spec.write_text(_spec())
    text = validate(spec, paths)
    assert "party party_b: covered by agreement 'dua-party_b'" in text

    # exact mode under the agreement matches the pooled answer
    first = run(spec, paths, out=root / "r1.json")
    both = pd.concat(frames)
    assert first.results["n"]["value"] == 3 * ROWS
    assert first.results["mean_age"]["value"] == pytest.approx(both.age.mean(), rel=1e-9)

    # party_b's subject b-subject-7 withdraws: every later job leaves that row out (only at party_b)
    out = _cli("consent", "withdraw", "--config", str(paths[1]), "b-subject-7")
    assert out.returncode == 0, out.stderr
    second = run(spec, paths, out=root / "r2.json")
    rest = both[both.pid != "b-subject-7"]
    assert second.results["n"]["value"] == 3 * ROWS - 1
    assert second.results["mean_age"]["value"] == pytest.approx(rest.age.mean(), rel=1e-9)
    table = pd.crosstab(rest.smoker, rest.region).reindex(
        index=["no", "yes"], columns=["north", "south", "east", "west"], fill_value=0)
    assert second.results["smoking"]["counts"] == table.to_numpy().tolist()

    # the audit: a salted hash, never the id; the number in force at the job, own log only
    for i, p in enumerate(paths):
        state = NodeState(load_party_config(p).state)
        try:
            recs = list(state.audit_records())
            assert "b-subject-7" not in json.dumps(recs)
            consent = [r["fields"]["withdrawals_in_force"] for r in recs if r["event"] == "consent"]
            assert consent == ([0, 1] if i == 1 else [0, 0])
            assert state.verify_audit()[0]
        finally:
            state.close()

    # provenance: every party's agreement and signature; same data, same fingerprint
    p1, p2 = (json.loads((root / f"r{k}.json").read_text())["provenance"] for k in (1, 2))
    assert p2["purpose"] == "cardio" and p2["analyst"] == "local"
    fp = {k: {p: prov["parties"][p]["dataset_fingerprint"]["value"] for p in prov["parties"]}
          for k, prov in (("1", p1), ("2", p2))}
    assert fp["1"]["party_a"] == fp["2"]["party_a"] and fp["1"]["party_b"] != fp["2"]["party_b"]
    assert p2["parties"]["party_c"]["agreement"] == "dua-party_c"
    out = _cli("report", str(root / "r2.json"), "--out", str(root / "r2.md"))
    assert out.returncode == 0, out.stderr
    out = _cli("report", "verify", str(root / "r2.md"))
    assert out.returncode == 0 and "report verified" in out.stdout, out.stderr
    report = (root / "r2.md").read_text()
    (root / "bad.md").write_text(report.replace(str(3 * ROWS - 1), str(3 * ROWS), 1))
    out = _cli("report", "verify", str(root / "bad.md"))
    assert out.returncode != 0 and "changed" in out.stderr


def test_outside_the_agreement_refused_naming_party_agreement_reason(governed):
    root, frames, paths = governed
    cases = [
        (_spec(extra_col="  bmi: {type: real, bounds: [10, 60]}\n"), "column 'bmi' is not among the columns it releases"),
        (_spec(purpose="marketing"), "purpose 'marketing' is not among its purposes"),
        (_spec(stats="  v: {kind: variance, column: age}\n"), "statistic 'v' is a variance"),
    ]
    for text, why in cases:
        spec = root / "s.yaml"
        spec.write_text(text)
        with pytest.raises(PolicyError, match=why):
            validate(spec, paths)
        with pytest.raises(PartyError) as err:
            run(spec, paths)
        msg = str(err.value)
        assert "agreement 'dua-party_" in msg and why in msg and "\n" not in msg
    # refused before any data was read, audited at every party; nothing reserved
    for p in paths:
        state = NodeState(load_party_config(p).state)
        try:
            events = [r["event"] for r in state.audit_records()]
            assert events.count("refusal") == 3 and "reserve" not in events and "consent" not in events
            assert state.verify_audit()[0]
        finally:
            state.close()


def test_agreement_sub_budget_runs_out_before_the_dataset_budget(governed):
    root, frames, paths = governed
    spec = root / "dp.yaml"
    spec.write_text(_spec(privacy="privacy: {epsilon: 1.0, delta: 0}\n",
                          stats="  n: {kind: count}\n"))
    result = run(spec, paths)
    assert result.provenance["parties"]["party_a"]["agreement"] == "dua-party_a"
    with pytest.raises(PartyError, match="budget of data-use agreement 'dua-party_"):
        run(spec, paths)
    for p in paths:
        cfg = load_party_config(p)
        state = NodeState(cfg.state)
        try:
            use = state.usage("cohort", 1.5, 0, agreement=f"dua-{cfg.party}")
            assert use.spent.pure_epsilon == 1 and use.reserved.jobs == 0
            assert state.verify_audit()[0]
        finally:
            state.close()


def test_a_local_run_cannot_skip_an_officers_approval(governed):
    root, frames, paths = governed
    cfg = yaml.safe_load(paths[2].read_text())
    make_analyst_key("carol", root / "officers")
    cfg["policy"]["officers"] = {"carol": str(root / "officers" / "carol.pub")}
    cfg["policy"]["approval"] = {"exact": True}
    paths[2].write_text(yaml.safe_dump(cfg, sort_keys=False))
    spec = root / "spec.yaml"
    spec.write_text(_spec())
    assert "party party_c: covered by agreement 'dua-party_c' for analyst 'local'; waits for an " \
           "officer's approval (exact mode)" in validate(spec, paths)
    with pytest.raises(PartyError, match="party 'party_c' refuses: the job needs a compliance "
                                         r"officer's approval \(exact mode\)"):
        run(spec, paths)
