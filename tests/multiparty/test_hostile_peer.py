"""A certified but malicious party sends pickles to the others: nobody runs its code.

Three real party processes over TCP on loopback. Party ``party_b`` runs
``tests/multiparty/hostile_party.py``, which replaces every message of one kind (the status
exchange, input shares, output/open shares, resharing, the DP noise's AND exchange, the
nodes' rendezvous) by a pickle whose ``__reduce__`` would create a sentinel file. The
sentinel must never appear, the honest parties must fail naming ``party_b``, and every
party's ledger and audit log must stay consistent (``jointstats audit verify``).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from tests.common import cohort_schema
from tests.conftest import cohort_frame

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "party_b"

EXACT = """
dataset: cohort
""" + cohort_schema("age", "smoker", "region") + """statistics:
  n:     {kind: count}
  m:     {kind: mean, column: age}
  cells: {kind: crosstab, rows: smoker, cols: region, min_count: 3}
"""

DP = """
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
privacy: {epsilon: 1.0, delta: 0}
statistics:
  n: {kind: count}
"""


def _start(tmp_path: Path, configs: list[Path], kind: str, command: str, args) -> dict:
    """Start one process per party (``party_b`` attacking with ``kind``); wait for all."""
    sentinel, marker = tmp_path / "PWNED", tmp_path / f"attacked-{kind}"
    procs = {}
    for cfg in configs:
        out = tmp_path / f"{cfg.stem}.json"
        attack = ["--attack", kind, str(sentinel), str(marker)] if cfg.stem == HOSTILE else []
        argv = [sys.executable, "-m", "tests.multiparty.hostile_party", *attack, command, *args(cfg, out)]
        procs[cfg.stem] = (subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True), out)
    outcomes = {}
    for name, (proc, out) in procs.items():
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{name} did not finish")
        outcomes[name] = json.loads(out.read_text()) if out.exists() else {"ok": False, "error": err}
    assert marker.exists(), f"the hostile party never sent a {kind} message"
    assert not sentinel.exists(), "a party unpickled a peer's message and ran its code"
    return outcomes


def _start_jobs(tmp_path: Path, configs: list[Path], kind: str, spec_path: Path, job_id: str) -> dict:
    """``_start`` of one party job per config, on ``spec_path``, under ``job_id``."""
    def args(cfg, out):
        return ["--config", str(cfg), "--spec", str(spec_path), "--job-id", job_id,
                "--out", str(out), "--connect-timeout", "20"]
    return _start(tmp_path, configs, kind, "party", args)


def _assert_named(outcomes: dict) -> None:
    """Every honest party failed with one line naming the hostile party; one of them saw
    the malformed message itself."""
    honest = {name: o for name, o in outcomes.items() if name != HOSTILE}
    for name, outcome in honest.items():
        assert not outcome["ok"], name
        error = outcome["error"]
        assert "\n" not in error.strip(), error
        assert f"'{HOSTILE}'" in error, (name, error)
    assert any(f"party '{HOSTILE}' sent a malformed message" in o["error"] for o in honest.values()), honest


def _audit_verify(config: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "from jointstats.cli.commands import main; raise SystemExit(main())",
                           "audit", "verify", "--config", str(config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("kind,spec", [("status", EXACT), ("input", EXACT), ("output", EXACT),
                                       ("reshare", EXACT), ("noise", DP)])
def test_pickle_from_a_certified_party_never_runs(consortium, tmp_path, kind, spec):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(spec)
    configs = consortium([cohort_frame(60, i) for i in range(3)], names=["party_a", "party_b", "party_c"])

    outcomes = _start_jobs(tmp_path, configs, kind, spec_path, f"hostile-{kind}")
    _assert_named(outcomes)
    for cfg in configs:
        _audit_verify(cfg)
        state = NodeState(load_party_config(cfg).state)
        try:
            events = [rec["event"] for rec in state.audit_records()]
            if cfg.stem != HOSTILE:
                assert events[-1] == "failure", (cfg.stem, events)
            assert state.spent("cohort")[0] == 0  # nothing committed: nothing was revealed
        finally:
            state.close()


def test_pickle_in_the_node_rendezvous_never_runs(consortium, tmp_path):
    configs = consortium([cohort_frame(10, i) for i in range(3)], names=["party_a", "party_b", "party_c"])
    outcomes = _start(tmp_path, configs, "rendezvous", "rendezvous", lambda cfg, out: [str(cfg), str(out)])
    _assert_named(outcomes)


# ----------------------------------------------------------------------------- equivocation

def _assert_equivocator_named(outcomes: dict) -> None:
    """Every honest party failed naming the hostile party first, and at least one as the
    party that told different parties different records (the other may instead see it hang
    up first: it stops as soon as it has found the honest parties out)."""
    honest = {name: o for name, o in outcomes.items() if name != HOSTILE}
    for name, outcome in honest.items():
        assert not outcome["ok"], name
        error = outcome["error"]
        assert "\n" not in error.strip(), error
        assert error.startswith(f"party '{HOSTILE}' "), (name, error)
    assert any(o["error"].startswith(f"party '{HOSTILE}' sent different parties different records")
               for o in honest.values()), honest


@pytest.mark.parametrize("kind", ["equivocate-plan", "equivocate-job", "equivocate-floor"])
def test_a_party_telling_peers_different_things_at_job_agreement_is_named(consortium, tmp_path, kind):
    # party_b tells party_c another plan hash (job id, minimum-count floor) than party_a:
    # without the echo round party_a would go on (or name party_c, which hangs up on it), and
    # with a floor the parties would compute with different minimum counts
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(EXACT)
    configs = consortium([cohort_frame(60, i) for i in range(3)], names=["party_a", "party_b", "party_c"])

    outcomes = _start_jobs(tmp_path, configs, kind, spec_path, "equivocation")
    _assert_equivocator_named(outcomes)
    for cfg in configs:
        _audit_verify(cfg)
        state = NodeState(load_party_config(cfg).state)
        try:
            events = [rec["event"] for rec in state.audit_records()]
            assert events[-1] == "failure", (cfg.stem, events)
            assert state.spent("cohort")[0] == 0
        finally:
            state.close()


def test_a_node_telling_peers_different_queues_at_rendezvous_is_named(consortium, tmp_path):
    configs = consortium([cohort_frame(10, i) for i in range(3)], names=["party_a", "party_b", "party_c"])
    outcomes = _start(tmp_path, configs, "equivocate-rendezvous", "rendezvous",
                      lambda cfg, out: [str(cfg), str(out)])
    _assert_equivocator_named(outcomes)


# ----------------------------------------------------------------------------- flooding

def test_a_party_flooding_its_peers_with_unread_messages_is_dropped_and_named(consortium, tmp_path):
    # party_b sends each peer 96 MiB at program counters no step reads: each honest party
    # holds at most its job's bound (32 MiB and a little for this plan) and drops it, naming it
    from jointstats.engine.party import unread_limit
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import load_spec
    from tests.multiparty.hostile_party import FLOOD_BYTES
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(EXACT)
    limit = unread_limit(make_plan(load_spec(spec_path), ["party_a", "party_b", "party_c"]))
    assert limit < FLOOD_BYTES // 2
    configs = consortium([cohort_frame(60, i) for i in range(3)], names=["party_a", "party_b", "party_c"])

    outcomes = _start_jobs(tmp_path, configs, "flood", spec_path, "flood")
    for name in ("party_a", "party_c"):
        error = outcomes[name]["error"]
        assert not outcomes[name]["ok"]
        assert error.startswith(f"party '{HOSTILE}' sent a malformed message"), (name, error)
    assert any(f"over {limit} bytes of messages no step has read" in outcomes[n]["error"]
               for n in ("party_a", "party_c")), outcomes
    for cfg in configs:
        _audit_verify(cfg)


def test_a_party_lying_in_its_echo_is_named(consortium, tmp_path):
    # party_b tells party_c, in the echo round, that party_c sent another record than it did:
    # party_c knows its own record, so it names party_b with certainty, and tells party_a
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(EXACT)
    configs = consortium([cohort_frame(60, i) for i in range(3)], names=["party_a", "party_b", "party_c"])

    outcomes = _start_jobs(tmp_path, configs, "lying-echo", spec_path, "lying-echo")
    assert outcomes["party_c"]["error"].startswith(
        f"party '{HOSTILE}' misreported the record party 'party_c' sent it"), outcomes["party_c"]
    assert outcomes["party_a"]["error"].startswith(f"party '{HOSTILE}' "), outcomes["party_a"]
    for cfg in configs:
        _audit_verify(cfg)
