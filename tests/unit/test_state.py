"""NodeState: privacy ledger, jobs, hash-chained audit log, crash safety."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from fractions import Fraction as F
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jointstats.plan.accounting import JobCharge, exp_hi, job_charge
from jointstats.ledger.state import Job, NodeState, ReplayError, StateError
from jointstats.errors import AuthError, BudgetError, JointStatsError

REPO = Path(__file__).resolve().parents[2]
SHA = "ab" * 32


@pytest.fixture
def state(tmp_path: Path) -> NodeState:
    s = NodeState(tmp_path / "state" / "node.sqlite")
    yield s
    s.close()


def reserve(s: NodeState, job: str, eps, delta=0, b_eps=1, b_delta=0, dataset: str = "cohort") -> None:
    """Reserve a legacy-style charge (epsilon, delta, no rho, no sampler tv)."""
    s.reserve(job, dataset, JobCharge(eps, delta, None, 0), b_eps, b_delta, analyst="alice",
              spec_sha256=SHA)


def records(s: NodeState) -> list[dict]:
    return list(s.audit_records())


def raw(s: NodeState) -> sqlite3.Connection:
    """A second, independent connection for tampering (as an attacker with file access would)."""
    return sqlite3.connect(str(s.path), isolation_level=None)


# --------------------------------------------------------------------------- file settings

def test_file_is_wal_with_full_sync_and_created_with_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.sqlite"
    s = NodeState(path)
    assert path.exists()
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()


def test_not_a_state_file_is_a_config_error(tmp_path: Path) -> None:
    from jointstats.errors import ConfigError
    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="junk.sqlite"):
        NodeState(p)


# --------------------------------------------------------------------------- ledger

def test_budget_exhaustion_over_several_jobs(state: NodeState) -> None:
    for i in range(4):
        reserve(state, f"j{i}", F(1, 4))
        state.commit(f"j{i}")
    assert state.spent("cohort") == (F(1), F(0))
    with pytest.raises(BudgetError) as exc:
        reserve(state, "j4", F(1, 100))
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'cohort'" in msg and "remaining epsilon 0," in msg and "asked epsilon 0.01" in msg
    assert state.job("j4") is None
    # the refusal is audited, the ledger did not change
    last = records(state)[-1]
    assert last["event"] == "refusal" and last["fields"]["reason"] == "budget"
    assert state.spent("cohort") == (F(1), F(0))
    assert state.verify_audit()[0]


def test_reserved_budget_counts_against_new_reservations(state: NodeState) -> None:
    reserve(state, "a", F(3, 5))
    with pytest.raises(BudgetError, match=r"remaining epsilon 0\.4, .*asked epsilon 0\.5"):
        reserve(state, "b", F(1, 2))
    assert state.reserved("cohort") == (F(3, 5), F(0))
    assert state.remaining("cohort", 1, 0) == (F(2, 5), F(0))
    reserve(state, "c", F(2, 5))          # exactly the rest is fine
    assert state.remaining("cohort", 1, 0) == (F(0), F(0))


def test_exact_fractions_point_one_three_times(state: NodeState) -> None:
    for i in range(3):
        reserve(state, f"j{i}", F("0.1"), b_eps=F("0.3"))
        state.commit(f"j{i}")
    assert state.spent("cohort")[0] == F(3, 10)        # not 0.30000000000000004
    with pytest.raises(BudgetError):
        reserve(state, "j3", F(1, 10**12), b_eps=F("0.3"))
    # floats are read as the decimal they print as, so 0.1 + 0.1 + 0.1 == 0.3 too
    for i in range(3):
        reserve(state, f"f{i}", 0.1, b_eps=0.3, dataset="other")
    assert state.reserved("other")[0] == F(3, 10)
    stored = raw(state).execute("SELECT epsilon FROM jobs WHERE job_id='j0'").fetchone()[0]
    assert stored == "1/10"


def test_delta_budget_is_enforced_separately(state: NodeState) -> None:
    # without zCDP jobs the deltas add up (basic composition)
    reserve(state, "a", F(1, 10), F(1, 10**5), b_eps=10, b_delta=F(2, 10**5))
    reserve(state, "b", F(1, 10), F(1, 10**5), b_eps=10, b_delta=F(2, 10**5))
    with pytest.raises(BudgetError, match=r"remaining epsilon 9\.8, delta 0 .*asked epsilon 0\.1, delta 1e-09"):
        reserve(state, "c", F(1, 10), F(1, 10**9), b_eps=10, b_delta=F(2, 10**5))
    reserve(state, "d", F(1, 10), 0, b_eps=10, b_delta=F(2, 10**5))


def test_sampler_tv_of_pure_jobs_is_charged_against_delta(state: NodeState) -> None:
    charge = job_charge(1, 0, 1000)                        # tv = 1000 / 2^40
    assert charge.rho is None and charge.delta >= (1 + exp_hi(1)) * charge.tv > 0
    b_delta = 2 * charge.delta                             # exactly two such jobs' TV terms
    for job in ("a", "b"):
        state.reserve(job, "cohort", charge, 10, b_delta, analyst="alice", spec_sha256=SHA)
    with pytest.raises(BudgetError, match=r"remaining epsilon 8, delta 0 "):
        state.reserve("c", "cohort", charge, 10, b_delta, analyst="alice", spec_sha256=SHA)
    # a pure-DP policy (delta budget 0) takes pure jobs: their sampler deltas are recorded and
    # stated, not held against a zero delta budget
    state.reserve("d", "other", charge, 10, 0, analyst="alice", spec_sha256=SHA)
    assert state.usage("other", 10, 0).held.totals.tv == charge.tv
    assert state.usage("cohort", 10, b_delta).held.totals.tv == 2 * charge.tv


def test_datasets_have_independent_budgets(state: NodeState) -> None:
    reserve(state, "a", 1, dataset="cohort")
    reserve(state, "b", 1, dataset="registry")
    assert state.reserved("cohort") == (F(1), F(0))
    assert state.reserved("registry") == (F(1), F(0))
    assert state.datasets() == ["cohort", "registry"]


def test_bad_amounts_are_refused(state: NodeState) -> None:
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        reserve(state, "a", F(-1, 10))
    with pytest.raises(TypeError):
        reserve(state, "a", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        reserve(state, "a", float("nan"))
    assert state.jobs() == []


def test_replay_of_job_id_raises_replay_error(state: NodeState) -> None:
    reserve(state, "job-1", F(1, 10))
    state.commit("job-1")
    with pytest.raises(ReplayError, match="job-1") as exc:
        reserve(state, "job-1", F(1, 10))
    assert isinstance(exc.value, AuthError)
    assert state.spent("cohort") == (F(1, 10), F(0))
    assert state.job("job-1").status == "committed"
    assert records(state)[-1]["fields"]["reason"] == "replay"


def test_nonces(state: NodeState) -> None:
    assert not state.seen_nonce("n1")
    state.use_nonce("n1", analyst="alice")
    assert state.seen_nonce("n1")
    with pytest.raises(ReplayError, match="n1"):
        state.use_nonce("n1", analyst="alice")
    reserve(state, "n1", F(1, 10))          # the submission that used the nonce may reserve
    reserve(state, "n2", F(1, 10))
    assert state.seen_nonce("n2")           # a reserved job id counts as seen
    with pytest.raises(ReplayError):
        state.use_nonce("n2", analyst="mallory")


def test_release_on_failure_frees_the_budget(state: NodeState) -> None:
    reserve(state, "a", 1)
    with pytest.raises(BudgetError):
        reserve(state, "b", F(1, 2))
    state.release("a", "peer hospital_b died")
    job = state.job("a")
    assert job.status == "released" and job.reason == "peer hospital_b died"
    assert state.spent("cohort") == (0, 0) and state.reserved("cohort") == (0, 0)
    reserve(state, "b", F(1, 2))
    ev = [r["event"] for r in records(state)]
    assert ev == ["reserve", "refusal", "release", "reserve"]


def test_fail_releases_reserved_and_keeps_committed_spent(state: NodeState) -> None:
    reserve(state, "r", F(1, 4))
    reserve(state, "c", F(1, 4))
    state.commit("c")
    state.fail("r", "local data error")
    state.fail("c", "lost connection after commit")
    assert state.job("r").status == "released"
    assert state.job("c").status == "failed" and state.job("c").charged
    assert state.spent("cohort") == (F(1, 4), F(0))
    state.fail("never-reserved", "spec did not parse")   # audit only
    assert state.job("never-reserved") is None
    last = records(state)[-1]
    assert last["event"] == "failure" and last["fields"]["job_id"] == "never-reserved"
    with pytest.raises(StateError):
        state.fail("c", "again")
    assert state.verify_audit()[0]


def test_transitions_are_checked(state: NodeState) -> None:
    with pytest.raises(StateError, match="unknown"):
        state.commit("nope")
    reserve(state, "a", F(1, 10))
    with pytest.raises(StateError, match="'reserved', cannot done"):
        state.mark_done("a", {"n": "count"})
    state.release("a", "x")
    with pytest.raises(StateError, match="'released', cannot commit"):
        state.commit("a")
    reserve(state, "b", F(1, 10))
    state.commit("b")
    with pytest.raises(StateError):
        state.commit("b")
    with pytest.raises(StateError):
        state.release("b", "too late: committed jobs may have revealed")
    assert state.spent("cohort") == (F(1, 10), F(0))
    assert isinstance(StateError("x"), JointStatsError)


def test_mark_done_records_kinds_and_epsilon_never_values(state: NodeState) -> None:
    reserve(state, "a", F(3, 4))
    state.commit("a")
    results = {
        "n": {"kind": "count", "value": 2999},
        "age_sum": {"kind": "sum", "value": 161234.56789},
        "corr": {"kind": "correlation", "columns": ["age", "bmi"], "matrix": [[1.0, 0.123456], [0.123456, 1.0]]},
    }
    state.mark_done("a", results)
    job = state.job("a")
    assert job.status == "done" and job.revealed == {"n": "count", "age_sum": "sum", "corr": "correlation"}
    done = records(state)[-1]
    assert done["event"] == "done"
    assert done["fields"]["revealed"] == {"age_sum": "sum", "corr": "correlation", "n": "count"}
    assert done["fields"]["epsilon"] == "3/4"
    dump = json.dumps(records(state)) + json.dumps([j.as_dict() for j in state.jobs()])
    for leaked in ("2999", "161234", "0.123456"):
        assert leaked not in dump
    reserve(state, "b", F(1, 10))
    state.commit("b")
    n_before = len(records(state))
    with pytest.raises(ValueError):
        state.mark_done("b", {"n": 2999})   # a bare value is refused, not logged
    assert len(records(state)) == n_before and state.job("b").status == "committed"


def test_jobs_listing(state: NodeState) -> None:
    reserve(state, "a", F(1, 10))
    reserve(state, "b", F(1, 5))
    state.commit("b")
    jobs = state.jobs()
    assert [j.job_id for j in jobs] == ["a", "b"]
    assert all(isinstance(j, Job) for j in jobs)
    assert [j.job_id for j in state.jobs("committed")] == ["b"]
    b = state.job("b")
    assert (b.dataset, b.epsilon, b.delta, b.analyst, b.spec_sha256) == ("cohort", F(1, 5), 0, "alice", SHA)
    assert b.as_dict()["epsilon"] == "1/5"
    assert state.job("zzz") is None
    with pytest.raises(ValueError):
        state.jobs("bogus")


def test_recover_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    s = NodeState(path)
    reserve(s, "left-reserved", F(1, 4))
    reserve(s, "left-committed", F(1, 4))
    s.commit("left-committed")
    reserve(s, "finished", F(1, 4))
    s.commit("finished")
    s.mark_done("finished", {"n": "count"})
    s.close()                                   # "crash"

    s2 = NodeState(path)
    assert s2.recover() == ["left-reserved", "left-committed"]
    assert s2.job("left-reserved").status == "released"
    assert s2.job("left-committed").status == "committed"
    assert s2.spent("cohort") == (F(1, 2), F(0))
    assert s2.reserved("cohort") == (F(0), F(0))
    rec = [r for r in records(s2) if r["event"] == "recover"]
    assert [(r["fields"]["job_id"], r["fields"]["action"]) for r in rec] == [
        ("left-reserved", "released"), ("left-committed", "kept committed")]
    with pytest.raises(StateError):             # a stale worker can no longer commit and reveal
        s2.commit("left-reserved")
    assert s2.verify_audit() == (True, f"{len(records(s2))} records ok")
    s2.close()


def test_public_audit_cannot_forge_ledger_records(state: NodeState) -> None:
    seq = state.audit("submission", job_id="j", analyst="alice", spec_sha256=SHA, size=3)
    assert seq == 1
    with pytest.raises(ValueError, match="use NodeState.commit"):
        state.audit("commit", job_id="j")
    with pytest.raises(ValueError, match="reserved"):
        state.audit("failure", job_id="j", ledger={"status": "released"})
    with pytest.raises(ValueError, match="unknown audit event"):
        state.audit("sneaky", x=1)
    r = records(state)[0]
    assert r["fields"] == {"analyst": "alice", "job_id": "j", "size": 3, "spec_sha256": SHA}
    raw_fields = raw(state).execute("SELECT fields FROM audit WHERE seq = 1").fetchone()[0]
    assert raw_fields == json.dumps(r["fields"], sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- tamper evidence

def _filled(tmp_path: Path) -> NodeState:
    s = NodeState(tmp_path / "s.sqlite")
    for i in range(4):
        s.audit("submission", job_id=f"j{i}", analyst="alice")
        reserve(s, f"j{i}", F(1, 10))
        s.commit(f"j{i}")
        s.mark_done(f"j{i}", {"n": "count"})
    assert s.verify_audit() == (True, "16 records ok")
    return s


def test_verify_detects_edited_field(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    db = raw(s)
    f = db.execute("SELECT fields FROM audit WHERE seq = 6").fetchone()[0]
    db.execute("UPDATE audit SET fields = ? WHERE seq = 6", (f.replace("alice", "bob"),))
    assert s.verify_audit() == (False, "record 6: hash mismatch (edited)")


def test_verify_detects_edited_timestamp_or_event(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    db = raw(s)
    db.execute("UPDATE audit SET event = 'release' WHERE seq = 11")
    assert s.verify_audit() == (False, "record 11: hash mismatch (edited)")
    db.execute("UPDATE audit SET event = 'commit' WHERE seq = 11")
    assert s.verify_audit()[0]
    db.execute("UPDATE audit SET ts = '2000-01-01T00:00:00.000000+00:00' WHERE seq = 3")
    assert s.verify_audit() == (False, "record 3: hash mismatch (edited)")


def test_verify_detects_deleted_record(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    raw(s).execute("DELETE FROM audit WHERE seq = 7")
    ok, msg = s.verify_audit()
    assert not ok and msg.startswith("record 7: missing (deleted")


def test_verify_detects_deleted_and_renumbered(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    db = raw(s)
    db.execute("DELETE FROM audit WHERE seq = 7")
    for seq in range(8, 17):
        db.execute("UPDATE audit SET seq = ? WHERE seq = ?", (seq - 1, seq))
    ok, msg = s.verify_audit()
    assert not ok and msg.startswith("record 7:")


def test_verify_detects_swapped_records(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    db = raw(s)
    db.execute("UPDATE audit SET seq = -1 WHERE seq = 9")
    db.execute("UPDATE audit SET seq = 9 WHERE seq = 10")
    db.execute("UPDATE audit SET seq = 10 WHERE seq = -1")
    ok, msg = s.verify_audit()
    assert (ok, msg) == (False, "record 9: out of order (it is record 10 moved; records reordered)")


def test_verify_detects_swapped_contents(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    db = raw(s)
    a = db.execute("SELECT ts, event, fields FROM audit WHERE seq = 4").fetchone()
    b = db.execute("SELECT ts, event, fields FROM audit WHERE seq = 5").fetchone()
    db.execute("UPDATE audit SET ts = ?, event = ?, fields = ? WHERE seq = 4", b)
    db.execute("UPDATE audit SET ts = ?, event = ?, fields = ? WHERE seq = 5", a)
    assert s.verify_audit() == (False, "record 4: hash mismatch (edited)")


def test_verify_detects_truncated_tail(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    raw(s).execute("DELETE FROM audit WHERE seq >= 14")
    assert s.verify_audit() == (False, "record 14: missing (tail truncated: the head says 16 records, found 13)")


def test_verify_detects_tampered_head(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    raw(s).execute("UPDATE audit_head SET hash = ? WHERE id = 1", ("0" * 64,))
    ok, msg = s.verify_audit()
    assert not ok and "audit head" in msg
    assert s.audit_head() == (16, "0" * 64)


def test_verify_detects_ledger_edit_that_wins_budget_back(tmp_path: Path) -> None:
    s = _filled(tmp_path)
    raw(s).execute("UPDATE jobs SET status = 'released' WHERE job_id = 'j2'")
    ok, msg = s.verify_audit()
    assert not ok
    assert msg.startswith("ledger: job 'j2' is 'released' but the audit log (record 12) says 'done'")
    raw(s).execute("UPDATE jobs SET status = 'done', epsilon = '1/1000' WHERE job_id = 'j2'")
    assert not s.verify_audit()[0]
    raw(s).execute("UPDATE jobs SET epsilon = '1/10' WHERE job_id = 'j2'")
    assert s.verify_audit()[0]
    raw(s).execute("DELETE FROM jobs WHERE job_id = 'j1'")
    ok, msg = s.verify_audit()
    assert not ok and "'j1'" in msg and "missing from the ledger" in msg


# --------------------------------------------------------------------------- property: budget never exceeded

_eps = st.one_of(st.sampled_from([F(1, 10), F(1, 7), F(1, 4), F(1, 3), F(1, 2)]),
                 st.fractions(min_value=0, max_value=F(1, 2), max_denominator=12))
_ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "reserve", "commit", "release", "fail", "done"]),
              st.integers(0, 7), _eps, st.sampled_from(["cohort", "cohort", "other"])),
    min_size=1, max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops, budget=st.one_of(st.sampled_from([F(1, 5), F(3, 10), F(1, 2), F(1)]),
                                  st.fractions(min_value=0, max_value=2, max_denominator=10)))
@example(ops=[("reserve", 0, F(1, 4), "cohort"), ("reserve", 1, F(1, 4), "cohort"),
              ("commit", 0, F(0), "cohort"), ("reserve", 2, F(1, 10), "cohort")], budget=F(1, 2))
@pytest.mark.slow
def test_ledger_never_exceeds_budget(ops, budget) -> None:
    with tempfile.TemporaryDirectory() as d:
        s = NodeState(Path(d) / "s.sqlite")
        model: dict[str, tuple[str, F, str]] = {}   # job -> (dataset, eps, status)
        for op, j, eps, ds in ops:
            job = f"j{j}"
            if op == "reserve":
                used = sum((e for dd, e, st_ in model.values()
                            if dd == ds and st_ in ("reserved", "committed", "done", "failed")), F(0))
                if job in model:
                    with pytest.raises(ReplayError):
                        s.reserve(job, ds, JobCharge(eps, 0, None, 0), budget, 0, analyst="a", spec_sha256=SHA)
                elif used + eps > budget:
                    with pytest.raises(BudgetError):
                        s.reserve(job, ds, JobCharge(eps, 0, None, 0), budget, 0, analyst="a", spec_sha256=SHA)
                else:
                    s.reserve(job, ds, JobCharge(eps, 0, None, 0), budget, 0, analyst="a", spec_sha256=SHA)
                    model[job] = (ds, eps, "reserved")
                continue
            cur = model.get(job, (None, None, None))[2]
            allowed = {"commit": ("reserved",), "release": ("reserved",),
                       "fail": ("reserved", "committed"), "done": ("committed",)}[op]
            new = {"commit": "committed", "release": "released", "done": "done",
                   "fail": "released" if cur == "reserved" else "failed"}[op]
            call = {"commit": lambda: s.commit(job), "release": lambda: s.release(job, "r"),
                    "fail": lambda: s.fail(job, "f"), "done": lambda: s.mark_done(job, {"n": "count"})}[op]
            if cur in allowed:
                call()
                model[job] = (model[job][0], model[job][1], new)
            elif op == "fail" and cur is None:
                call()                                   # audit-only failure
            else:
                with pytest.raises(StateError):
                    call()
            for d_ in ("cohort", "other"):      # the implementation's own view, after every step
                assert sum(s.spent(d_)) + sum(s.reserved(d_)) <= budget
        for ds in ("cohort", "other"):
            spent = sum((e for dd, e, st_ in model.values() if dd == ds and st_ in ("committed", "done", "failed")), F(0))
            held = sum((e for dd, e, st_ in model.values() if dd == ds and st_ == "reserved"), F(0))
            assert s.spent(ds) == (spent, 0)
            assert s.reserved(ds) == (held, 0)
            assert spent + held <= budget
            assert s.remaining(ds, budget, 0) == (budget - spent - held, 0)
        assert s.verify_audit()[0]
        s.close()


# --------------------------------------------------------------------------- crash safety

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from fractions import Fraction as F
    from jointstats.plan.accounting import job_charge
    from jointstats.ledger.state import NodeState
    path, start, kill_on = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    charge = job_charge(F(1, 7), F(1, 10**9), 3)   # a zCDP charge: epsilon, delta, rho and tv
    s = NodeState(path)
    s.recover()
    if kill_on != "random":
        # die at an exact point inside the commit transaction of the first job
        target, stmt = kill_on.split(":", 1)
        armed = []
        def trace(sql):
            if armed and sql.strip().upper().startswith(stmt):
                os.kill(os.getpid(), signal.SIGKILL)
        s._conn.set_trace_callback(trace)
    print("ready", flush=True)
    i = start
    while True:
        job = f"job{i}"
        s.audit("submission", job_id=job, analyst="alice")
        s.reserve(job, "cohort", charge, 10**6, 1, analyst="alice", spec_sha256="x")
        if kill_on != "random":
            armed.append(1)
        s.commit(job)
        if i % 2:
            s.mark_done(job, {"n": "count"})
        i += 1
""")


