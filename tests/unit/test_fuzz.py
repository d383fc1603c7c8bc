"""Issue 16 item 7: property-based fuzzing of specs, party configs, HTTP requests and raw bytes
on a real node's API port. Never a traceback, a 500, a hang or a dead node.

A short run is part of the suite (a few seconds). A longer one::

    JOINTSTATS_FUZZ_EXAMPLES=5000 python3 -m pytest -q tests/unit/test_fuzz.py

(raw bytes on the MPC port are fuzzed in tests/unit/test_codec.py).
"""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from jointstats import ConfigError, JointStatsError, SpecError, parse_spec
from jointstats.consortium.config import parse_party_config
from jointstats.consortium.keys import make_analyst_key, sign_submission
from tests.common import party_config
from tests.conftest import cohort_frame, free_ports, write_consortium

#: Examples per property; raise it for a long run (docs/node.md, "Fuzzing").
EXAMPLES = int(os.environ.get("JOINTSTATS_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=30), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

VALID_SPEC = {
    "name": "fuzz",
    "dataset": "cohort",
    "schema": {"age": {"type": "real", "bounds": [18, 100]},
               "visits": {"type": "integer", "bounds": [0, 20]},
               "smoker": {"type": "categorical", "levels": ["no", "yes"]},
               "region": {"type": "categorical", "levels": ["north", "south", "east", "west"]}},
    "privacy": {"epsilon": 1.0, "delta": 0},
    "statistics": {"n": {"kind": "count"},
                   "m": {"kind": "mean", "column": "age"},
                   "v": {"kind": "variance", "column": "visits"},
                   "c": {"kind": "correlation", "columns": ["age", "visits"]},
                   "x": {"kind": "crosstab", "rows": "smoker", "cols": "region", "min_count": 3},
                   "h": {"kind": "histogram", "column": "age", "bins": [18, 40, 60, 100]},
                   "r": {"kind": "regression", "target": "age", "features": ["visits", "region"],
                         "ridge": 0.5, "intercept": True}},
}

VALID_CONFIG = party_config()

scalars = (st.none() | st.booleans() | st.integers(-10 ** 20, 10 ** 20)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["count", "mean", "crosstab", "regression", "histogram", "age",
                              "smoker", "region", "real", "categorical", "integer", "", "1e400",
                              "-0", "~", "no", "yes", "n\n"]))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                    | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                        ["kind", "column", "bins", "levels", "bounds", "type", "features"]),
                        inner, max_size=5), max_leaves=20)


def paths(tree, prefix=()):
    """Every path to a value in a nested dict/list."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from paths(value, prefix + (key,))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from paths(value, prefix + (i,))


@st.composite
def mutated(draw, base):
    """``base`` with one to three of its values replaced by junk or removed."""
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(tree))[1:]))
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(junk)
        if not list(paths(tree))[1:]:
            break
    return tree


def dump(tree) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


VALID_TEXT = dump(VALID_SPEC)
yaml_chars = st.text(alphabet=st.sampled_from(list("[]{}:-&*!|>'\"#%@`,? \n\tabkn01.<=~\\")) | st.characters(),
                     max_size=60)


@st.composite
def text_mutations(draw, text=VALID_TEXT):
    """The valid spec's text with a few stretches replaced by YAML-significant junk."""
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 10)))
        text = text[:start] + draw(yaml_chars) + text[end:]
    return text


spec_texts = (mutated(VALID_SPEC).map(dump) | text_mutations() | yaml_chars
              | junk.map(dump))


def check_spec(text: str) -> None:
    """What a node does with a submitted spec: parse, plan, noise plans; JointStatsError only."""
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    started = time.monotonic()
    try:
        spec = parse_spec(text)
        add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    except SpecError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) <= 300, message[:400]
    except JointStatsError as exc:
        assert "\n" not in str(exc)
    assert time.monotonic() - started < 10


@FUZZ
@given(spec_texts)
def test_fuzzed_specs_give_a_spec_or_one_line_spec_error(text):
    check_spec(text)


