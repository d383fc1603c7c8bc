"""Test material shared across folders: the spec YAML of ``tests.conftest.cohort_frame``'s columns,
a valid party config, a cluster of nodes started and stopped together, and reading a raw
HTTP answer to its end.

(Ports: ``tests/ports.py``; consortia of party configs: ``tests/conftest.py``.)"""
from __future__ import annotations

import contextlib
import socket

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
