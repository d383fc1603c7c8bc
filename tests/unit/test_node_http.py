"""The node's web stack (FastAPI on uvicorn, jointstats.node.server): the served OpenAPI
document, the size, slow-client and concurrency limits, per-address fairness, planning off
the event loop, and the client's retries. Loopback only; bounded counts and times; no
assertion tighter than the fault it tests (a hang, a lock-out)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import yaml

from jointstats.node import client as client_module
from jointstats.node.client import NodeClient
from jointstats.consortium.keys import make_analyst_key
from jointstats.node.service import Node, make_server
from tests.conftest import cohort_frame, write_consortium
from tests.common import recv_all
from tests.ports import can_bind
from tests.unit.test_node_api import body, call, get

#: A DP histogram of 10,000 bins: parsing and planning it takes seconds of CPU.
BIG_EDGES = ", ".join(str(round(18 + i * 0.008, 3)) for i in range(10_001))
BIG_SPEC = f"""name: big
dataset: cohort
schema:
  age: {{type: real, bounds: [18, 100]}}
privacy: {{epsilon: 1.0, delta: 1.0e-6}}
statistics:
  h: {{kind: histogram, column: age, bins: [{BIG_EDGES}]}}
"""


@pytest.fixture
def make_node(tmp_path):
    """A factory: party A's node serving its API with the given limits (scheduler not started)."""
    started = []

    def make(**limits):
        configs = write_consortium(tmp_path / f"c{len(started)}", [cohort_frame(10, i) for i in range(3)],
                                   policy={"allow_exact": True})
        keys = tmp_path / f"c{len(started)}" / "analysts"
        make_analyst_key("alice", keys)
        data = yaml.safe_load(configs[0].read_text())
        data["policy"]["analysts"] = {"alice": "../analysts/alice.pub"}
        configs[0].write_text(yaml.safe_dump(data))
        node = Node(configs[0], log=lambda msg: None)
        server = make_server(node, port=0, **limits)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        node.url = f"http://127.0.0.1:{server.server_address[1]}"
        node.port = server.server_address[1]
        node.keys = keys
        node.server = server
        started.append((node, server))
        return node

    yield make
    for node, server in started:
        server.shutdown()
        server.server_close()
        node.stop()


def _block(node, method: str):
    """Make ``node.<method>`` wait until the returned event is set (as a slow handler would)."""
    release, entered = threading.Event(), threading.Semaphore(0)
    real = getattr(node, method)

    def slow(*args, **kwargs):
        entered.release()
        release.wait(30)
        return real(*args, **kwargs)
    setattr(node, method, slow)
    return release, entered


# ----------------------------------------------------------------------------- OpenAPI

def test_served_openapi_document_is_generated_from_the_models_and_validates(make_node):
    validator = pytest.importorskip("openapi_spec_validator")
    node = make_node()
    status, doc = get(node, "/openapi.json")
    assert status == 200
    validator.validate(doc)
    assert doc["openapi"].startswith("3.1") and "party_a" in doc["info"]["description"]
    schemas = doc["components"]["schemas"]
    for model in ("Submission", "Cancel", "Job", "Health", "PolicyView", "Result", "Error"):
        assert model in schemas, model
    assert schemas["Job"]["properties"]["status"]["enum"] == ["waiting", "queued", "running",
                                                              "done", "failed", "cancelled"]
    post = doc["paths"]["/jobs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"] == \
        "#/components/schemas/Submission"
    assert {"202", "400", "401", "403", "409", "411", "413", "503"} <= set(post["responses"])
    result = doc["paths"]["/jobs/{job_id}/result"]["get"]
    assert {p["name"] for p in result["parameters"]} == {
        "job_id", "x-jointstats-analyst", "x-jointstats-timestamp", "x-jointstats-signature"}
    assert not any("422" in op["responses"] for item in doc["paths"].values() for op in item.values())
    # the hand-written document is gone: the module builds it from the app
    from jointstats.node import http as _node_http
    from jointstats.node import service as node_module
    assert not hasattr(node_module, "_Handler") and hasattr(_node_http, "ROUTES")


