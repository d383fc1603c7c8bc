"""The ledger under the lifetime rule: replayed job sequences, refusals that change nothing,
and schema-1 state files migrated in place."""
from __future__ import annotations

import json
import sqlite3
import tempfile
from fractions import Fraction as F
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jointstats.plan.accounting import JobCharge, LedgerTotals, job_charge, lifetime_spend
from jointstats.ledger.state import GENESIS_HASH, NodeState, record_hash
from jointstats.errors import BudgetError

SHA = "cd" * 32
BUDGET = (F(3), F(1, 10**5))

# a few charges, computed once: pure and zCDP, with and without sampler TV
CHARGES = {
    "pure-half": job_charge(F(1, 2), 0, 40),
    "pure-one": job_charge(1, 0, 300),
    "zcdp-one": job_charge(1, F(1, 10**6), 64),
    "zcdp-half": job_charge(F(1, 2), F(1, 10**6), 7),
    "zcdp-two": job_charge(2, F(1, 10**6), 500),
}
OUTCOMES = ("done", "fail-before-commit", "fail-after-commit", "release")


def _fields(state: NodeState) -> list[dict]:
    return [r for r in state.audit_records()]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.sampled_from(sorted(CHARGES)), st.sampled_from(OUTCOMES),
                               st.sampled_from(["cohort", "cohort", "registry"])),
                     min_size=1, max_size=8))
@pytest.mark.slow
def test_replayed_jobs_charge_exactly_what_they_committed(jobs):
    with tempfile.TemporaryDirectory() as d:
        s = NodeState(Path(d) / "s.sqlite")
        committed: dict[str, list[JobCharge]] = {"cohort": [], "registry": []}
        try:
            for i, (name, outcome, ds) in enumerate(jobs):
                charge, job = CHARGES[name], f"job{i}"
                before = LedgerTotals.of(committed[ds])
                fits = lifetime_spend(before.add(charge), *BUDGET).fits
                n_records = len(_fields(s))
                if not fits:
                    with pytest.raises(BudgetError) as exc:
                        s.reserve(job, ds, charge, *BUDGET, analyst="alice", spec_sha256=SHA)
                    msg = str(exc.value)
                    assert "\n" not in msg and f"dataset {ds!r} exceeded" in msg and job in msg
                    # nothing changed but one audited refusal carrying the charge
                    recs = _fields(s)
                    assert len(recs) == n_records + 1 and recs[-1]["event"] == "refusal"
                    assert JobCharge.from_dict(recs[-1]["fields"]["charge"]) == charge
                    assert s.job(job) is None and s.totals(ds) == before
                    continue
                s.reserve(job, ds, charge, *BUDGET, analyst="alice", spec_sha256=SHA)
                assert s.job(job).charge == charge
                if outcome == "release":
                    s.release(job, "peer refused")
                elif outcome == "fail-before-commit":
                    s.fail(job, "party died before commit")
                else:
                    s.commit(job)
                    committed[ds].append(charge)
                    if outcome == "done":
                        s.mark_done(job, {"n": "count"})
                    else:
                        s.fail(job, "party died after commit")
            for ds, charges in committed.items():
                totals = LedgerTotals.of(charges)
                # exact sums of what each committed job was charged
                assert s.totals(ds) == totals
                assert totals.pure_epsilon == sum((c.epsilon for c in charges if c.rho is None), F(0))
                assert totals.rho == sum((c.rho for c in charges if c.rho is not None), F(0))
                assert totals.tv == sum((c.tv for c in charges), F(0))
                # the derived guarantee is the rule's
                use = s.usage(ds, *BUDGET)
                rule = lifetime_spend(totals, *BUDGET)
                assert use.spent_rule == rule and use.held == rule and rule.fits
                assert s.spent(ds, *BUDGET) == (rule.epsilon, rule.delta)
                assert s.remaining(ds, *BUDGET) == (rule.remaining_epsilon, rule.remaining_delta)
                assert s.spent(ds) == (sum((c.epsilon for c in charges), F(0)),
                                       sum((c.delta for c in charges), F(0)))
            ok, why = s.verify_audit()
            assert ok, why
            # every ledger record carries the job's whole charge
            for r in _fields(s):
                led = r["fields"].get("ledger")
                if led:
                    job = s.job(r["fields"]["job_id"])
                    assert JobCharge.from_dict({k: led[k] for k in ("epsilon", "delta", "rho", "tv")}) \
                        == job.charge
        finally:
            s.close()


