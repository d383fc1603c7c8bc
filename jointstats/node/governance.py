"""A node's governance routes and scheduler steps, as plain functions over a ``node.Node``.

Kept out of jointstats.node.service so that the HTTP layer stays thin: ``route`` maps
``GET /catalog``, ``GET /jobs`` (an analyst's own jobs; every job for an officer),
``GET /audit`` (officers), ``POST /jobs/<id>/approve`` and ``/reject`` (officers) and
``POST /policy/reload`` (officers) to the functions below, which check the caller's role
(jointstats.consortium.approval), audit every refusal, and return (HTTP status, JSON payload).
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable

from jointstats.consortium.approval import (ANALYST, OFFICER, ApiRefusal, authenticate, rendezvous_entry,
                        verify_decision)

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.node.service import Node, NodeJob

_DECIDE = re.compile(r"/jobs/([^/]+)/(approve|reject)")
_ATTESTATION = re.compile(r"/jobs/([^/]+)/attestation")
#: Most audit records one ``GET /audit`` returns (page on with ``?after=SEQ``).
AUDIT_PAGE = 1000


def _api_error(exc: ApiRefusal):
    from jointstats.node.service import ApiError
    return ApiError(exc.status, str(exc), exc.kind)


def _caller(node: "Node", headers, text: str, roles: tuple[str, ...]):
    """The authenticated caller, or ApiError (audited, rate-limited like other refusals)."""
    try:
        return authenticate(node.config, headers, text, text, roles)
    except ApiRefusal as exc:
        who = (headers or {}).get("X-Jointstats-Analyst") or "?"
        node._refuse(text, who, "bad signature" if exc.status == 401 else "role", exc)
        raise _api_error(exc) from None


# ----------------------------------------------------------------------------- scheduler

def waiting_jobs(node: "Node") -> list["NodeJob"]:
    """Jobs waiting for an officer's approval, in rendezvous order."""
    from jointstats.node.service import NodeJob
    with node._lock:
        return sorted((j for j in node.jobs.values() if j.status == "waiting"), key=NodeJob.entry)


def rendezvous_entries(queued: list["NodeJob"], waiting: list["NodeJob"]) -> list[tuple]:
    """What this node sends in the rendezvous: runnable jobs, then waiting ones (marked)."""
    entries = [j.entry() for j in queued] + [rendezvous_entry(j.entry(), True) for j in waiting]
    return sorted(entries, key=lambda e: (e[0], e[1]))


def expire_waiting(node: "Node") -> None:
    """Fail every job that waited for approval longer than ``policy.approval.expires_after``."""
    limit = node.config.policy.governance.approval_expiry
    now = time.time()
    for job in waiting_jobs(node):
        if now - job.received > limit:
            with node._lock:
                if job.status != "waiting":
                    continue
                node._end(job, "failed", f"party {node.config.party!r}: job {job.job_id!r} "
                                         f"expired: not approved by a compliance officer within "
                                         f"{limit:g} s", kind="PolicyError")
            node.state.audit("expiry", job_id=job.job_id, analyst=job.analyst, waited_seconds=limit)
            node._log(f"job {job.job_id} expired waiting for approval")


# ----------------------------------------------------------------------------- routes

def decide(node: "Node", job_id: str, body: Any, approve: bool) -> dict:
    """An officer approves (the job is queued) or rejects (it fails with the reason) a job."""
    from jointstats.node.service import ApiError
    job = node._job(job_id)
    try:
        decision = verify_decision(node.config, job_id, body, approve)
    except ApiRefusal as exc:
        who = body.get("officer") if isinstance(body, dict) else "?"
        node._refuse(job_id, who, "bad signature" if exc.status == 401 else "role", exc)
        raise _api_error(exc) from None
    party = node.config.party
    with node._lock:
        if job.status != "waiting":
            err = ApiError(409, f"job {job_id!r} is {job.status} at party {party!r}; only a job "
                                f"waiting for approval can be approved or rejected", "StateError")
            node._refuse(job_id, decision.officer, "state", err)
            raise err
        job.decisions.append(decision.record())
        if approve:
            job.status = "queued"
            node.store.save(job)
        else:
            node._end(job, "failed", f"party {party!r}: rejected by compliance officer "
                                     f"{decision.officer!r}: {decision.reason}", kind="PolicyError")
    node.state.audit("approval" if approve else "rejection", job_id=job_id,
                     officer=decision.officer, analyst=job.analyst, reason=decision.reason)
    node._log(f"job {job_id} {'approved' if approve else 'rejected'} by {decision.officer!r}")
    node._wake.set()
    return job.public(party)


