"""Party processes forked from the launcher (jointstats/local/launch.py) against exec'd ones.

Both are real, separate OS processes over TCP on loopback; they must give the same answer,
report a dying party alike, and leave no launcher or party behind when their caller dies.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from jointstats import PartyError, run
from tests.conftest import cohort_frame
from tests import faults

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher is Linux-only")

SPEC = """
dataset: cohort
schema:
  age:    {type: real, bounds: [18, 100]}
  bmi:    {type: real, bounds: [10, 60]}
  smoker: {type: categorical, levels: ["no", "yes"]}
  region: {type: categorical, levels: [north, south, east, west]}
statistics:
  n:    {kind: count}
  m:    {kind: mean, column: age}
  c:    {kind: correlation, columns: [age, bmi]}
  x:    {kind: crosstab, rows: smoker, cols: region}
  r:    {kind: regression, target: bmi, features: [age, smoker]}
"""


def test_forked_and_execd_parties_give_the_same_result(consortium, tmp_path, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(60, i) for i in range(3)])
    monkeypatch.setenv("JOINTSTATS_LAUNCH", "exec")
    execd = run(spec, configs, metrics=(m_exec := {}))
    monkeypatch.setenv("JOINTSTATS_LAUNCH", "fork")
    forked = run(spec, configs, metrics=(m_fork := {}))
    again = run(spec, configs)
    assert forked.results == execd.results == again.results
    # every party is its own process; exec'd ones are the caller's children, forked ones the
    # launcher's (never a fork of the caller, which may hold anything)
    for metrics in (m_exec, m_fork):
        pids = {m["pid"] for m in metrics.values()}
        assert len(pids) == 3 and os.getpid() not in pids
    assert {m["ppid"] for m in m_exec.values()} == {os.getpid()}
    launchers = {m["ppid"] for m in m_fork.values()}
    assert len(launchers) == 1 and os.getpid() not in launchers


def test_a_forked_party_dying_is_named(consortium, tmp_path, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    monkeypatch.setenv("JOINTSTATS_LAUNCH", "fork")
    faults.arm(monkeypatch, "party_c:after_connect")
    with pytest.raises(PartyError, match=r"party 'party_c' died \(exit status 137\)"):
        run(spec, configs)
    faults.disarm(monkeypatch)
    assert run(spec, configs).results["n"]["value"] == 120  # the launcher serves the next job


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def test_the_launcher_dies_with_its_caller(consortium, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(40, i) for i in range(3)])
    code = (
        "import sys, time\n"
        "from jointstats import run\nfrom jointstats.local import launch as _launch\n"
        f"run({str(spec)!r}, {[str(c) for c in configs]!r})\n"
        "print(*[l.proc.pid for l in _launch._launchers.values()], flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "JOINTSTATS_LAUNCH": "fork"}
    caller = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in caller.stdout.readline().split()]
        assert pids and all(_alive(p) for p in pids)
        caller.send_signal(signal.SIGKILL)
        caller.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)
    finally:
        if caller.poll() is None:
            caller.kill()



def test_a_broken_launcher_falls_back_to_fresh_interpreters(consortium, tmp_path, monkeypatch, capfd):
    from jointstats.local import launch as _launch
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(30, i) for i in range(3)])
    monkeypatch.setenv("JOINTSTATS_LAUNCH", "fork")
    monkeypatch.setattr(_launch, "_launchers", {})
    monkeypatch.setattr(_launch, "_LAUNCHER_MAIN", "import sys; sys.exit(3)")
    result = run(spec, configs, metrics=(metrics := {}))
    assert result.results["n"]["value"] == 90
    assert {m["ppid"] for m in metrics.values()} == {os.getpid()}  # exec'd by the caller
    assert "fresh interpreter" in capfd.readouterr().err


@pytest.mark.parametrize("launch", ["fork", "exec"])
def test_a_party_in_a_session_of_its_own(monkeypatch, tmp_path, launch):
    # a node's workers: forked with new_session, or exec'd with the node's own worker command
    from jointstats.local import launch as _launch
    monkeypatch.setenv("JOINTSTATS_LAUNCH", launch)
    out = tmp_path / "out.json"
    probe = ("import os, sys; sys.stderr.write(f'{os.getsid(0) == os.getpid()} "
             "{os.getppid()}\\n')")
    argv = ["--config", str(tmp_path / "missing.yaml"), "--spec", "x", "--job-id", "j", "--out", str(out)]
    proc = _launch.start_party(argv, dict(os.environ), new_session=True,
                               exec_command=[sys.executable, "-c", probe])
    assert proc.wait(timeout=60) is not None
    err = proc.stderr.read()
    if launch == "exec":
        own_session, parent = err.split()
        assert own_session == "True" and int(parent) == os.getpid()
    else:  # the launcher ran jointstats.engine.party: a one-line error about the missing config
        assert proc.returncode == 1 and "missing.yaml" in out.read_text()
