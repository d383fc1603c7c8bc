"""The analyst's side of a node deployment: sign a spec, submit it to every node, wait,
check that every node revealed the identical result.

    from jointstats.node.client import submit
    result = submit("protocols/cohort-summary.yaml",
                    ["https://a.example:8701", "https://b.example:8701", "https://c.example:8701"],
                    "keys/alice.key", ca="keys/ca.crt", out="result.json")
    print(result.summary())
"""
from __future__ import annotations

import json
import logging
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from jointstats import errors as _errors
from jointstats.errors import AuthError, ConfigError, JointStatsError, PartyError, SpecError
from jointstats.result import Result

__all__ = ["submit", "fetch_result", "NodeClient"]

#: Seconds one HTTP request to a node may take.
REQUEST_TIMEOUT = 15.0
#: Seconds a node may stay unreachable while a job is under way before the job is given up.
UNREACHABLE_LIMIT = 20.0
#: Seconds to wait for the other nodes' verdicts after one node reported a failure.
FAILURE_SETTLE = 35.0


#: Attempts of one request when the node is busy (503) or the connection fails before the
#: request is sent (and, for reads, when it breaks before the answer), and the first pause
#: between attempts (doubled each time; a node's Retry-After counts, at most RETRY_PAUSE_MAX).
RETRY_ATTEMPTS = 3
RETRY_PAUSE = 0.2
RETRY_PAUSE_MAX = 2.0


class _Unreachable(JointStatsError):
    """A node did not answer (connection refused, reset, timed out, TLS failure)."""


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _with_retries(method: str, send):
    """``send()`` (an httpx request) with the client's one retry policy: a 503 (the node did
    nothing: it was busy) and a connection that failed before the request went out are tried
    again, for any method; a read whose answer was lost is tried again too; a POST whose
    answer was lost is not (it may have been applied). TLS failures are never retried."""
    import httpx
    pause = RETRY_PAUSE
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        last = attempt == RETRY_ATTEMPTS
        try:
            response = send()
        except httpx.TransportError as exc:
            unsent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            if last or _caused_by(exc, ssl.SSLError) or not (unsent or method == "GET"):
                raise
        else:
            if response.status_code != 503 or last:
                return response
            try:
                pause = max(pause, float(response.headers.get("Retry-After", 0)))
            except ValueError:
                pass
        time.sleep(min(pause, RETRY_PAUSE_MAX))
        pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


class NodeClient:
    """A thin JSON client for one node's API (httpx)."""

    def __init__(self, url: str, ca: str | Path | None = None, timeout: float = REQUEST_TIMEOUT,
                 signer: tuple[str | Path, str] | None = None, crl: str | Path | None = None):
        """``signer``: (analyst key file, analyst name): GET requests other than ``/health``
        are then signed (the node answers them only to a listed analyst). ``crl``: the
        consortium's revocation list; an https node whose certificate it lists is refused."""
        import httpx
        self.signer = signer
        url = url.strip().rstrip("/")
        if "://" not in url:
            url = "http://" + url
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"node URL {url!r}: expected http:// or https://")
        self.url = url
        self.timeout = timeout
        self.party: str | None = None
        verify: ssl.SSLContext | bool = True
        if url.startswith("https://"):
            try:
                verify = ssl.create_default_context(cafile=str(ca) if ca else None)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"--ca {ca}: cannot load: {exc}") from None
            if crl is not None:
                from jointstats.consortium.crl import apply_crl
                apply_crl(verify, Path(crl))
        self._http = httpx.Client(verify=verify, timeout=httpx.Timeout(timeout),
                                  headers={"Accept": "application/json"})
        # httpx logs every request at INFO; MPyC's import sets the root logger to INFO: the
        # analyst's terminal gets one progress line from jointstats instead
        logging.getLogger("httpx").setLevel(logging.WARNING)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def label(self) -> str:
        return f"node {self.url}" + (f" (party {self.party!r})" if self.party else "")

    def request(self, method: str, path: str, body: Any = None,
                headers: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON); _Unreachable if the node does not answer."""
        import httpx
        data = None if body is None else json.dumps(body).encode()
        if method == "GET" and self.signer and headers is None and path != "/health":
            headers = signed_headers(self.signer[0], f"GET {path}", f"GET {path}", self.signer[1])
        try:
            response = _with_retries(method, lambda: self._http.request(
                method, self.url + path, content=data,
                headers={"Content-Type": "application/json", **(headers or {})}))
        except httpx.HTTPError as exc:
            raise _Unreachable(f"{self.label} is not reachable: {_reason(exc)}") from None
        try:
            return response.status_code, json.loads(response.content or b"null")
        except ValueError:
            raise _Unreachable(f"{self.label} answered {response.status_code} with something "
                               f"that is not JSON; is it a jointstats node?") from None

    def get(self, path: str, headers: dict | None = None) -> Any:
        status, payload = self.request("GET", path, headers=headers)
        if status != 200:
            raise _error(self, status, payload)
        return payload


def _reason(exc: BaseException) -> str:
    """The innermost reason of a transport error, one line (e.g. the TLS verification failure)."""
    text = str(exc) or type(exc).__name__
    inner: BaseException | None = exc
    for _ in range(20):
        inner = inner.__cause__ or inner.__context__
        if inner is None:
            break
        text = str(inner) or text
    return " ".join(text.split())[:200]


def _error(node: NodeClient, status: int, payload: Any, what: str = "answered") -> JointStatsError:
    """A JointStatsError of the class the node named, with its one-line reason."""
    msg = payload.get("error") if isinstance(payload, dict) else None
    kind = payload.get("kind") if isinstance(payload, dict) else None
    cls = {"ReplayError": AuthError, "AuthError": AuthError}.get(kind or "")
    if cls is None:
        cls = getattr(_errors, kind or "", None)
        if not (isinstance(cls, type) and issubclass(cls, JointStatsError)):
            cls = PartyError
    return cls(f"{node.label} {what}: {msg or f'HTTP {status}'}")


def _sign(key_path, text: str, job_id: str, analyst: str) -> tuple[int, str]:
    from jointstats.consortium.keys import sign_submission
    ts = int(time.time())
    return ts, sign_submission(key_path, text, job_id, ts, analyst)


def signed_headers(key_path, text: str, nonce: str, analyst: str) -> dict[str, str]:
    """The headers that authenticate a read: the analyst's fresh signature over ``text``."""
    ts, sig = _sign(key_path, text, nonce, analyst)
    return {"X-Jointstats-Analyst": analyst, "X-Jointstats-Timestamp": str(ts),
            "X-Jointstats-Signature": sig}


