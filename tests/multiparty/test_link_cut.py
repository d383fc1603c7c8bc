"""A network link cut in the middle of a DP job's secure step (issue 16 item 6), over 3 real
party processes whose connections go through emulated links (bench/netem.py, loopback only).

Every surviving party must fail within 10 s of the cut, naming the party it lost, and each
party's ledger must stay consistent: the cut comes before the budget is committed, so every
party releases its reservation (nothing spent) and its audit chain verifies.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from bench import netem
from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from tests.conftest import cohort_frame

DP_JOB = """
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
  bmi: {type: real, bounds: [10, 60]}
  sbp: {type: real, bounds: [60, 250]}
  smoker: {type: categorical, levels: ["no", "yes"]}
  region: {type: categorical, levels: [north, south, east, west]}
privacy: {epsilon: 1.0, delta: 0}
statistics:
  m: {kind: mean, column: age}
  t: {kind: crosstab, rows: smoker, cols: region}
  r: {kind: regression, target: sbp, features: [age, bmi]}
"""

#: Depth (rounds on the wire) at which the link is cut: past the connection handshakes and
#: the status exchange (about 3), well before the noise step ends (about 60).
CUT_DEPTH = 12
LIMIT = 10.0


def _through(net: netem.LinkEmulator, configs) -> None:
    """Rewrite each party's config so that it reaches its peers through the emulator."""
    docs = [yaml.safe_load(c.read_text()) for c in configs]
    for cfg, doc, peers in zip(configs, docs, net.peer_lists(docs[0]["mpc"]["parties"])):
        doc["mpc"]["parties"] = peers
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


def _run_cut(tmp_path, configs, net, a, b, mode="close", wait=90.0):
    spec = tmp_path / "s.yaml"
    spec.write_text(DP_JOB)
    net.cut_when(a, b, depth=CUT_DEPTH, mode=mode)
    env = {**os.environ, "JOINTSTATS_NOISE_PLAN_CACHE": "off"}
    procs = {}
    for cfg in configs:
        out = tmp_path / f"{cfg.stem}.json"
        procs[cfg.stem] = (subprocess.Popen(
            [sys.executable, "-m", "jointstats.engine.party", "--config", str(cfg), "--spec", str(spec),
             "--job-id", "cut-1", "--out", str(out), "--connect-timeout", "20"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
    ended = {}
    deadline = time.monotonic() + wait
    while len(ended) < len(procs) and time.monotonic() < deadline:
        for name, (proc, _) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.time()
        time.sleep(0.01)
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cuts = net.stats()["cuts"]
    assert cuts, "the link was never cut"
    results = {name: json.loads(out.read_text()) for name, (_, out) in procs.items()}
    return cuts[0], ended, results


def _ledgers_consistent(configs):
    for cfg in configs:
        state = NodeState(load_party_config(cfg).state)
        try:
            ok, why = state.verify_audit()
            assert ok, why
            events = [rec for rec in state.audit_records()]
            assert events[-1]["event"] == "failure", events[-1]
            assert events[-1]["fields"]["budget"] == "released", events[-1]
            assert [j.status for j in state.jobs()] == ["released"]
            assert state.spent("cohort") == (0, 0)
            assert state.reserved("cohort") == (0, 0)
        finally:
            state.close()


def test_party_cut_off_mid_secure_step_is_named_within_10s(consortium, tmp_path):
    # party_c's links to both peers are cut (closed) in the middle of the noise step
    configs = consortium([cohort_frame(60, i) for i in range(3)])
    with netem.LinkEmulator(rtt=0.02, mbit=100) as net:
        _through(net, configs)
        cut, ended, results = _run_cut(tmp_path, configs, net, "party_c", None)
    for name in ("party_a", "party_b"):
        res = results[name]
        assert not res["ok"], res
        assert "party 'party_c'" in res["error"], res["error"]
        assert "during statistic" in res["error"], res["error"]  # the secure step, before the commit
        assert ended[name] - cut["time"] < LIMIT, (name, ended[name] - cut["time"])
    own = results["party_c"]  # cut off itself: it names one of the parties it lost
    assert not own["ok"] and ("party 'party_a'" in own["error"] or "party 'party_b'" in own["error"])
    assert ended["party_c"] - cut["time"] < LIMIT
    _ledgers_consistent(configs)


def test_one_link_cut_mid_secure_step_fails_every_party_within_10s(consortium, tmp_path):
    # only the a-c link is cut: a and c name each other; b, whose links are intact, learns of
    # it when a or c gives up and closes its connections, and names that party
    configs = consortium([cohort_frame(60, i) for i in range(3)])
    with netem.LinkEmulator(rtt=0.02, mbit=100) as net:
        _through(net, configs)
        cut, ended, results = _run_cut(tmp_path, configs, net, "party_a", "party_c")
    assert "party 'party_c'" in results["party_a"]["error"]
    assert "party 'party_a'" in results["party_c"]["error"]
    assert "party 'party_a'" in results["party_b"]["error"] or "party 'party_c'" in results["party_b"]["error"]
    for name, res in results.items():
        assert not res["ok"]
        assert ended[name] - cut["time"] < LIMIT, (name, ended[name] - cut["time"])
    _ledgers_consistent(configs)
