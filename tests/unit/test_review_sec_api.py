"""Security review (2026-12-04): the node's HTTP API against an unauthenticated outsider.

Each test asserts the secure behaviour (it was ``xfail(strict=True)`` while the weakness was there).
Loopback only (127.0.0.x source addresses), bounded counts and times.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from jointstats.node.service import Node, make_server
from tests.conftest import cohort_frame, write_consortium


@pytest.fixture
def served(tmp_path):
    cfg = write_consortium(tmp_path, [cohort_frame(5, i) for i in range(3)])[0]
    node = Node(cfg, log=lambda m: None)
    srv = make_server(node, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield node, srv, srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    node.state.close()


def test_a_few_addresses_cannot_starve_other_clients(served):
    """Review: 4 source addresses x 16 idle connections took all 64 slots and every other
    client got 503. Now a new connection takes the place of the oldest idle one of the
    address holding the most (jointstats.node.server.Connections)."""
    _, srv, port = served
    socks = []
    try:
        for i in range(2, 6):  # one outsider, four addresses (a v6 /64 gives it millions)
            for _ in range(16):
                s = socket.socket()
                s.bind((f"127.0.0.{i}", 0))
                s.connect(("127.0.0.1", port))
                s.send(b"GET /health HTTP/1.0\r\n")  # headers never finished
                socks.append(s)
        time.sleep(0.5)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/health")
        status = c.getresponse().status
        c.close()
    finally:
        for s in socks:
            s.close()
    assert status == 200, f"an honest client got {status} while one outsider held {len(socks)} idle connections"


def test_unauthenticated_refusals_do_not_grow_the_audit_log_without_bound(served):
    node, _, port = served
    before = node.state.audit_head()[0]
    body = json.dumps({"spec": "x", "job_id": "A" * 128, "timestamp": 1, "analyst": "m" * 64,
                       "signature": "s"}).encode()
    for _ in range(200):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/jobs", body, {"Content-Type": "application/json"})
        c.getresponse().read()
        c.close()
    grown = node.state.audit_head()[0] - before
    assert grown < 50, f"200 unauthenticated requests appended {grown} audit records"
