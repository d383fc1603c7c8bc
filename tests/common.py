"""Test material shared across folders: the spec YAML of ``tests.conftest.cohort_frame``'s columns,
a valid party config, a cluster of nodes started and stopped together, reading a raw
HTTP answer to its end, and running a party program as several processes.

(Ports: ``tests/ports.py``; consortia of party configs: ``tests/conftest.py``.)"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the spec schema entry (flow-style YAML) of each column of ``cohort_frame``
COHORT_COLUMNS = {
    "age": "{type: real, bounds: [18, 100]}",
    "bmi": "{type: real, bounds: [10, 60]}",
    "sbp": "{type: real, bounds: [80, 220]}",
    "visits": "{type: integer, bounds: [0, 50]}",
    "smoker": "{type: categorical, levels: [no, yes]}",
    "region": "{type: categorical, levels: [north, south, east, west]}",
}


def cohort_schema(*columns: str) -> str:
    """The ``schema:`` block of a spec over these columns of ``cohort_frame`` (all six if none
    is named), ending in a newline: ``"dataset: cohort\\n" + cohort_schema("age", "bmi")``."""
    return "schema:\n" + "".join(f"  {c + ':':7} {COHORT_COLUMNS[c]}\n" for c in columns or COHORT_COLUMNS)


def party_config() -> dict:
    """A valid party config (a fresh dict: callers may change it): party ``a`` of two, one dataset,
    DP only, analyst ``alice``."""
    return {
        "party": "a",
        "mpc": {"parties": [{"name": "a", "host": "127.0.0.1", "port": 11365},
                            {"name": "b", "host": "127.0.0.1", "port": 11366}]},
        "api": {"host": "127.0.0.1", "port": 8701},
        "datasets": {"cohort": {"source": "data/a.csv"}},
        "policy": {"budget": {"epsilon": 10.0, "delta": 1.0e-5}, "max_epsilon_per_job": 2.0,
                   "min_count": 5, "allow_exact": False, "analysts": {"alice": "keys/alice.pub"}},
        "state": "state/a.sqlite",
    }


@contextlib.contextmanager
def nodes_running(cluster, count: int = 3):
    """Start the ``count`` nodes of a ``tests.multiparty.test_node.Cluster`` together, wait until
    each is healthy, yield the cluster, and stop every node however the block ends. When the
    block succeeded, no node's log may show an asyncio task whose failure nobody retrieved
    (a leak of the runtime's shutdown, seen before as 'exception was never retrieved')."""
    try:
        for i in range(count):
            cluster.start(i, wait=False)
        for i in range(count):
            cluster.wait_healthy(i)
        yield cluster
    finally:
        for i in range(count):
            cluster.stop(i)
    for i in range(count):
        text = cluster.log(i).read_text(errors="replace") if cluster.log(i).exists() else ""
        for leak in ("exception was never retrieved", "Task was destroyed but it is pending"):
            assert leak not in text, f"node {i} log after shutdown shows {leak!r}:\n{text[-3000:]}"


def recv_all(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes, resets or the socket times out."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def run_party_processes(script: str, argv: list[list[str]], cwd: Path, timeout: float,
                        envs: list[dict] | None = None) -> None:
    """Run ``python script *argv[i]`` for every party i at once (the repository on
    PYTHONPATH) and wait for all; fail naming each party that timed out or exited non-zero,
    with the end of its stderr. Every process is killed at the end whatever happened."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, script, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**env, **(envs[i] if envs else {})}, cwd=cwd)
             for i, args in enumerate(argv)]
    failures = []
    deadline = time.monotonic() + timeout
    try:
        for i, p in enumerate(procs):
            try:
                _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                failures.append(f"party {i}: timed out after {timeout} s")
                continue
            if p.returncode:
                failures.append(f"party {i}: exit {p.returncode}\n{err.decode()[-3000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not failures, "\n".join(failures)