def test_a_job_over_budget_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    s = NodeState(tmp_path / "s.sqlite")
    z = CHARGES["zcdp-two"]
    for j in ("a", "b"):
        s.reserve(j, "cohort", z, *BUDGET, analyst="alice", spec_sha256=SHA)
        s.commit(j)
    head = s.audit_head()
    totals = s.totals("cohort")
    assert lifetime_spend(totals, *BUDGET).fits
    assert not lifetime_spend(totals.add(z), *BUDGET).fits
    with pytest.raises(BudgetError, match=r"^privacy budget of dataset 'cohort' exceeded: remaining "
                                          r"epsilon .* job 'c' asked epsilon 2, delta 1e-06, rho .*, "
                                          r"tv .*; with it the ledger would need epsilon "):
        s.reserve("c", "cohort", z, *BUDGET, analyst="alice", spec_sha256=SHA)
    assert s.totals("cohort") == totals and s.job("c") is None
    assert s.audit_head()[0] == head[0] + 1           # only the refusal was appended
    ok, why = s.verify_audit()
    assert ok, why
    # tampering with a stored charge is caught by the audit replay
    conn = sqlite3.connect(str(tmp_path / "s.sqlite"))
    conn.execute("UPDATE jobs SET rho = '1/1000000' WHERE job_id = 'a'")
    conn.commit()
    conn.close()
    ok, why = s.verify_audit()
    assert not ok and "'a'" in why and "rho" in why
    s.close()


# --------------------------------------------------------------------------- schema 1 files

_SCHEMA_1 = """
CREATE TABLE jobs (job_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, epsilon TEXT NOT NULL,
    delta TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN
    ('reserved','committed','done','released','failed')), analyst TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL, reason TEXT,
    revealed TEXT);
CREATE INDEX jobs_dataset ON jobs(dataset, status);
CREATE TABLE nonces (nonce TEXT PRIMARY KEY, analyst TEXT NOT NULL, seen_at TEXT NOT NULL);
CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, event TEXT NOT NULL,
    fields TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TABLE audit_head (id INTEGER PRIMARY KEY CHECK (id = 1), count INTEGER NOT NULL,
    hash TEXT NOT NULL);
"""


def _schema_1_file(path: Path) -> None:
    """A state file as jointstats wrote it before rho and tv: two jobs, one pure, one (eps, delta)."""
    conn = sqlite3.connect(str(path))
    conn.executescript(_SCHEMA_1)
    prev, seq = GENESIS_HASH, 0
    ts = "2026-12-01T10:00:00.000000+00:00"
    for job, eps, dlt in (("old-pure", "1/2", "0/1"), ("old-zcdp", "1/1", "1/1000000")):
        conn.execute("INSERT INTO jobs VALUES (?, 'cohort', ?, ?, 'committed', 'alice', ?, ?, ?, "
                     "NULL, NULL)", (job, eps, dlt, SHA, ts, ts))
        for event, status in (("reserve", "reserved"), ("commit", "committed")):
            seq += 1
            fields = {"job_id": job, "ledger": {"dataset": "cohort", "epsilon": eps,
                                                "delta": dlt, "status": status}}
            fj = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            h = record_hash(seq, prev, ts, event, fj)
            conn.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?)", (seq, ts, event, fj, prev, h))
            prev = h
    conn.execute("INSERT INTO audit_head VALUES (1, ?, ?)", (seq, prev))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


