"""Faults over real party processes: a party that dies, a party that never comes, bad configs."""
from __future__ import annotations

import time

import pytest

from jointstats import ConfigError, PartyError, run
from jointstats.ledger.state import NodeState
from jointstats.consortium.config import load_party_config
from tests.conftest import cohort_frame
from tests import faults

EXACT = """
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
  bmi: {type: real, bounds: [10, 60]}
statistics:
  n: {kind: count}
  m: {kind: mean, column: age}
"""


@pytest.mark.parametrize("party,point", [("party_b", "after_connect"), ("party_c", "local_step")])
def test_party_dying_mid_job_is_named_quickly(consortium, tmp_path, monkeypatch, party, point):
    # the parties connect while their local steps run: a party lost while reading its data
    # is named at once too, not after a connect timeout
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    faults.arm(monkeypatch, f"{party}:{point}")
    started = time.monotonic()
    with pytest.raises(PartyError, match=rf"party '{party}' died \(exit status 137\)"):
        run(spec, configs)
    assert time.monotonic() - started < 30
    for cfg in configs:
        state = NodeState(load_party_config(cfg).state)
        ok, why = state.verify_audit()
        assert ok, why
        events = [rec["event"] for rec in state.audit_records()]
        assert events[-1] == ("start" if cfg.stem == party else "failure"), events
        state.close()


def test_party_never_starting_times_out_naming_it(consortium, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    # run only two of the three parties' processes, directly
    import json
    import subprocess
    import sys
    procs = []
    for cfg in configs[:2]:
        out = tmp_path / f"{cfg.stem}.json"
        procs.append((subprocess.Popen([sys.executable, "-m", "jointstats.engine.party", "--config", str(cfg),
                                        "--spec", str(spec), "--job-id", "j1", "--out", str(out),
                                        "--connect-timeout", "3"]), out))
    for proc, out in procs:
        assert proc.wait(timeout=60) == 1
        err = json.loads(out.read_text())["error"]
        assert "party_c" in err and ("did not connect" in err or "could not connect" in err)


def test_slow_local_step_does_not_hit_the_connect_timeout(consortium, tmp_path):
    # parties listen and connect while they read their data: a peer whose local step
    # outlasts the connect timeout is waited for (up to the local-step timeout), not failed
    import json
    import os
    import subprocess
    import sys
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    env = faults.environment("party_b:local_step:pause=3")
    procs = []
    for cfg in configs:
        out = tmp_path / f"{cfg.stem}.json"
        procs.append((subprocess.Popen([sys.executable, "-m", "jointstats.engine.party", "--config", str(cfg),
                                        "--spec", str(spec), "--job-id", "j1", "--out", str(out),
                                        "--connect-timeout", "1"], env=env), out))
    results = []
    for proc, out in procs:
        assert proc.wait(timeout=60) == 0, out.read_text() if out.exists() else "no result"
        results.append(json.loads(out.read_text())["result"]["results"])
    assert results[0] == results[1] == results[2]
    assert results[0]["n"]["value"] == 120


def test_port_taken_is_named_at_once_even_during_a_long_local_step(consortium, tmp_path, monkeypatch):
    import socket

    import yaml
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    port = yaml.safe_load(configs[1].read_text())["mpc"]["parties"][1]["port"]
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    faults.arm(monkeypatch, "party_b:local_step:pause=20")
    started = time.monotonic()
    try:
        with pytest.raises(PartyError, match=rf"party 'party_b' cannot listen on 127.0.0.1:{port}"):
            run(spec, configs)
    finally:
        squatter.close()
    assert time.monotonic() - started < 15  # not after the 20 s local step
    for cfg in configs:
        state = NodeState(load_party_config(cfg).state)
        ok, why = state.verify_audit()
        assert ok, why
        assert [rec["event"] for rec in state.audit_records()][-1] == "failure"
        state.close()


def test_inconsistent_party_lists_rejected(consortium, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(10, i) for i in range(3)])
    text = configs[2].read_text().replace("party_a", "party_x")
    configs[2].write_text(text.replace("party: party_x", "party: party_c"))
    with pytest.raises(ConfigError, match="mpc.parties differs"):
        run(spec, configs)


def test_missing_party_config_rejected(consortium, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT)
    configs = consortium([cohort_frame(10, i) for i in range(3)])
    with pytest.raises(ConfigError, match="no config given for party 'party_c'"):
        run(spec, configs[:2])


def test_dataset_not_offered(consortium, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(EXACT.replace("dataset: cohort", "dataset: claims"))
    configs = consortium([cohort_frame(10, i) for i in range(2)])
    with pytest.raises(PartyError, match="party 'party_a' does not offer dataset 'claims'"):
        run(spec, configs)