def _run_child(path: Path, start: int, kill_on: str, delay: float) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(start), kill_on],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = p.stdout.readline()
        assert line.strip() == "ready", p.stderr.read()
        if kill_on == "random":
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    return rc


def _check_consistent(path: Path) -> NodeState:
    s = NodeState(path)
    ok, msg = s.verify_audit()
    assert ok, msg
    # independent replay of the audit records: the latest ledger status of each job
    last: dict[str, dict] = {}
    for r in s.audit_records():
        led = r["fields"].get("ledger")
        if led:
            last[r["fields"]["job_id"]] = led
    charged = [led for led in last.values() if led["status"] in ("committed", "done", "failed")]
    held = [led for led in last.values() if led["status"] == "reserved"]
    assert s.spent("cohort") == (sum((F(l["epsilon"]) for l in charged), F(0)),
                                 sum((F(l["delta"]) for l in charged), F(0)))
    assert s.reserved("cohort")[0] == sum((F(l["epsilon"]) for l in held), F(0))
    assert {j.job_id: j.status for j in s.jobs()} == {k: v["status"] for k, v in last.items()}
    return s


@pytest.mark.parametrize("stmt", ["UPDATE AUDIT_HEAD", "INSERT INTO AUDIT", "COMMIT"])
def test_sigkill_inside_commit_transaction_rolls_back_cleanly(tmp_path: Path, stmt: str) -> None:
    path = tmp_path / "s.sqlite"
    rc = _run_child(path, 0, f"job0:{stmt}", 0)
    assert rc == -signal.SIGKILL
    s = _check_consistent(path)
    # the job's status change and its audit record were lost together
    assert s.job("job0").status == "reserved"
    assert [r["event"] for r in s.audit_records()] == ["submission", "reserve"]
    assert s.recover() == ["job0"] and s.job("job0").status == "released"
    assert s.verify_audit()[0]
    s.close()


