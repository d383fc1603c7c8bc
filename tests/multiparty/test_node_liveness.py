"""A node's worker that hangs mid-job (its process stopped: no message, no heartbeat) is
named by the other nodes' workers through the heartbeats (jointstats/_mpc.py), over the
nodes' mutual TLS, within the silence deadline, and every ledger stays consistent.

Three `jointstats node serve` processes, as in tests/multiparty/test_node.py (whose Cluster
and fault hooks this reuses): the ``sleep_after_connect`` hook holds party_b's worker once
connected (busy, not hung: its heartbeats go on), and the test then stops it with SIGSTOP.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from jointstats.errors import JointStatsError
from tests.common import nodes_running
from tests.multiparty.test_node import EXACT, ROWS, Cluster, _workers_of

#: Generous bound on a loaded machine; the target is 10 s (docs/node.md, Liveness and blame).
BOUND = 30.0


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("nodes"))
    with nodes_running(c):
        yield c


def _job_of(c: Cluster, i: int, before: set[str]) -> str | None:
    from tests.multiparty.test_node import _job_ids
    new = set(_job_ids(c, i)) - before
    return next(iter(new)) if new else None


def _status(c: Cluster, i: int, job_id: str) -> str | None:
    try:
        return c.status(i, job_id)["status"]
    except JointStatsError:  # not (yet) submitted there
        return None


def test_hung_worker_is_named_by_the_other_nodes_within_the_deadline(nodes):
    from tests.multiparty.test_node import _job_ids
    before = set(_job_ids(nodes, 0))
    nodes.trigger(1, "sleep_after_connect")
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = nodes.submit(EXACT, timeout=150)
        except JointStatsError as exc:
            outcome["error"] = str(exc)
    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    job_id = None
    while job_id is None and time.monotonic() - started < 30:
        job_id = _job_of(nodes, 0, before)
        time.sleep(0.1)
    assert job_id, "the job never started"
    hung_at = worker = None
    stopped: dict[int, float] = {}
    while len(stopped) < 2 and time.monotonic() - started < 90:
        if hung_at is None and (nodes.hooks[1] / "sleep_after_connect.taken").exists():
            # the worker has connected (and is held there): stop its process
            worker = int(re.findall(rf"job {job_id}: worker process (\d+)", nodes.log(1).read_text())[-1])
            os.kill(worker, signal.SIGSTOP)
            hung_at = time.monotonic()
        for i in (0, 2):
            if i not in stopped and _status(nodes, i, job_id) == "failed":
                stopped[i] = time.monotonic()
        time.sleep(0.05)
    assert hung_at is not None and len(stopped) == 2, (hung_at, stopped, nodes.logs())
    times = {i: round(t - hung_at, 2) for i, t in stopped.items()}
    print(f"\nnode mode, worker hung: other nodes failed the job {times} s after the hang")
    for i in (0, 2):
        error = nodes.status(i, job_id)["error"]
        assert error.startswith("party 'party_b' went silent"), (i, error)
        assert times[i] < BOUND, times
    os.kill(worker, signal.SIGKILL)  # end the stopped worker: its node records the failure
    for pid in _workers_of(nodes, job_id):
        os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert "error" in outcome and "party_b" in outcome["error"], outcome
    deadline = time.monotonic() + 30
    while _status(nodes, 1, job_id) not in ("failed", "done") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nodes.status(1, job_id)["status"] == "failed"
    nodes.assert_audits_intact()
    assert nodes.submit(EXACT).results["n"]["value"] == 3 * ROWS  # the nodes keep serving