# ----------------------------------------------------------------------------- size limit

def test_an_oversized_body_is_refused_with_413_before_it_is_read(make_node):
    node = make_node(max_body=4096)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000000\r\n\r\n" + b"{" + b" " * 1000)  # 1 KB of 5 MB sent
        answer = recv_all(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(payload) == {"error": "request body larger than 4096 bytes", "kind": "HTTPError"}
    # a body within the limit is read and checked as usual
    assert call(node, "POST", "/jobs", body(node))[0] == 202


# ----------------------------------------------------------------------------- slow clients

@pytest.mark.slow
def test_a_client_sending_its_headers_slowly_is_cut_and_others_are_served(make_node):
    node = make_node(request_deadline=1.5)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        cut = None
        for i in range(100):  # a header line every 0.1 s, never the blank line that ends them
            if i % 10 == 0:  # meanwhile other clients are served
                assert call(node, "GET", "/health")[0] == 200
            try:
                sock.sendall(f"X-Slow-{i}: y\r\n".encode())
                sock.settimeout(0.1)
                if sock.recv(100) == b"":
                    cut = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:
                cut = time.monotonic() - started
                break
    assert cut is not None and 1.0 < cut < 8, cut  # cut at its deadline, not before, not never
    assert node.server.connections() <= 1


# ----------------------------------------------------------------------------- concurrency

def test_requests_beyond_the_concurrency_limit_get_503_at_once(make_node):
    node = make_node(max_requests=2)
    release, entered = _block(node, "health")
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(call(node, "GET", "/health")[0]))
               for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            assert entered.acquire(timeout=10)  # both are being served (and held)
        t0 = time.monotonic()
        status, payload = call(node, "GET", "/health")
        assert status == 503 and payload["kind"] == "Busy" and "too many requests" in payload["error"]
        assert time.monotonic() - t0 < 5  # answered at once, not queued behind the held ones
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert answers == [200, 200]
    assert call(node, "GET", "/health")[0] == 200


def test_one_address_cannot_take_every_request_slot(make_node):
    if not can_bind("127.0.0.2"):
        pytest.skip("no second loopback address")
    node = make_node(max_requests=4, max_requests_per_client=1)
    release, entered = _block(node, "health")
    held = threading.Thread(target=lambda: call(node, "GET", "/health"))
    held.start()
    try:
        assert entered.acquire(timeout=10)
        from tests.unit.test_hostile_input import raw_request, status_and_json
        status, payload = status_and_json(raw_request(node.url, b"GET /policy HTTP/1.0\r\n\r\n"))
        assert status == 503 and "from this client address" in payload["error"]
        other = raw_request(node.url, b"GET /policy HTTP/1.0\r\n\r\n", source="127.0.0.2")
        assert status_and_json(other)[0] == 401  # served (and refused only for its signature)
    finally:
        release.set()
        held.join(10)


def test_when_connections_are_full_an_idle_one_makes_room(make_node):
    """Every slot held by idle connections: a new client still gets in, in place of the oldest
    idle connection (here all from one address, whose cap is above the total)."""
    node = make_node(max_connections=8, max_per_client=16)
    idle = [socket.create_connection(("127.0.0.1", node.port), timeout=10) for _ in range(8)]
    try:
        for s in idle:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # never finished
        deadline = time.monotonic() + 10
        while node.server.connections() < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.server.connections() == 8
        c = NodeClient(node.url)
        assert c.get("/health")["ok"]
        c.close()
        idle[0].settimeout(5)
        assert recv_all(idle[0]) == b""  # the oldest was cut to make room
        assert node.server.registry.evicted >= 1
    finally:
        for s in idle:
            s.close()


def test_client_addresses_count_by_ipv4_address_and_ipv6_64():
    from jointstats.node.server import client_key
    assert client_key("127.0.0.2") == "127.0.0.2"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key(None) == "?"


# ----------------------------------------------------------------------------- planning

def test_health_answers_while_a_large_spec_is_planned(make_node):
    """Parsing and planning a 10,000-bin DP histogram takes seconds of CPU; it runs in a worker
    thread, never in the server's event loop, so /health answers meanwhile. (The planning
    does not return before /health has answered: were it in the event loop, /health could
    never answer and the test would fail, not just slow down.)"""
    node = make_node()
    planning, health_seen = threading.Event(), threading.Event()
    real = node._plan

    def plan(spec):
        planning.set()
        result = real(spec)
        health_seen.wait(30)  # the plan is not returned until /health has answered
        return result
    node._plan = plan
    submitted = []
    t = threading.Thread(target=lambda: submitted.append(
        call(node, "POST", "/jobs", body(node, spec=BIG_SPEC, job_id="big"))))
    t.start()
    try:
        assert planning.wait(30)
        status, health = call(node, "GET", "/health")
        assert status == 200 and health["ok"]
        assert not submitted  # answered while the submission was being planned
    finally:
        health_seen.set()
        t.join(60)
    assert submitted[0][0] == 202, submitted
    assert submitted[0][1]["mode"] == "dp"


@pytest.mark.slow
def test_planning_turns_are_bounded_and_a_busy_refusal_keeps_the_job_id(make_node):
    from jointstats.node import service as node_module
    node = make_node()
    node.planning_wait = 0.5
    release, entered = _block(node, "_plan")
    threads = [threading.Thread(target=call, args=(node, "POST", "/jobs", body(node, job_id=f"hold{i}")))
               for i in range(node_module.MAX_PLANNING)]
    for t in threads:
        t.start()
    try:
        for _ in threads:
            assert entered.acquire(timeout=10)
        b = body(node, job_id="third")
        status, payload = call(node, "POST", "/jobs", b)
        assert status == 503 and payload["kind"] == "Busy" and "busy planning" in payload["error"]
    finally:
        release.set()
        for t in threads:
            t.join(30)
    assert call(node, "POST", "/jobs", b)[0] == 202  # the same submission, accepted now


# ----------------------------------------------------------------------------- client

@pytest.mark.slow
def test_client_retries_a_busy_node(make_node, monkeypatch):
    node = make_node(max_requests=1)
    release, entered = _block(node, "health")
    held = threading.Thread(target=lambda: call(node, "GET", "/health"))
    held.start()
    assert entered.acquire(timeout=10)
    attempts = []
    real_send = client_module._with_retries

    def counting(method, send):
        def wrapped():
            response = send()
            attempts.append(response.status_code)
            if response.status_code == 503:
                release.set()  # the held request finishes: the retry finds a free slot
            return response
        return real_send(method, wrapped)
    monkeypatch.setattr(client_module, "_with_retries", counting)
    c = NodeClient(node.url)
    try:
        assert c.get("/health")["ok"]
    finally:
        release.set()
        held.join(10)
        c.close()
    assert attempts[0] == 503 and attempts[-1] == 200


def test_client_does_not_retry_a_refusal(make_node, monkeypatch):
    node = make_node()
    sent = []
    real_send = client_module._with_retries
    monkeypatch.setattr(client_module, "_with_retries",
                        lambda method, send: real_send(method, lambda: sent.append(1) or send()))
    c = NodeClient(node.url)
    assert c.request("GET", "/policy")[0] == 401
    assert c.request("POST", "/jobs", {"spec": "x"})[0] == 400
    c.close()
    assert len(sent) == 2


def test_limits_must_be_positive_and_known(make_node, tmp_path):
    from jointstats.errors import ConfigError
    node = make_node()
    with pytest.raises(ConfigError, match="api limits: max_per_client must be positive"):
        make_server(node, port=0, max_per_client=0)
    with pytest.raises(ConfigError, match="api limits: .*max_thing"):
        make_server(node, port=0, max_thing=3)
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "jointstats.cli.commands", "node", "serve", "--config",
                           str(node.config.path), "--max-connections-per-client", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "max_per_client must be positive" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
