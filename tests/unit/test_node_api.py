"""Node API in one process (no MPC, no scheduler): authentication, refusals, audit, OpenAPI, client checks."""
from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
import yaml

from jointstats.node.client import NodeClient, submit
from jointstats.errors import AuthError, ConfigError, JointStatsError
from jointstats.consortium.keys import make_analyst_key, make_ca, make_party_cert, sign_submission
from jointstats.node.service import Node, make_server
from tests.conftest import cohort_frame, free_ports, write_consortium

SPEC = """name: t
dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
"""


@pytest.fixture
def node(tmp_path):
    """Party A's node serving its API on a free port (scheduler not started: jobs stay queued)."""
    configs = write_consortium(tmp_path, [cohort_frame(10, i) for i in range(3)],
                               policy={"allow_exact": True})
    for name in ("alice", "bob", "mallory"):
        make_analyst_key(name, tmp_path / "analysts")
    data = yaml.safe_load(configs[0].read_text())
    data["policy"]["analysts"] = {"alice": "../analysts/alice.pub", "bob": "../analysts/bob.pub"}
    configs[0].write_text(yaml.safe_dump(data))
    n = Node(configs[0])
    server = make_server(n, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    n.url = f"http://127.0.0.1:{server.server_address[1]}"
    n.keys = tmp_path / "analysts"
    n.config_path = configs[0]
    yield n
    server.shutdown()
    server.server_close()
    n.stop()


def call(node, method, path, body=None, raw=None, headers=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(node.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def body(node, analyst="alice", spec=SPEC, job_id="job-1", ts=None, key=None, signed_spec=None):
    ts = int(time.time()) if ts is None else ts
    sig = sign_submission(node.keys / f"{key or analyst}.key", signed_spec or spec, job_id, ts, analyst)
    return {"spec": spec, "job_id": job_id, "timestamp": ts, "analyst": analyst, "signature": sig}


def result_headers(node, analyst="alice", job_id="job-1", key=None, ts=None):
    ts = int(time.time()) if ts is None else ts
    sig = sign_submission(node.keys / f"{key or analyst}.key", f"result:{job_id}", job_id, ts, analyst)
    return {"X-Jointstats-Analyst": analyst, "X-Jointstats-Timestamp": str(ts),
            "X-Jointstats-Signature": sig}


def read_headers(node, path, analyst="alice", key=None, ts=None):
    """Signed headers for an authenticated read of ``path`` (every route but /health)."""
    ts = int(time.time()) if ts is None else ts
    sig = sign_submission(node.keys / f"{key or analyst}.key", f"GET {path}", f"GET {path}", ts, analyst)
    return {"X-Jointstats-Analyst": analyst, "X-Jointstats-Timestamp": str(ts),
            "X-Jointstats-Signature": sig}


def get(node, path, **kw):
    return call(node, "GET", path, headers=read_headers(node, path, **kw))


def refusals(node):
    return [r["fields"] for r in node.state.audit_records() if r["event"] == "refusal"]


def test_health_policy_openapi(node):
    status, h = call(node, "GET", "/health")
    assert status == 200 and h["ok"] and h["party"] == "party_a" and h["index"] == 0
    assert h["parties"] == ["party_a", "party_b", "party_c"] and h["queued"] == 0
    for path in ("/policy", "/openapi.json", "/jobs/job-1"):  # only /health is public
        status, p = call(node, "GET", path)
        assert status == 401 and p["kind"] == "AuthError" and "authentication required" in p["error"]
        assert get(node, path, key="bob")[0] == 401  # signed with another analyst's key
    assert call(node, "GET", "/policy", headers=read_headers(node, "/openapi.json"))[0] == 401
    status, p = get(node, "/policy")
    assert status == 200 and p["party"] == "party_a"
    assert p["policy"]["analysts"] == ["alice", "bob"] and p["policy"]["allow_exact"] is True
    assert p["datasets"]["cohort"]["remaining"]["epsilon"] == 100.0
    assert "source" not in json.dumps(p)  # where the data lives is not published
    status, doc = get(node, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/policy", "/health"):
        assert path in doc["paths"]
    assert doc["components"]["schemas"]["Submission"]["required"] == [
        "spec", "job_id", "timestamp", "analyst", "signature"]
    assert call(node, "GET", "/nope")[0] == 404


def test_accepted_submission_is_queued_and_audited(node):
    status, job = call(node, "POST", "/jobs", body(node))
    assert status == 202, job
    assert job["status"] == "queued" and job["analyst"] == "alice" and job["mode"] == "exact"
    status, again = get(node, "/jobs/job-1")
    assert status == 200 and again["status"] == "queued"
    # a job's status goes only to its analyst
    assert call(node, "GET", "/jobs/job-1")[0] == 401
    status, other = get(node, "/jobs/job-1", analyst="bob")
    assert status == 403 and "not submitted by 'bob'" in other["error"]
    status, res = call(node, "GET", "/jobs/job-1/result", headers=result_headers(node))
    assert status == 409 and "queued" in res["error"]
    # results go only to the job's analyst, with a fresh signature
    status, res = call(node, "GET", "/jobs/job-1/result")
    assert status == 401 and "authentication required" in res["error"]
    status, res = call(node, "GET", "/jobs/job-1/result", headers=result_headers(node, "bob"))
    assert status == 403 and "not submitted by 'bob'" in res["error"]
    status, res = call(node, "GET", "/jobs/job-1/result", headers=result_headers(node, key="bob"))
    assert status == 401 and "invalid signature" in res["error"]
    status, res = call(node, "GET", "/jobs/job-1/result",
                       headers=result_headers(node, ts=int(time.time()) - 400))
    assert status == 401 and "stale" in res["error"]
    assert get(node, "/jobs/unknown")[0] == 404
    subs = [r["fields"] for r in node.state.audit_records() if r["event"] == "submission"]
    assert subs[-1]["job_id"] == "job-1" and subs[-1]["analyst"] == "alice"
    assert subs[-1]["spec_sha256"] == job["spec_sha256"]
    assert call(node, "GET", "/health")[1]["queued"] == 1


@pytest.mark.parametrize("case,status,match,reason", [
    ("unknown analyst", 401, "analyst 'mallory' is not listed in party 'party_a'", "unknown analyst"),
    ("wrong key", 401, "invalid signature", "bad signature"),
    ("altered spec", 401, "invalid signature", "bad signature"),
    ("garbage signature", 401, "not valid base64", "bad signature"),
    ("stale", 401, "stale: signed 301 s before", "stale timestamp"),
    ("future", 401, "in the future", "stale timestamp"),
])
def test_refused_submissions_are_audited(node, case, status, match, reason):
    now = int(time.time())
    b = {"unknown analyst": lambda: body(node, analyst="mallory"),
         "wrong key": lambda: body(node, analyst="alice", key="bob"),
         "altered spec": lambda: body(node, spec=SPEC + "# changed\n", signed_spec=SPEC),
         "garbage signature": lambda: {**body(node), "signature": "%%%"},
         "stale": lambda: body(node, ts=now - 301),
         "future": lambda: body(node, ts=now + 400)}[case]()
    code, payload = call(node, "POST", "/jobs", b)
    assert code == status, payload
    assert match in payload["error"] and "\n" not in payload["error"]
    assert payload["kind"] == "AuthError"
    last = refusals(node)[-1]
    assert last["reason"] == reason and last["job_id"] == "job-1"
    assert get(node, "/jobs/job-1")[0] == 404  # nothing queued
    # a refused (unauthenticated) submission does not use up the job id
    assert call(node, "POST", "/jobs", body(node))[0] == 202


def test_replayed_job_id_refused(node):
    b = body(node)
    assert call(node, "POST", "/jobs", b)[0] == 202
    code, payload = call(node, "POST", "/jobs", b)
    assert code == 409 and "already submitted" in payload["error"]
    assert refusals(node)[-1]["reason"] == "replay"
    # same id, fresh signature, other analyst: still a replay
    code, payload = call(node, "POST", "/jobs", body(node, analyst="bob"))
    assert code == 409
    ok, why = node.state.verify_audit()
    assert ok, why


def test_policy_and_spec_refusals(node):
    spec = SPEC.replace("dataset: cohort", "dataset: claims")
    code, payload = call(node, "POST", "/jobs", body(node, spec=spec, job_id="j-ds"))
    assert code == 403 and "does not offer dataset 'claims'" in payload["error"]
    code, payload = call(node, "POST", "/jobs", body(node, spec="dataset: [", job_id="j-bad"))
    assert code == 400 and payload["kind"] == "SpecError"
    assert refusals(node)[-1]["reason"] == "spec"
    assert [r["reason"] for r in refusals(node)] == ["policy", "spec"]


def test_exact_mode_refused_unless_allowed(tmp_path):
    configs = write_consortium(tmp_path, [cohort_frame(5, i) for i in range(2)], allow_exact=False)
    make_analyst_key("alice", tmp_path / "k")
    data = yaml.safe_load(configs[0].read_text())
    data["policy"]["analysts"] = {"alice": "../k/alice.pub"}
    configs[0].write_text(yaml.safe_dump(data))
    n = Node(configs[0])
    try:
        ts = int(time.time())
        from jointstats.node.service import ApiError
        with pytest.raises(ApiError, match="exact mode") as info:
            n.submit({"spec": SPEC, "job_id": "j", "timestamp": ts, "analyst": "alice",
                      "signature": sign_submission(tmp_path / "k/alice.key", SPEC, "j", ts, "alice")})
        assert info.value.status == 403 and info.value.kind == "PolicyError"
    finally:
        n.stop()


def test_malformed_requests(node):
    assert call(node, "POST", "/jobs", raw=b"{not json")[0] == 400
    code, payload = call(node, "POST", "/jobs", {"spec": SPEC})
    assert code == 400 and "lacks job_id" in payload["error"]
    code, payload = call(node, "POST", "/jobs", body(node, job_id="../../etc"))
    assert code == 400 and "job id" in payload["error"]
    code, payload = call(node, "POST", "/jobs", {**body(node), "timestamp": "now"})
    assert code == 400
    # an oversized body is refused from its Content-Length, before it is read
    import http.client
    host, port = node.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/jobs")
    conn.putheader("Content-Length", str(2 << 20))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "larger than" in json.loads(resp.read())["error"]
    conn.close()


def test_cancel(node):
    assert call(node, "POST", "/jobs", body(node))[0] == 202
    ts = int(time.time())

    def cancel_body(analyst, key=None, job="job-1"):
        return {"analyst": analyst, "timestamp": ts,
                "signature": sign_submission(node.keys / f"{key or analyst}.key", f"cancel:{job}",
                                             job, ts, analyst)}
    code, payload = call(node, "POST", "/jobs/job-1/cancel", cancel_body("bob"))
    assert code == 403 and "submitted by 'alice'" in payload["error"]
    code, payload = call(node, "POST", "/jobs/job-1/cancel", cancel_body("alice", key="bob"))
    assert code == 401
    code, payload = call(node, "POST", "/jobs/job-1/cancel", cancel_body("alice"))
    assert code == 200 and payload["status"] == "cancelled"
    assert call(node, "POST", "/jobs/job-1/cancel", cancel_body("alice"))[0] == 409
    code, payload = call(node, "GET", "/jobs/job-1/result", headers=result_headers(node))
    assert code == 409 and "cancelled" in payload["error"]
    fails = [r["fields"] for r in node.state.audit_records() if r["event"] == "failure"]
    assert fails[-1]["job_id"] == "job-1" and "cancelled by analyst 'alice'" in fails[-1]["reason"]


def test_restart_fails_jobs_left_queued_or_running(node):
    assert call(node, "POST", "/jobs", body(node, job_id="q1"))[0] == 202
    assert call(node, "POST", "/jobs", body(node, job_id="r1"))[0] == 202
    job = node.jobs["r1"]
    job.status = "running"  # as if the node died while the worker ran
    node.store.save(job)
    again = Node(node.config_path)
    try:
        assert again.jobs["q1"].status == "failed"
        assert "restarted before the job started" in again.jobs["q1"].error
        assert again.jobs["r1"].status == "failed" and "stopped during the job" in again.jobs["r1"].error
        ok, why = again.state.verify_audit()
        assert ok, why
    finally:
        again.stop()


def test_choose_earliest_common_job_and_fail_orphans(node):
    from jointstats.node.service import NodeJob
    now = time.time()

    def job(jid, ts, age):
        j = NodeJob(job_id=jid, analyst="alice", timestamp=ts, spec_sha256="s", protocol="p",
                    dataset="cohort", mode="exact", epsilon=None, received=now - age)
        node.jobs[jid] = j
        node.store.folder(jid).mkdir(parents=True)
        return j
    a, b, c, d = job("a", 10, 1), job("b", 5, 1), job("c", 1, 100), job("d", 2, 1)
    mine = [a, b, c, d]
    queues = {"party_a": [list(j.entry()) for j in mine],
              "party_b": [list(x.entry()) for x in (a, b, d)],
              "party_c": [list(x.entry()) for x in (b, a)]}
    chosen = node._choose(sorted(mine, key=NodeJob.entry), queues)
    assert chosen is b  # the earliest job every party holds
    assert c.status == "failed" and "parties 'party_b', 'party_c' do not hold job 'c'" in c.error
    assert d.status == "queued"  # missing at party_c, but still within the grace period


def test_submit_fails_at_once_naming_a_down_node(node, tmp_path):
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    with pytest.raises(JointStatsError, match=f"node {dead} is not reachable"):
        submit_spec = tmp_path / "s.yaml"
        submit_spec.write_text(SPEC)
        submit(submit_spec, [node.url, dead], node.keys / "alice.key")
    assert time.monotonic() - started < 10
    assert call(node, "GET", "/health")[1]["queued"] == 0  # nothing was submitted anywhere


def test_submit_needs_every_party(node, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    with pytest.raises(ConfigError, match="no node given for parties 'party_b', 'party_c'"):
        submit(spec, [node.url], node.keys / "alice.key")
    with pytest.raises(ConfigError, match="both party 'party_a'"):
        submit(spec, [node.url, node.url], node.keys / "alice.key")


def test_client_maps_refusals_to_error_classes(node):
    client = NodeClient(node.url)
    client.party = "party_a"
    code, payload = client.request("POST", "/jobs", body(node, analyst="mallory"))
    from jointstats.node.client import _error
    err = _error(client, code, payload, "refused the job")
    assert isinstance(err, AuthError)
    assert str(err).startswith(f"node {node.url} (party 'party_a') refused the job: analyst 'mallory'")


@pytest.mark.slow
def test_api_over_https(tmp_path):
    configs = write_consortium(tmp_path, [cohort_frame(5, i) for i in range(2)])
    make_ca(tmp_path / "ca")
    crt, key = make_party_cert("party_a", 0, tmp_path / "ca", tmp_path / "keys")
    n = Node(configs[0])
    server = make_server(n, port=0, api_cert=crt, api_key=key)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        assert NodeClient(url, ca=tmp_path / "ca/ca.crt").get("/health")["party"] == "party_a"
        with pytest.raises(JointStatsError, match="not reachable.*CERTIFICATE_VERIFY_FAILED"):
            NodeClient(url).get("/health")  # not trusted without the consortium CA
        # a plain-http client on the https port does not hang or crash the node
        with pytest.raises(JointStatsError):
            NodeClient(url.replace("https", "http"), timeout=5).get("/health")
        assert NodeClient(url, ca=tmp_path / "ca/ca.crt").get("/health")["ok"]
    finally:
        server.shutdown()
        server.server_close()
        n.stop()


def test_own_certificate_must_name_this_party(tmp_path):
    configs = write_consortium(tmp_path, [cohort_frame(5, i) for i in range(2)])
    make_ca(tmp_path / "ca")
    make_party_cert("party_b", 1, tmp_path / "ca", tmp_path / "keys")
    data = yaml.safe_load(configs[0].read_text())
    data["mpc"]["tls"] = {"cert": "../keys/party_b.crt", "key": "../keys/party_b.key", "ca": "../ca/ca.crt"}
    configs[0].write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"issued to 'party_b' \(index 1\), but this party is 'party_a' at index 0"):
        Node(configs[0])


def test_openapi_document_validates():
    validator = pytest.importorskip("openapi_spec_validator")
    from jointstats.node.service import openapi
    validator.validate(openapi())