def attestation(node: "Node", job_id: str, headers) -> dict:
    """``GET /jobs/<id>/attestation``: this party's signed attestation of a finished job's
    release (its analyst, or an officer; signature over ``attestation:<id>``)."""
    from jointstats.node.service import ApiError
    try:
        caller = authenticate(node.config, headers, f"attestation:{job_id}", job_id, (ANALYST, OFFICER))
    except ApiRefusal as exc:
        node._refuse(job_id, (headers or {}).get("X-Jointstats-Analyst") or "?",
                     "bad signature" if exc.status == 401 else "role", exc)
        raise _api_error(exc) from None
    job = node._job(job_id)
    if caller.role == ANALYST and caller.name != job.analyst:
        raise ApiError(403, f"job {job_id!r} was not submitted by {caller.name!r}", "AuthError")
    payload = node.store.read_result(job_id) if job.status == "done" else None
    if not payload or not payload.get("attestation"):
        raise ApiError(409, f"job {job_id!r} has no signed release at party {node.config.party!r}",
                       "NotReady")
    return payload["attestation"]


def list_jobs(node: "Node", headers) -> dict:
    """``GET /jobs``: an analyst's own jobs, or every job for an officer."""
    caller = _caller(node, headers, "GET /jobs", (OFFICER, ANALYST))
    with node._lock:
        jobs = [j.public(node.config.party) for j in sorted(node.jobs.values(), key=lambda j: j.received)
                if caller.role == OFFICER or j.analyst == caller.name]
    return {"party": node.config.party, "role": caller.role, "jobs": jobs}


def audit_log(node: "Node", headers, query: str = "") -> dict:
    """``GET /audit[?after=SEQ]``: officers read the audit log (at most AUDIT_PAGE records) and
    its head; the read itself is audited."""
    caller = _caller(node, headers, "GET /audit" + (f"?{query}" if query else ""), (OFFICER,))
    m = re.fullmatch(r"after=([0-9]{1,12})", query or "")
    after = int(m.group(1)) if m else 0
    node.state.audit("access", officer=caller.name, what="audit log", after=after)
    records = [r for r in node.state.audit_records() if r["seq"] > after][:AUDIT_PAGE]
    count, head = node.state.audit_head()
    ok, message = node.state.verify_audit()
    return {"party": node.config.party, "records": records, "head": {"count": count, "hash": head},
            "verified": ok, "verification": message}


def catalog(node: "Node", headers) -> dict:
    """``GET /catalog``: the datasets and columns the analyst's agreements cover."""
    from jointstats.node.catalog import catalog_for
    caller = _caller(node, headers, "GET /catalog", (ANALYST, OFFICER))
    return catalog_for(node.config, node.state, caller.name)


def reload_policy(node: "Node", headers) -> dict:
    """``POST /policy/reload`` (officers): re-read the config; revocations and agreement changes
    apply to new submissions and to queued jobs (each worker re-checks when it starts)."""
    caller = _caller(node, headers, "POST /policy/reload", (OFFICER,))
    return reload(node, by=caller.name)


def reload(node: "Node", by: str = "operator") -> dict:
    """Re-read this node's config (same party, peers, state); audited. Queued and waiting jobs
    whose analyst is no longer listed fail at once."""
    from jointstats.consortium.config import load_party_config
    from jointstats.errors import ConfigError
    new = load_party_config(node.config.path)
    if (new.party, new.peers, new.state) != (node.config.party, node.config.peers, node.config.state):
        raise ConfigError(f"party {node.config.party!r}: a reload cannot change the party, its "
                          "peers or its state file; restart the node")
    node.config = new
    dropped = []
    for job in list(node.jobs.values()):
        if job.status in ("queued", "waiting") and new.policy.analyst_key(job.analyst) is None:
            node._end(job, "failed", f"party {new.party!r}: analyst {job.analyst!r} was removed "
                                     f"or revoked before the job started", kind="AuthError")
            dropped.append(job.job_id)
    node.state.audit("reload", by=by, config=str(new.path), failed_jobs=dropped,
                     revoked=list(new.policy.governance.revoked))
    node._log(f"policy reloaded by {by!r}" + (f"; failed {len(dropped)} job(s)" if dropped else ""))
    return {"party": new.party, "reloaded": True, "failed_jobs": dropped}


def reload_on_signal(node: "Node"):
    """A SIGHUP handler that reloads the node's policy (``kill -HUP <node pid>``)."""
    def handler(signum, frame):
        from jointstats.errors import JointStatsError
        try:
            reload(node, by="operator (SIGHUP)")
        except JointStatsError as exc:
            node._log(f"policy reload refused: {exc}")
    return handler


def route(node: "Node", method: str, path: str, headers, body: Callable[[], Any] | None
          ) -> tuple[int, Any] | None:
    """Dispatch a governance route; None if ``path`` is not one."""
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    path = path.rstrip("/") or "/"
    if method == "GET" and path == "/catalog":
        return 200, catalog(node, headers)
    if method == "GET" and path == "/jobs":
        return 200, list_jobs(node, headers)
    if method == "GET" and path == "/audit":
        return 200, audit_log(node, headers, query)
    if method == "POST" and path == "/policy/reload":
        if body is not None:
            body()  # read (and ignore) the request body
        return 200, reload_policy(node, headers)
    m = _ATTESTATION.fullmatch(path)
    if m and method == "GET":
        return 200, attestation(node, m.group(1), headers)
    m = _DECIDE.fullmatch(path)
    if m and method == "POST" and body is not None:
        return 200, decide(node, m.group(1), body(), m.group(2) == "approve")
    return None
