"""Roles on a node's API and compliance officers' approval of sensitive jobs.

Roles: an **analyst** (``policy.analysts``) submits jobs and reads their own jobs, results
and the catalog; a **compliance officer** (``policy.officers``) approves or rejects jobs
waiting for approval, lists every job and reads the audit log (``GET /audit``); the
**operator** works on the host (CLI: keys, budgets, withdrawals, policy). Every request is
signed with the caller's Ed25519 key exactly as a submission is (``keys.submission_message``,
with the request's text in the spec slot), so one signing scheme covers every role.

A job that some rule of this party marks sensitive (``_governance.approval_reasons``) is
held as ``waiting`` until one officer approves it (then it is queued like any job) or
rejects it (it fails with the officer's reason, which the analyst sees), or until it has
waited ``policy.approval.expires_after`` seconds (it fails as expired). While waiting it
takes part in the nodes' rendezvous marked as waiting (``rendezvous_entry``), so the other
nodes neither run it nor fail it as missing here.

Plain functions over parsed, authenticated inputs; the HTTP layer (jointstats.node.service) only
calls them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from jointstats.errors import ApiRefusal, AuthError

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.consortium.config import PartyConfig

__all__ = ["ANALYST", "OFFICER", "Caller", "Decision", "authenticate", "decision_text",
           "verify_decision", "sign_decision", "rendezvous_entry", "split_queues",
           "WAITING_PREFIX", "MAX_REASON_CHARS"]

ANALYST, OFFICER = "analyst", "officer"
#: Marks a rendezvous entry of a job that waits for approval at its sender.
WAITING_PREFIX = "waiting:"
#: Longest rejection reason (characters): it becomes part of a one-line error.
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Caller:
    """Who signed a request, in which role."""

    name: str
    role: str


def _key_of(config: "PartyConfig", name: str, roles: tuple[str, ...]) -> tuple[str, Path] | None:
    gov = config.policy.governance
    if OFFICER in roles:
        path = gov.officer_key(name)
        if path is not None:
            return OFFICER, path
    if ANALYST in roles:
        path = config.policy.analyst_key(name)
        if path is not None:
            return ANALYST, path
    return None


def authenticate(config: "PartyConfig", headers: Mapping[str, str] | None, text: str, nonce: str,
                 roles: tuple[str, ...], *, max_skew: int = 300) -> Caller:
    """The caller whose fresh signature over ``text`` the headers carry, if listed in one of
    ``roles`` (officers first); ApiRefusal 401 otherwise (and 403 for a listed caller of
    another role)."""
    from jointstats.consortium.keys import verify_submission
    headers = headers or {}
    name, stamp, signature = (headers.get(f"X-Jointstats-{h}") for h in
                              ("Analyst", "Timestamp", "Signature"))
    if not (name and stamp and signature):
        raise ApiRefusal(401, "authentication required: send X-Jointstats-Analyst (the caller's "
                              "name), X-Jointstats-Timestamp and X-Jointstats-Signature")
    found = _key_of(config, name, roles)
    if found is None:
        other = _key_of(config, name, (ANALYST, OFFICER))
        if other is not None:
            raise ApiRefusal(403, f"{other[0]} {name[:64]!r} may not do this at party "
                                  f"{config.party!r} (role required: {' or '.join(roles)})")
        if name in config.policy.governance.revoked:
            raise ApiRefusal(401, f"{name[:64]!r} is revoked at party {config.party!r} "
                                  f"(policy.revoked)")
        raise ApiRefusal(401, f"{' or '.join(roles)} {name[:64]!r} is not listed by party "
                              f"{config.party!r}")
    role, pub = found
    try:
        verify_submission(pub, text, nonce, int(stamp), name, signature, now=int(time.time()),
                          max_skew=max_skew)
    except ValueError:
        raise ApiRefusal(400, "X-Jointstats-Timestamp must be an integer", "SpecError") from None
    except AuthError as exc:
        raise ApiRefusal(401, str(exc)) from None
    return Caller(name, role)


# ----------------------------------------------------------------------------- decisions

@dataclass(frozen=True)
class Decision:
    """An officer's verified sign-off (``approve``) or rejection of one job."""

    job_id: str
    officer: str
    approve: bool
    reason: str
    timestamp: int

    def record(self) -> dict:
        """As kept with the job and in the release report."""
        return {"officer": self.officer, "decision": "approved" if self.approve else "rejected",
                "reason": self.reason, "timestamp": self.timestamp}


def decision_text(job_id: str, approve: bool, reason: str) -> str:
    """What an officer signs (in the spec slot of ``keys.submission_message``)."""
    return f"{'approve' if approve else 'reject'}:{job_id}:{reason}"


def sign_decision(key_path: str | Path, officer: str, job_id: str, approve: bool,
                  reason: str = "") -> dict:
    """The body of ``POST /jobs/<id>/approve`` (or ``/reject``), signed with the officer's key."""
    from jointstats.consortium.keys import sign_submission
    ts = int(time.time())
    return {"officer": officer, "timestamp": ts, "reason": reason,
            "signature": sign_submission(key_path, decision_text(job_id, approve, reason), job_id,
                                         ts, officer)}


def verify_decision(config: "PartyConfig", job_id: str, body: Any, approve: bool, *,
                    max_skew: int = 300) -> Decision:
    """Check a decision body: a listed (unrevoked) officer's fresh signature; ApiRefusal otherwise."""
    from jointstats.consortium.keys import verify_submission
    if not isinstance(body, dict) or not all(isinstance(body.get(k), t) for k, t in
                                             (("officer", str), ("timestamp", int),
                                              ("signature", str))) \
            or isinstance(body["timestamp"], bool):
        raise ApiRefusal(400, "decision body must be {officer, timestamp, signature, reason}", "SpecError")
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise ApiRefusal(400, f"reason: expected one line of at most {MAX_REASON_CHARS} characters",
                         "SpecError")
    if not approve and not reason.strip():
        raise ApiRefusal(400, "a rejection needs a reason (--reason): the analyst sees it", "SpecError")
    officer = body["officer"]
    pub = config.policy.governance.officer_key(officer)
    if pub is None:
        raise ApiRefusal(401 if config.policy.analyst_key(officer) is None else 403,
                         f"{officer[:64]!r} is not a compliance officer of party {config.party!r}")
    try:
        verify_submission(pub, decision_text(job_id, approve, reason), job_id, body["timestamp"],
                          officer, body["signature"], now=int(time.time()), max_skew=max_skew)
    except AuthError as exc:
        raise ApiRefusal(401, str(exc)) from None
    return Decision(job_id, officer, approve, reason.strip(), body["timestamp"])


# ----------------------------------------------------------------------------- rendezvous

def rendezvous_entry(entry: tuple, waiting: bool) -> tuple:
    """A job's rendezvous entry; a waiting job's spec hash is prefixed with WAITING_PREFIX."""
    if not waiting:
        return entry
    timestamp, job_id, analyst, sha = entry
    return (timestamp, job_id, analyst, WAITING_PREFIX + sha)


def split_queues(queues: Mapping[str, list]) -> tuple[dict[str, list], dict[str, set]]:
    """(every party's runnable entries, every party's waiting entries without the marker)."""
    ready: dict[str, list] = {}
    waiting: dict[str, set] = {}
    for party, queue in queues.items():
        ready[party] = [e for e in queue if not str(e[3]).startswith(WAITING_PREFIX)]
        waiting[party] = {(e[0], e[1], e[2], str(e[3])[len(WAITING_PREFIX):]) for e in queue
                          if str(e[3]).startswith(WAITING_PREFIX)}
    return ready, waiting