@pytest.mark.slow
def test_sigkill_at_random_points_keeps_ledger_and_audit_consistent(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    rng = random.Random(20240601)
    start = 0
    for _ in range(4):
        rc = _run_child(path, start, "random", rng.uniform(0.15, 0.5))
        assert rc == -signal.SIGKILL
        s = _check_consistent(path)
        n = len(s.jobs())
        assert n > 0
        start = 10_000 * (start // 10_000 + 1)
        s.close()
    # after the last kill, a restart's recovery is consistent too
    s = NodeState(path)
    s.recover()
    s.close()
    _check_consistent(path).close()


def test_concurrent_processes_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    NodeState(path).close()
    code = textwrap.dedent("""
        import sys
        from fractions import Fraction as F
        from jointstats.plan.accounting import JobCharge
        from jointstats.ledger.state import NodeState
        from jointstats.errors import BudgetError
        s = NodeState(sys.argv[1]); ok = 0
        for i in range(15):
            try:
                s.reserve(f"{sys.argv[2]}-{i}", "cohort", JobCharge(F(1, 10), 0, None, 0), 1, 0,
                          analyst="a", spec_sha256="x")
                s.commit(f"{sys.argv[2]}-{i}"); ok += 1
            except BudgetError:
                pass
        print(ok)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), f"p{k}"], env=env,
                              stdout=subprocess.PIPE, text=True) for k in range(3)]
    outs = [int(p.communicate(timeout=30)[0]) for p in procs]
    assert sum(outs) == 10
    s = NodeState(path)
    assert s.spent("cohort") == (F(1), F(0))
    assert s.verify_audit()[0]
    s.close()