def test_schema_1_files_open_migrated_with_legacy_charges(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    _schema_1_file(path)
    s = NodeState(path)
    try:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == 3
        ok, why = s.verify_audit()
        assert ok, why
        assert [r["event"] for r in s.audit_records()][-1] == "migration"
        pure, old = s.job("old-pure"), s.job("old-zcdp")
        assert pure.charge == JobCharge(F(1, 2), 0, None, 0)
        assert old.charge == JobCharge(1, F(1, 10**6), None, 0)
        # old rows: pure epsilon, no rho, no tv; the old (eps, delta) job's delta is a legacy term
        assert s.totals("cohort") == LedgerTotals(F(3, 2), F(1, 10**6), F(0), F(0), F(1, 10**6), 2)
        rule = lifetime_spend(s.totals("cohort"), 10, F(1, 10**5))
        assert rule.fits and rule.epsilon == F(3, 2)
        # new jobs compose with the old ones; the legacy delta is charged at (1 + e^spent eps)
        # (1 + e^2.5) 1e-6 > 1e-5 leaves a delta budget of 1e-5 no room for a zCDP job
        with pytest.raises(BudgetError, match="more delta than its budget"):
            s.reserve("new", "cohort", CHARGES["zcdp-one"], 10, F(1, 10**5), analyst="alice",
                      spec_sha256=SHA)
        s.reserve("new", "cohort", CHARGES["zcdp-one"], 10, F(1, 10**4), analyst="alice",
                  spec_sha256=SHA)
        s.commit("new")
        assert s.totals("cohort").rho == CHARGES["zcdp-one"].rho
        ok, why = s.verify_audit()
        assert ok, why
    finally:
        s.close()
    # opening it again is a no-op (no second migration)
    s = NodeState(path)
    try:
        assert [r["event"] for r in s.audit_records()].count("migration") == 1
    finally:
        s.close()


# --------------------------------------------------------------------------- policy


def test_a_zero_delta_budget_means_pure_dp_only(tmp_path: Path) -> None:
    """delta 0 in a policy: pure jobs run (their sampler deltas, ~1e-10, are recorded and
    stated, not held against it); any job asking delta > 0 is refused before any data."""
    import yaml

    from jointstats.plan.accounting import LedgerTotals, job_charge, lifetime_spend
    from jointstats.consortium.config import load_party_config
    from jointstats.errors import PolicyError
    from jointstats.plan.sealed import make_plan
    from jointstats.consortium.policy import check_job
    from jointstats.plan.spec import parse_spec

    cfg = {"party": "a", "mpc": {"parties": [{"name": n, "host": "127.0.0.1", "port": 9000 + i}
                                             for i, n in enumerate("abc")]},
           "datasets": {"cohort": {"source": "data/a.csv"}},
           "policy": {"budget": {"epsilon": 10, "delta": 0}, "min_count": 0}}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    head = "name: t\ndataset: cohort\nschema:\n  age: {type: real, bounds: [0, 100]}\n"
    pure = parse_spec(head + "privacy: {epsilon: 1.0, delta: 0}\nstatistics:\n  n: {kind: count}\n")
    check_job(load_party_config(path), pure, make_plan(pure, ["a", "b", "c"]))
    gauss = parse_spec(head + "privacy: {epsilon: 1.0, delta: 1.0e-9}\nstatistics:\n  n: {kind: count}\n")
    with pytest.raises(PolicyError, match=r"^party 'a' refuses: privacy.delta 1e-09 exceeds its lifetime "
                                          r"delta budget 0"):
        check_job(load_party_config(path), gauss, make_plan(gauss, ["a", "b", "c"]))
    totals = LedgerTotals.of([job_charge(1, 0, 40)] * 10)
    spend = lifetime_spend(totals, 10, 0)
    assert spend.fits and spend.epsilon == 10 and 0 < spend.delta < 1e-8
    assert not lifetime_spend(totals.add(job_charge(1, 0, 40)), 10, 0).fits


def test_budget_view_shows_rho_and_tv(tmp_path: Path) -> None:
    import yaml

    from jointstats.ledger.view import budget_lines

    cfg = {"party": "a", "mpc": {"parties": [{"name": n, "host": "127.0.0.1", "port": 9000 + i}
                                             for i, n in enumerate("abc")]},
           "datasets": {"cohort": {"source": "data/a.csv"}, "registry": {"source": "data/b.csv"}},
           "policy": {"budget": {"epsilon": 3, "delta": 1.0e-5}}, "state": "state/a.sqlite"}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert budget_lines(path)[-1] == "  no jobs yet"
    s = NodeState(tmp_path / "state" / "a.sqlite")
    for job, name in (("p", "pure-one"), ("z", "zcdp-one")):
        s.reserve(job, "cohort", CHARGES[name], *BUDGET, analyst="alice", spec_sha256=SHA)
        s.commit(job)
    s.reserve("r", "cohort", CHARGES["zcdp-half"], *BUDGET, analyst="alice", spec_sha256=SHA)
    rule = s.usage("cohort", *BUDGET).spent_rule
    s.close()
    lines = budget_lines(path)
    assert lines[0] == "party a: lifetime budget epsilon 3, delta 1e-05 per dataset"
    cohort = next(line for line in lines if line.startswith("  cohort:"))
    tv = CHARGES["pure-one"].tv + CHARGES["zcdp-one"].tv
    assert cohort.startswith(f"  cohort: spent epsilon {float(rule.epsilon):.6g} delta 1e-05 "
                             f"(pure epsilon 1, rho {float(CHARGES['zcdp-one'].rho):.6g}, "
                             f"tv {float(tv):.6g}; 2 jobs); reserved 1 jobs")
    assert "remaining epsilon" in cohort and "\n" not in cohort
    assert any(line.startswith("  registry: spent epsilon 0 delta 0 ") for line in lines)