def fetch_result(node: NodeClient, job_id: str, key_path, analyst: str) -> dict:
    """A finished job's result from one node (signed: results go only to their analyst)."""
    return node.get(f"/jobs/{job_id}/result",
                    headers=signed_headers(key_path, f"result:{job_id}", job_id, analyst))


def _cancel(nodes: list[NodeClient], job_id: str, key_path, analyst: str) -> None:
    """Best effort: withdraw a job from nodes where it is still queued."""
    for node in nodes:
        try:
            ts, sig = _sign(key_path, f"cancel:{job_id}", job_id, analyst)
            node.request("POST", f"/jobs/{job_id}/cancel",
                         {"analyst": analyst, "timestamp": ts, "signature": sig})
        except JointStatsError:
            pass


class _Progress:
    """One updating status line on stderr (only when it is a terminal)."""

    def __init__(self, enabled: bool, job_id: str):
        self.enabled = enabled
        self.job_id = job_id
        self.started = time.monotonic()
        self.last = ""

    def show(self, states: dict[str, str]) -> None:
        if not self.enabled:
            return
        text = ", ".join(f"{party}: {state}" for party, state in states.items())
        line = f"job {self.job_id[:8]}  {text}  {time.monotonic() - self.started:.0f} s"
        if line != self.last:
            sys.stderr.write("\r\033[K" + line[:200])
            sys.stderr.flush()
            self.last = line

    def done(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def submit(spec_path: str | Path, nodes: list[str], key_path: str | Path,
           analyst: str | None = None, out: str | Path | None = None,
           timeout: float = 4 * 3600.0, *, ca: str | Path | None = None,
           crl: str | Path | None = None, progress: bool | None = None,
           job_id: str | None = None) -> Result:
    """Sign ``spec_path`` with the analyst's Ed25519 key, run it on every node, return the Result.

    ``nodes`` are the API URLs of every party's node (one per party). The analyst's name
    is the key file's stem unless ``analyst`` is given. A node that is down, refuses the
    submission, fails the job or reveals a different result makes this raise a
    JointStatsError naming that node; the job is then withdrawn from nodes where it is
    still queued. ``ca`` verifies nodes served over https; ``crl`` refuses a node whose
    certificate the consortium revoked.
    """
    from jointstats.plan.spec import parse_spec
    spec_path = Path(spec_path)
    try:
        text = spec_path.read_text()
    except OSError as exc:
        raise SpecError(f"spec: cannot read {spec_path}: {exc.strerror}") from None
    parse_spec(text)  # a malformed spec fails here, before any node sees it
    key_path = Path(key_path)
    analyst = analyst or key_path.stem
    if not nodes:
        raise ConfigError("no nodes given: pass every party's node URL")
    clients = [NodeClient(u, ca, signer=(key_path, analyst), crl=crl) for u in nodes]
    if progress is None:
        progress = sys.stderr.isatty()
    try:
        return _run(clients, text, key_path, analyst, out, timeout, progress, job_id)
    finally:
        for node in clients:
            node.close()


def _run(clients: list[NodeClient], text: str, key_path: Path, analyst: str,
         out: str | Path | None, timeout: float, progress: bool, job_id: str | None) -> Result:
    """Steps 1-4 of :func:`submit`."""
    # 1. every node must be up, and together they must be the whole consortium
    healths: dict[str, dict] = {}
    for node in clients:
        health = node.get("/health")
        node.party = health.get("party")
        if node.party in healths:
            raise ConfigError(f"nodes {healths[node.party]['_url']} and {node.url} are both "
                              f"party {node.party!r}")
        healths[node.party] = {**health, "_url": node.url}
    consortium = list(next(iter(healths.values())).get("parties") or [])
    for party, h in healths.items():
        if list(h.get("parties") or []) != consortium:
            raise ConfigError(f"node {h['_url']} (party {party!r}) belongs to another consortium "
                              f"({', '.join(h.get('parties') or [])} vs {', '.join(consortium)})")
    missing = [p for p in consortium if p not in healths]
    if missing:
        raise ConfigError(f"no node given for part{'ies' if len(missing) > 1 else 'y'} "
                          f"{', '.join(map(repr, missing))} (the consortium is "
                          f"{', '.join(consortium)}); pass every party's node URL")

    # 2. sign once, submit the identical body to every node
    job_id = job_id or uuid.uuid4().hex
    timestamp, signature = _sign(key_path, text, job_id, analyst)
    body = {"spec": text, "job_id": job_id, "timestamp": timestamp, "analyst": analyst,
            "signature": signature}
    accepted: list[NodeClient] = []
    for node in clients:
        try:
            status, payload = node.request("POST", "/jobs", body)
        except JointStatsError:
            _cancel(accepted, job_id, key_path, analyst)
            raise
        if status != 202:
            _cancel(accepted, job_id, key_path, analyst)
            raise _error(node, status, payload, "refused the job")
        accepted.append(node)

    # 3. wait for every node's verdict
    shown = _Progress(progress, job_id)
    deadline = time.monotonic() + timeout
    last_seen = {n.url: time.monotonic() for n in clients}
    states: dict[str, dict] = {}
    first_failure: float | None = None
    try:
        while True:
            for node in clients:
                try:
                    status, payload = node.request("GET", f"/jobs/{job_id}")
                except _Unreachable:
                    if time.monotonic() - last_seen[node.url] > UNREACHABLE_LIMIT or first_failure:
                        states[node.party] = {"status": "unreachable",
                                              "error": f"{node.label} stopped answering during the job"}
                    continue
                last_seen[node.url] = time.monotonic()
                if status != 200:
                    states[node.party] = {"status": "failed",
                                          "error": str(_error(node, status, payload))}
                else:
                    states[node.party] = payload
            shown.show({p: _state_text(states.get(p)) for p in consortium})
            verdicts = {p: s for p, s in states.items()
                        if s.get("status") in ("done", "failed", "cancelled", "unreachable")}
            bad = {p: s for p, s in verdicts.items() if s["status"] != "done"}
            if bad and first_failure is None:
                first_failure = time.monotonic()
                _cancel([n for n in clients if states.get(n.party, {}).get("status") == "queued"],
                        job_id, key_path, analyst)
            if len(verdicts) == len(consortium):
                break
            if first_failure is not None and time.monotonic() - first_failure > FAILURE_SETTLE:
                break
            if time.monotonic() > deadline:
                _cancel(clients, job_id, key_path, analyst)
                raise PartyError(f"job {job_id} did not finish within {timeout:.0f} s "
                                 f"({', '.join(f'{p}: {_state_text(states.get(p))}' for p in consortium)})")
            time.sleep(0.25)
    finally:
        shown.done()
    failures = [(p, s.get("error") or s["status"], s.get("error_kind")) for p, s in states.items()
                if s.get("status") not in ("done", "cancelled")]
    # a cancellation is this client's own withdrawal after another node's failure
    failures = failures or [(p, s.get("error") or s["status"], s.get("error_kind"))
                            for p, s in states.items() if s.get("status") == "cancelled"]
    if failures:
        from jointstats.local.runner import _root_error
        message, kind = _root_error(failures)
        raise PartyError(f"job {job_id} failed: {message}", cause=kind)

    # 4. every node must have revealed the identical result
    results = {}
    for node in clients:
        results[node.party] = fetch_result(node, job_id, key_path, analyst)
    first_party = consortium[0]
    for party in consortium[1:]:
        if results[party] != results[first_party]:
            raise PartyError(f"node of party {party!r} returned a different result from that of "
                             f"{first_party!r} for job {job_id}; the job is void")
    result = Result.from_dict(_with_provenance(results[first_party], clients, job_id, key_path, analyst))
    if out is not None:
        Path(out).write_text(result.to_json())
    return result


def _with_provenance(result: dict, clients: list[NodeClient], job_id: str, key_path, analyst: str) -> dict:
    """``result`` with every node's signed attestation merged in as its ``provenance``
    (jointstats.engine.report); unchanged if some node offers none."""
    from jointstats.engine.report import merge
    attestations = {}
    for node in clients:
        try:
            attestations[node.party] = node.get(
                f"/jobs/{job_id}/attestation",
                headers=signed_headers(key_path, f"attestation:{job_id}", job_id, analyst))
        except JointStatsError:
            return result
    return merge(result, attestations)


def _state_text(state: dict | None) -> str:
    if not state:
        return "?"
    text = state.get("status", "?")
    if text == "running" and state.get("progress"):
        text += f" ({state['progress']})"
    return text