@FUZZ
@given(mutated(VALID_CONFIG))
def test_fuzzed_configs_give_a_config_or_one_line_config_error(tree):
    path = Path("/nonexistent/fuzz/a.yaml")
    try:
        parse_party_config(tree, path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 300, str(exc)[:400]


@FUZZ
@given(text_mutations(dump(VALID_CONFIG)) | yaml_chars)
def test_fuzzed_config_files_give_a_config_or_one_line_config_error(tmp_path_factory, text):
    from jointstats import load_party_config
    path = tmp_path_factory.mktemp("cfg") / "a.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))  # not always valid UTF-8
    try:
        load_party_config(path)
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 300, str(exc)[:400]


# ----------------------------------------------------------------------------- a real node

class RealNode:
    """One ``jointstats node serve`` process (party_a of a 3-party loopback consortium, plain
    HTTP; its peers never start, so queued jobs fail after --peer-wait)."""

    def __init__(self, root: Path):
        configs = write_consortium(root, [cohort_frame(10, i) for i in range(3)],
                                   policy={"allow_exact": True})
        make_analyst_key("alice", root / "analysts")
        data = yaml.safe_load(configs[0].read_text())
        data["policy"]["analysts"] = {"alice": "../analysts/alice.pub"}
        self.port = free_ports(1)[0]
        data["api"]["port"] = self.port
        configs[0].write_text(yaml.safe_dump(data))
        self.key = root / "analysts" / "alice.key"
        self.log = root / "node.log"
        cmd = [sys.executable, "-m", "jointstats.cli.commands", "node", "serve", "--config", str(configs[0]),
               "--peer-wait", "3", "--orphan-grace", "2", "--connect-timeout", "3"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                             [str(Path.cwd()), os.environ.get("PYTHONPATH", "")])})
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.exchange(b"GET /health HTTP/1.0\r\n\r\n", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)

    def exchange(self, data: bytes, timeout: float = 15) -> tuple[int | None, bytes]:
        """Send ``data``, half-close, read the whole answer: (status or None, body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        response = b"".join(chunks)
        if not response:
            return None, b""
        head, _, body = response.partition(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 1") and body.startswith(b"HTTP/1."):  # 100 Continue
            head, _, body = body.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1."), response[:200]
        return int(head.split()[1]), body

    def alive(self) -> None:
        assert self.proc.poll() is None, "node died: " + self.log.read_text()[-3000:]
        status, body = self.exchange(b"GET /health HTTP/1.0\r\n\r\n", timeout=10)
        assert status == 200 and json.loads(body)["ok"]
        log = self.log.read_text()
        assert "Traceback" not in log and "API bug" not in log, log[-3000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def real_node(tmp_path_factory):
    node = RealNode(tmp_path_factory.mktemp("fuzznode"))
    yield node
    node.stop()


def check_answer(status: int | None, body: bytes, method: str = "GET") -> None:
    assert status is not None, "no answer"
    assert status < 500, (status, body[:300])
    if method == "HEAD" and body == b"":  # an answer to HEAD has no body (RFC 9110)
        return
    payload = json.loads(body)
    if status >= 400:
        assert set(payload) == {"error", "kind"}, payload
        assert "\n" not in payload["error"] and len(payload["error"]) <= 300, payload


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get",
                           "POST ", "X" * 30])
job_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True) | st.text(max_size=30)
url_paths = st.one_of(
    st.sampled_from(["/health", "/policy", "/openapi.json", "/jobs", "/jobs/", "/", "//jobs",
                     "/jobs/x/result/", "/health?x=1", "/../../etc/passwd", "*"]),
    job_ids.map(lambda j: f"/jobs/{j}"), job_ids.map(lambda j: f"/jobs/{j}/result"),
    job_ids.map(lambda j: f"/jobs/{j}/cancel"),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(lambda s: "/" + s))
header_names = st.sampled_from(["Content-Length", "Content-Type", "Transfer-Encoding", "Expect",
                                "X-Jointstats-Analyst", "X-Jointstats-Timestamp",
                                "X-Jointstats-Signature", "Connection", "Host", "X-Other"])
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40) | \
    st.sampled_from(["-1", "0", "5", "99999999999", "chunked", "100-continue", "alice", "1e3"])
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["spec", "job_id", "timestamp", "analyst", "signature"]) | st.text(max_size=6),
        inner, max_size=6), max_leaves=15).map(lambda v: json.dumps(v).encode())
bodies = json_bodies | st.binary(max_size=200) | st.sampled_from(
    [b"[" * 5000, b'{"a":' * 3000, b'"\\ud800"', b"9" * 5000, b""])


@FUZZ
@given(methods, url_paths, st.lists(st.tuples(header_names, header_values), max_size=4), bodies,
       st.booleans())
def test_fuzzed_http_requests_never_500(real_node, method, path, headers, body, with_length):
    lines = [f"{method} {path} HTTP/1.1", "Host: fuzz"]
    lines += [f"{name}: {value}" for name, value in headers]
    if with_length and not any(name == "Content-Length" for name, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
    check_answer(*real_node.exchange(data), method=method)


@FUZZ
@given(spec_texts, st.sampled_from(["alice", "alice", "mallory", ""]),
       st.integers(-10, 10) | st.just(10 ** 30), job_ids)
def test_fuzzed_signed_submissions_never_500(real_node, spec, analyst, skew, job_id):
    """A real analyst's signature over a fuzzed spec: the node parses and plans it."""
    job_id = job_id if job_id.strip() else "j"
    job_id = f"{job_id}-{uuid.uuid4().hex[:8]}" if len(job_id) < 100 else job_id
    ts = int(time.time()) + skew
    try:
        signature = sign_submission(real_node.key, spec, job_id, ts, analyst or "alice")
    except (UnicodeEncodeError, JointStatsError):
        signature = "AAAA"
    body = json.dumps({"spec": spec, "job_id": job_id, "timestamp": ts, "analyst": analyst,
                       "signature": signature}).encode()
    data = (f"POST /jobs HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    check_answer(*real_node.exchange(data))


@FUZZ
@given(st.binary(max_size=2000) | st.sampled_from(
    [b"GET /health HTTP/1.1\r\n" + b"A" * 70000, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
     b"POST /jobs HTTP/1.1\r\nContent-Length: 10\r\n\r\n", b"\r\n" * 1000, b"GET\x00/ HTTP/1.1\r\n\r\n"]))
def test_raw_bytes_on_the_api_port_never_kill_the_node(real_node, data):
    status, body = real_node.exchange(data)
    if status is not None:
        assert status < 500, (status, body[:300])


def test_the_node_survived_the_fuzzing(real_node):
    """Runs after the fuzz tests above (same module, in order): the node is up, answers, and
    its log has no traceback."""
    real_node.alive()
