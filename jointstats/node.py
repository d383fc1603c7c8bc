"""A long-running party node: ``jointstats node serve --config A.yaml``.

The node is the sole guardian of its party's data and privacy budget. It listens for
analysts on ``api`` (HTTP/JSON, optionally HTTPS; the OpenAPI description is at
``/openapi.json``), checks every submission (Ed25519 signature of a listed analyst,
fresh timestamp, unused job id, its own policy and remaining budget), queues it, and
runs each job in a worker subprocess (``jointstats._party``) that joins the MPC with
the other nodes. A worker crash or hang never takes the node down.

Job order. Every node runs at most one job at a time, and all nodes run the same job at
the same time. Before each job the nodes *agree* on it, over the same mutually
authenticated MPC channels the job will use: every node with queued jobs joins a short
rendezvous in which each node sends its whole queue to every other node. All nodes then
hold the same information and pick the same job: the earliest, by (timestamp, job id),
of the jobs that every node holds. A job some node does not hold waits (it may still be
arriving) and is failed if it is still missing there ``orphan_grace`` seconds later; if
the other nodes do not join at all for ``peer_wait`` seconds, the queued jobs fail,
naming the parties that did not join. Nothing is decided before all queues are
exchanged, so two analysts submitting at once cannot deadlock the nodes or make them
run different jobs; the worker's own plan and job-id exchange is a second check.

Durable state lives beside ``state:`` of the config: the privacy ledger and audit log
in the SQLite file itself (:class:`jointstats._state.NodeState`), and per job a folder
``<state>.jobs/<job id>/`` with the submission, the spec, the worker log and the result.
On startup the node resolves every job left unfinished by a crash (``NodeState.recover``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ._launch import start_launcher, start_party
from .config import PartyConfig, load_party_config
from .errors import (AuthError, BudgetError, ConfigError, JointStatsError, PartyError,
                     PeerTlsError, PolicyError, SpecError, StaleRequestError)
from .spec import clip_error, shorten

__all__ = ["Node", "serve", "openapi", "JOB_ID_RE", "MAX_SKEW"]

#: Job ids: 1-128 letters, digits, '_', '.', '-' (they name a folder). Always matched with
#: ``fullmatch``: ``match`` with ``$`` would accept a trailing newline.
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Largest clock difference accepted between an analyst's timestamp and the node (seconds).
MAX_SKEW = 300
#: Largest request body accepted (bytes).
MAX_BODY = 1 << 20
#: Seconds a client has to send its whole request (line, headers and body), from its connection.
REQUEST_DEADLINE = 20.0
#: Seconds a connection may last in all, the node's answer included.
CONNECTION_DEADLINE = 120.0
#: Connections served at once, in total and per client address (more are turned away at once
#: with 503, never queued on a thread).
MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_CLIENT = 16
#: Rendezvous message tag.
_RDV = "jointstats-rendezvous/1"
#: Job states as the API reports them.
STATUSES = ("queued", "running", "done", "failed", "cancelled")


def _stamp() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


# ----------------------------------------------------------------------------- job store

@dataclass
class NodeJob:
    """What a node keeps about one job (``<state>.jobs/<id>/job.json``); never any data value."""

    job_id: str
    analyst: str
    timestamp: int
    spec_sha256: str
    protocol: str
    dataset: str
    mode: str
    epsilon: float | None
    received: float
    status: str = "queued"
    started: float | None = None
    finished: float | None = None
    order: int | None = None
    error: str | None = None
    progress: str | None = field(default=None)
    error_kind: str | None = None

    def entry(self) -> tuple:
        """The job as exchanged in the rendezvous: it sorts by (timestamp, job id)."""
        return (self.timestamp, self.job_id, self.analyst, self.spec_sha256)

    def public(self, party: str) -> dict:
        """The job's status object of the API."""
        return {"job_id": self.job_id, "party": party, "status": self.status,
                "analyst": self.analyst, "protocol": self.protocol, "dataset": self.dataset,
                "mode": self.mode, "epsilon": self.epsilon, "spec_sha256": self.spec_sha256,
                "timestamp": self.timestamp, "received": _iso(self.received),
                "started": _iso(self.started), "finished": _iso(self.finished),
                "order": self.order, "progress": self.progress, "error": self.error,
                "error_kind": self.error_kind}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class JobStore:
    """Per-job folders beside the state file."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def spec_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "spec.yaml"

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "result.json"

    def log_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "worker.log"

    def create(self, job: NodeJob, spec_text: str, submission: dict) -> None:
        d = self.folder(job.job_id)
        d.mkdir(parents=True, exist_ok=False)
        _write_atomic(d / "spec.yaml", spec_text)
        _write_atomic(d / "submission.json", json.dumps(submission, indent=1))
        self.save(job)

    def save(self, job: NodeJob) -> None:
        _write_atomic(self.folder(job.job_id) / "job.json", json.dumps(asdict(job), indent=1))

    def load_all(self) -> dict[str, NodeJob]:
        jobs = {}
        for d in sorted(self.root.iterdir()):
            f = d / "job.json"
            if d.is_dir() and f.is_file():
                try:
                    jobs[d.name] = NodeJob(**json.loads(f.read_text()))
                except (ValueError, TypeError):
                    continue
        return jobs

    def read_result(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.result_path(job_id).read_text())
        except (OSError, ValueError):
            return None


# ----------------------------------------------------------------------------- errors

def _is_utf8(text: str) -> bool:
    """False for strings UTF-8 cannot encode (lone surrogates, which JSON escapes can make)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _safe_text(value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` characters that UTF-8 (and so SQLite and
    the log) can take."""
    text = value if isinstance(value, str) else shorten(value, limit)
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


#: Refusals before a signature is verified that are audited one by one per minute (the rest counted).
UNAUTHENTICATED_AUDITS_PER_MINUTE = 20
_UNAUTHENTICATED = frozenset({"malformed", "unknown analyst", "bad signature", "stale timestamp"})


class ApiError(Exception):
    """An HTTP error answer: status, one-line message and the error class name."""

    def __init__(self, status: int, message: str, kind: str = "JointStatsError"):
        super().__init__(message)
        self.status = status
        self.kind = kind


def _api_error(exc: JointStatsError) -> ApiError:
    from ._state import ReplayError
    if isinstance(exc, ReplayError):
        return ApiError(409, str(exc), "ReplayError")
    if isinstance(exc, AuthError):
        return ApiError(401, str(exc), "AuthError")
    if isinstance(exc, BudgetError):
        return ApiError(403, str(exc), "BudgetError")
    if isinstance(exc, PolicyError):
        return ApiError(403, str(exc), "PolicyError")
    if isinstance(exc, (SpecError, ConfigError)):
        return ApiError(400 if isinstance(exc, SpecError) else 403, str(exc), type(exc).__name__)
    return ApiError(400, str(exc), type(exc).__name__)


# ----------------------------------------------------------------------------- the node

class Node:
    """One party's node: API handlers, job queue, rendezvous and worker processes."""

    def __init__(self, config: str | Path | PartyConfig, *, connect_timeout: float = 60.0,
                 peer_wait: float = 120.0, orphan_grace: float = 30.0,
                 attempt_timeout: float = 5.0, job_timeout: float = 4 * 3600.0,
                 log=None):
        from ._state import NodeState
        self.config = config if isinstance(config, PartyConfig) else load_party_config(config)
        cfg = self.config
        from . import _plan_cache  # noise plans built while planning submissions, kept for workers
        _plan_cache.set_directory(_plan_cache.directory_for_state(cfg.state))
        self.names = [p.name for p in cfg.peers]
        self.connect_timeout = connect_timeout
        self.peer_wait = peer_wait
        self.orphan_grace = orphan_grace
        self.attempt_timeout = attempt_timeout
        self.job_timeout = job_timeout
        self._log = log or (lambda msg: print(f"{_stamp()} node {cfg.party}: {msg}",
                                              file=sys.stderr, flush=True))
        if cfg.tls is not None:
            from .tls import check_own_certificate
            check_own_certificate(cfg)
        for name, path in cfg.policy.analysts:
            if not Path(path).is_file():
                raise ConfigError(f"{cfg.path.name}: policy.analysts.{name}: no such public key "
                                  f"file {path}")
        cfg.state.parent.mkdir(parents=True, exist_ok=True)
        self.state = NodeState(cfg.state)
        self.store = JobStore(cfg.state.with_name(cfg.state.stem + ".jobs"))
        self._lock = threading.RLock()
        self._refusal_minute, self._refusals_this_minute, self._refusals_suppressed = -1, 0, 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._proc: Any = None  # the running worker (subprocess.Popen or _launch.ForkedParty)
        self._running: str | None = None
        self.started = time.time()
        self.jobs: dict[str, NodeJob] = {}
        self._recover()
        self._scheduler = threading.Thread(target=self._schedule, name="scheduler", daemon=True)

    # ------------------------------------------------------------------ startup

    def _recover(self) -> None:
        """Resolve everything a crash left unfinished: ledger first, then the job folders."""
        affected = self.state.recover()
        if affected:
            self._log(f"recovered ledger entries of {len(affected)} unfinished job(s): "
                      f"{', '.join(affected)}")
        self.jobs = self.store.load_all()
        self._order = max([j.order or 0 for j in self.jobs.values()] + [0])
        for job in self.jobs.values():
            if job.status == "queued":
                self._end(job, "failed", "the node restarted before the job started")
            elif job.status == "running":
                payload = self.store.read_result(job.job_id)
                if payload is not None and payload.get("ok"):
                    job.status, job.finished, job.error = "done", time.time(), None
                    self.store.save(job)
                else:
                    self._end(job, "failed", "the node stopped during the job"
                              + (f" ({payload['error']})" if payload else ""))

    def _settle_ledger(self, job_id: str, reason: str) -> None:
        """Close a failed job's ledger entry: release a reservation, keep a committed spend."""
        entry = self.state.job(job_id)
        if entry is None or entry.status in ("reserved", "committed"):
            self.state.fail(job_id, reason)

    def _end(self, job: NodeJob, status: str, error: str | None, settle: bool = True,
             kind: str | None = None) -> None:
        """Finish ``job`` with ``status``; a failed or cancelled job's ledger is settled
        (``settle=False`` when its worker has already done so and audited the failure)."""
        with self._lock:
            job.status = status
            job.error = error
            job.error_kind = (kind or "PartyError") if error else None
            job.finished = time.time()
            self.store.save(job)
        if settle and status in ("failed", "cancelled"):
            try:
                self._settle_ledger(job.job_id, error or status)
            except JointStatsError as exc:  # pragma: no cover - ledger already final
                self._log(f"job {job.job_id}: ledger: {exc}")

    # ------------------------------------------------------------------ submissions

    def _refuse(self, job_id: Any, analyst: Any, reason: str, exc: JointStatsError | ApiError) -> None:
        """Audit a refused submission (never any data value; fields shortened, made UTF-8).

        Refusals before the signature is verified (malformed, unknown analyst, bad signature,
        stale timestamp) can come from anyone: at most UNAUTHENTICATED_AUDITS_PER_MINUTE of
        them are audited one by one, the rest only counted, and the count goes into the next
        refusal record (``suppressed``), so an outsider cannot grow the audit log without bound.
        """
        job_id, analyst = _safe_text(job_id, 128), _safe_text(analyst, 64)
        fields = {}
        if reason in _UNAUTHENTICATED:
            with self._lock:
                minute = int(time.monotonic() // 60)
                if minute != self._refusal_minute:
                    self._refusal_minute, self._refusals_this_minute = minute, 0
                self._refusals_this_minute += 1
                if self._refusals_this_minute > UNAUTHENTICATED_AUDITS_PER_MINUTE:
                    self._refusals_suppressed += 1
                    return
                fields["suppressed"], self._refusals_suppressed = self._refusals_suppressed, 0
        self.state.audit("refusal", job_id=job_id, analyst=analyst,
                         reason=reason, detail=_safe_text(clip_error(str(exc)), 500), **fields)
        self._log(f"refused submission {job_id[:40]!r} from {analyst[:40]!r}: "
                  f"{_safe_text(clip_error(str(exc)), 500)}")

    def submit(self, body: Any) -> dict:
        """Check and queue a signed submission; ApiError with a one-line reason otherwise."""
        from .keys import verify_submission
        from .spec import parse_spec
        cfg = self.config
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        missing = [k for k in ("spec", "job_id", "timestamp", "analyst", "signature") if k not in body]
        job_id, analyst = body.get("job_id", "?"), body.get("analyst", "?")
        if missing:
            err = ApiError(400, f"submission lacks {', '.join(missing)}")
            self._refuse(job_id, analyst, "malformed", err)
            raise err
        spec_text, timestamp, signature = body["spec"], body["timestamp"], body["signature"]
        if not (isinstance(spec_text, str) and isinstance(job_id, str) and isinstance(analyst, str)
                and isinstance(signature, str) and isinstance(timestamp, int)
                and not isinstance(timestamp, bool)):
            err = ApiError(400, "submission fields: spec, job_id, analyst and signature must be "
                                "strings, timestamp an integer (seconds since the epoch)")
            self._refuse(job_id, analyst, "malformed", err)
            raise err
        for key in ("spec", "job_id", "analyst", "signature"):
            if not _is_utf8(body[key]):  # JSON escapes can make lone surrogates
                err = ApiError(400, f"submission field {key} is not valid Unicode text")
                self._refuse(job_id, analyst, "malformed", err)
                raise err
        if not JOB_ID_RE.fullmatch(job_id):
            err = ApiError(400, f"job id {shorten(job_id)} must be 1-128 letters, digits, '_', '.', '-'")
            self._refuse(job_id, analyst, "malformed", err)
            raise err
        if len(analyst) > 64:
            err = ApiError(400, "analyst: longer than the limit of 64 characters", "AuthError")
            self._refuse(job_id, analyst, "malformed", err)
            raise err
        pub = cfg.policy.analyst_key(analyst)
        if pub is None:
            err = AuthError(f"analyst {analyst!r} is not listed in party {cfg.party!r}'s "
                            f"policy.analysts")
            self._refuse(job_id, analyst, "unknown analyst", err)
            raise _api_error(err)
        try:
            verify_submission(pub, spec_text, job_id, timestamp, analyst, signature,
                              now=int(time.time()), max_skew=MAX_SKEW)
        except AuthError as exc:
            reason = "stale timestamp" if isinstance(exc, StaleRequestError) else "bad signature"
            self._refuse(job_id, analyst, reason, exc)
            raise _api_error(exc) from None
        try:
            self.state.use_nonce(job_id, analyst=analyst)
        except AuthError as exc:
            self._refuse(job_id, analyst, "replay", exc)
            raise _api_error(exc) from None
        # authenticated from here on; the job id is used up whatever happens next
        try:
            spec = parse_spec(spec_text)
            plan = self._plan(spec)
            from .policy import check_job
            check_job(cfg, spec, plan)
            if spec.privacy is not None and not cfg.compute_only:
                # the job's exact charge against the lifetime rule, as the worker will reserve it
                from ._accounting import JobCharge, lifetime_spend
                charge = JobCharge.from_dict(plan.privacy["charge"])
                usage = self.state.usage(spec.dataset, cfg.policy.budget_epsilon, cfg.policy.budget_delta)
                if not lifetime_spend(usage.held.totals.add(charge), cfg.policy.budget_epsilon,
                                      cfg.policy.budget_delta).fits:
                    raise BudgetError(f"party {cfg.party!r}: privacy budget of dataset "
                                      f"{spec.dataset!r} exceeded: remaining epsilon "
                                      f"{float(usage.held.remaining_epsilon):g}, delta "
                                      f"{float(usage.held.remaining_delta):g}; the job asks "
                                      f"epsilon {float(spec.privacy.epsilon):g}, delta "
                                      f"{float(spec.privacy.delta):g}")
        except JointStatsError as exc:
            reason = ("budget" if isinstance(exc, BudgetError) else
                      "spec" if isinstance(exc, SpecError) else "policy")
            self._refuse(job_id, analyst, reason, exc)
            raise _api_error(exc) from None
        except Exception as exc:  # e.g. a missing optional layer: still one line
            err = ApiError(500, f"party {cfg.party!r} cannot plan the job: "
                                f"{type(exc).__name__}: {exc}", "PartyError")
            self._refuse(job_id, analyst, "internal", err)
            raise err from None
        job = NodeJob(job_id=job_id, analyst=analyst, timestamp=timestamp,
                      spec_sha256=spec.sha256, protocol=spec.name, dataset=spec.dataset,
                      mode="exact" if spec.privacy is None else "dp",
                      epsilon=None if spec.privacy is None else float(spec.privacy.epsilon),
                      received=time.time())
        with self._lock:
            self.store.create(job, spec_text, {k: body[k] for k in
                                               ("job_id", "timestamp", "analyst", "signature")})
            self.jobs[job_id] = job
        self.state.audit("submission", job_id=job_id, analyst=analyst, protocol=spec.name,
                         spec_sha256=spec.sha256, dataset=spec.dataset, mode=job.mode,
                         epsilon=job.epsilon, timestamp=timestamp)
        self._log(f"queued job {job_id} ({spec.name!r}, {job.mode}) from {analyst!r}")
        self._wake.set()
        return job.public(cfg.party)

    def _plan(self, spec):
        from .output import add_noise_plans
        from .plan import make_plan
        return add_noise_plans(spec, make_plan(spec, self.names))

    def cancel(self, job_id: str, body: Any) -> dict:
        """Cancel a queued job; only its analyst may, with a fresh signature over ``cancel:<id>``."""
        from .keys import verify_submission
        job = self._job(job_id)
        if not isinstance(body, dict) or not all(isinstance(body.get(k), t) for k, t in
                                                 (("analyst", str), ("timestamp", int),
                                                  ("signature", str))) \
                or isinstance(body["timestamp"], bool) \
                or not (_is_utf8(body["analyst"]) and _is_utf8(body["signature"])):
            raise ApiError(400, "cancel body must be {analyst, timestamp, signature}")
        if body["analyst"] != job.analyst:
            raise ApiError(403, f"job {job_id!r} was submitted by {job.analyst!r}, not "
                                f"{body['analyst']!r}", "AuthError")
        pub = self.config.policy.analyst_key(job.analyst)
        if pub is None:
            raise ApiError(401, f"analyst {job.analyst!r} is no longer listed", "AuthError")
        try:
            verify_submission(pub, f"cancel:{job_id}", job_id, body["timestamp"], job.analyst,
                              body["signature"], now=int(time.time()), max_skew=MAX_SKEW)
        except AuthError as exc:
            raise _api_error(exc) from None
        with self._lock:
            if job.status != "queued":
                raise ApiError(409, f"job {job_id!r} is {job.status}; only a queued job can be "
                                    f"cancelled", "StateError")
            self._end(job, "cancelled", f"cancelled by analyst {job.analyst!r}")
        self._log(f"job {job_id} cancelled by {job.analyst!r}")
        return job.public(self.config.party)

    # ------------------------------------------------------------------ queries

    def _job(self, job_id: str) -> NodeJob:
        with self._lock:
            job = self.jobs.get(job_id) if JOB_ID_RE.fullmatch(job_id) else None
        if job is None:
            raise ApiError(404, f"party {self.config.party!r} has no job {shorten(job_id)}",
                           "NotFound")
        return job

    def _authenticate(self, headers: Any, text: str, nonce: str) -> str:
        """The analyst whose fresh signature over ``text`` the request headers carry.

        ``X-Jointstats-Analyst``, ``X-Jointstats-Timestamp`` and ``X-Jointstats-Signature``
        (the analyst's Ed25519 signature, as for a submission, over ``text`` with ``nonce``
        in the job-id slot: for reads ``GET <path>``, which is never a valid job id, so a read's
        signature can never pass for a submission); the analyst must be in this party's
        policy. Raises ApiError 401.
        """
        from .keys import verify_submission
        headers = headers or {}
        analyst, stamp, signature = (headers.get(f"X-Jointstats-{h}") for h in
                                     ("Analyst", "Timestamp", "Signature"))
        if not (analyst and stamp and signature):
            raise ApiError(401, "authentication required: send X-Jointstats-Analyst, "
                                "X-Jointstats-Timestamp and X-Jointstats-Signature (over "
                                f"{text.split(':')[0] + ':...' if ':' in text else text!r})", "AuthError")
        pub = self.config.policy.analyst_key(analyst)
        if pub is None:
            raise ApiError(401, f"analyst {analyst[:64]!r} is not listed by party "
                                f"{self.config.party!r}", "AuthError")
        try:
            verify_submission(pub, text, nonce, int(stamp), analyst, signature,
                              now=int(time.time()), max_skew=MAX_SKEW)
        except ValueError:
            raise ApiError(400, "X-Jointstats-Timestamp must be an integer", "SpecError") from None
        except AuthError as exc:
            raise _api_error(exc) from None
        return analyst

    def _job_for(self, job_id: str, analyst: str) -> NodeJob:
        """The job, if ``analyst`` submitted it (403 otherwise, without saying more)."""
        job = self._job(job_id)
        if analyst != job.analyst:
            raise ApiError(403, f"job {job_id!r} was not submitted by {analyst!r}", "AuthError")
        return job

    def job_status(self, job_id: str, headers: Any = None) -> dict:
        """A job's status; only for its analyst (signature over ``GET /jobs/<id>``)."""
        analyst = self._authenticate(headers, f"GET /jobs/{job_id}", f"GET /jobs/{job_id}")
        return self._job_for(job_id, analyst).public(self.config.party)

    def job_result(self, job_id: str, headers: Any = None) -> dict:
        """The revealed result; only for the job's analyst (signature over ``result:<id>``)."""
        analyst = self._authenticate(headers, f"result:{job_id}", job_id)
        job = self._job_for(job_id, analyst)
        if job.status != "done":
            msg = (f"job {job_id!r} is {job.status}" + (f": {job.error}" if job.error else ""))
            raise ApiError(409, msg, "NotReady" if job.status in ("queued", "running")
                           else job.error_kind or "PartyError")
        payload = self.store.read_result(job_id)
        if not payload or not payload.get("ok"):
            raise ApiError(500, f"result of job {job_id!r} is missing on party "
                                f"{self.config.party!r}", "PartyError")
        return payload["result"]

    def policy(self) -> dict:
        cfg = self.config
        pol = cfg.policy
        datasets = {}
        for name, _source in cfg.datasets:
            datasets[name] = self.state.usage(name, pol.budget_epsilon, pol.budget_delta).to_dict()
        return {"party": cfg.party, "parties": self.names, "policy": pol.public(),
                "datasets": datasets}

    def health(self) -> dict:
        from . import __version__
        with self._lock:
            queued = sum(1 for j in self.jobs.values() if j.status == "queued")
            running = self._running
        return {"ok": True, "party": self.config.party, "index": self.config.index,
                "parties": self.names, "version": __version__,
                "mpc_tls": self.config.tls is not None, "queued": queued, "running": running,
                "up_since": _iso(self.started)}

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Start the scheduler thread (the API is served separately) and the launcher the
        workers are forked from, so that the first job does not wait for it."""
        start_launcher(self._worker_env())
        self._scheduler.start()

    @staticmethod
    def _worker_env() -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling; a running worker is terminated and its job failed."""
        self._stop.set()
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        if self._scheduler.is_alive():
            self._scheduler.join(timeout)
        self.state.close()

    def _queued(self) -> list[NodeJob]:
        with self._lock:
            return sorted((j for j in self.jobs.values() if j.status == "queued"),
                          key=NodeJob.entry)

    def _schedule(self) -> None:
        """The scheduler loop: agree on the next job with the other nodes, run it, repeat."""
        failing_since: float | None = None
        last_error = None
        while not self._stop.is_set():
            queued = self._queued()
            if not queued:
                failing_since = None
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                queues = asyncio.run(self._rendezvous([j.entry() for j in queued]))
            except Exception as exc:  # noqa: BLE001 - every failure is retried or reported
                msg = str(exc) if isinstance(exc, JointStatsError) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, JointStatsError):
                    self._log("rendezvous bug: " + "".join(traceback.format_exception(exc)).strip())
                now = time.monotonic()
                failing_since = failing_since or now
                if msg != last_error:
                    self._log(f"waiting for the other parties: {msg}")
                    last_error = msg
                permanent = isinstance(exc, (ConfigError, AuthError, PeerTlsError))
                if permanent or now - failing_since > self.peer_wait:
                    why = (msg if permanent else f"{msg} (waited {self.peer_wait:.0f} s for the "
                                                 f"other parties to join)")
                    for job in self._queued():
                        self._end(job, "failed", f"party {self.config.party!r} could not start "
                                                 f"the job: {why}")
                        self._log(f"job {job.job_id} failed: {why}")
                    failing_since = None
                self._stop.wait(0.3)
                continue
            failing_since, last_error = None, None
            chosen = self._choose(queued, queues)
            if chosen is None:
                self._stop.wait(0.2)
                continue
            self._run(chosen)

    def _choose(self, queued: list[NodeJob], queues: dict[str, list]) -> NodeJob | None:
        """The earliest job every party holds; fail own jobs missing elsewhere for too long."""
        held = {party: {tuple(e) for e in q} for party, q in queues.items()}
        common = set.intersection(*held.values())
        now = time.time()
        for job in queued:
            missing = [p for p in self.names if job.entry() not in held.get(p, set())]
            if missing and now - job.received > self.orphan_grace:
                plural = "ies" if len(missing) > 1 else "y"
                self._end(job, "failed", f"part{plural} {', '.join(map(repr, missing))} "
                                         f"do{'' if len(missing) > 1 else 'es'} not hold job "
                                         f"{job.job_id!r} (not submitted there, refused there, "
                                         f"or already ended there)")
                self._log(f"job {job.job_id} failed: missing at {', '.join(missing)}")
        if not common:
            return None
        first = min(common)
        with self._lock:
            return self.jobs.get(first[1])

    async def _rendezvous(self, entries: list[tuple]) -> dict[str, list]:
        """Exchange job queues with every other party over the MPC channels (TLS if configured)."""
        from . import _codec, _mpc
        logging.getLogger().setLevel(logging.WARNING)  # MPyC logs every shutdown at INFO
        cfg = self.config
        rt = _mpc.make_party_runtime(cfg.index, self.names, [(p.host, p.port) for p in cfg.peers])
        if cfg.tls is not None:
            from .tls import configure_tls
            configure_tls(rt, cfg)
        # a typed record (jointstats._codec), never a pickle: at most MAX_QUEUE entries, the
        # earliest (entries come sorted); a peer's malformed record fails naming it
        message = {"type": _RDV, "party": cfg.party,
                   "queue": [list(e) for e in entries[:_codec.MAX_QUEUE]],
                   # what a worker that meets this message by mistake reports and stops on:
                   "refusal": f"party {cfg.party!r} is between jobs (its worker for this job "
                              f"ended or never started)",
                   "job": None, "plan": None, "min_count_floor": 0}
        try:
            await rt.start(self.attempt_timeout)
            got = await rt.guard(rt.transfer(message, codec=_codec.RECORD), self.attempt_timeout,
                                 "agreeing on the next job")
        except BaseException:
            rt.abort()
            raise
        try:
            await rt.close(timeout=self.attempt_timeout)
        except Exception:  # noqa: BLE001 - everybody already has every queue
            pass
        queues = {}
        for pid, msg in enumerate(got):
            name = self.names[pid]
            if not isinstance(msg, dict) or msg.get("type") != _RDV:
                busy = msg.get("job") if isinstance(msg, dict) else None
                raise PartyError(f"party {name!r} is still busy"
                                 + (f" with job {busy!r}" if busy else ""))
            if msg.get("party") != name:
                raise PartyError(f"party at index {pid} calls itself {msg.get('party')!r}, "
                                 f"expected {name!r}")
            queues[name] = msg.get("queue") or []
        return queues

    def _run(self, job: NodeJob) -> None:
        """Run ``job`` in a worker subprocess and record its outcome."""
        cfg = self.config
        with self._lock:
            if job.status != "queued":
                return
            self._order += 1
            job.status, job.started, job.order, job.progress = "running", time.time(), self._order, None
            self.store.save(job)
            self._running = job.job_id
        self._log(f"running job {job.job_id} (#{job.order})")
        out = self.store.result_path(job.job_id)
        argv = ["--config", str(cfg.path), "--spec", str(self.store.spec_path(job.job_id)),
                "--job-id", job.job_id, "--out", str(out), "--analyst", job.analyst,
                "--connect-timeout", str(self.connect_timeout)]
        lines: list[str] = []
        error = None
        kind = "PartyError"
        try:
            with open(self.store.log_path(job.job_id), "a") as log:
                # forked from the node's launcher (a clean interpreter, never a fork of the
                # node: no keys, no state); exec'd as a worker that dies with the node otherwise
                proc = start_party(argv, self._worker_env(), new_session=True,
                                   exec_command=[sys.executable, "-m", "jointstats.node", "worker",
                                                 "--parent", str(os.getpid()), *argv])
                self._proc = proc
                self._log(f"job {job.job_id}: worker process {proc.pid}")
                reader = threading.Thread(target=self._read_worker, args=(proc, job, log, lines),
                                          daemon=True)
                reader.start()
                try:
                    proc.wait(timeout=self.job_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    error = f"party {cfg.party!r}: the job did not finish within {self.job_timeout:.0f} s"
                reader.join(timeout=5)
        except OSError as exc:
            error = f"party {cfg.party!r} cannot start its worker: {exc}"
            proc = None
        finally:
            self._proc = None
        payload = self.store.read_result(job.job_id)
        worker_settled = error is None and payload is not None
        if error is None and payload is not None:
            if payload.get("ok"):
                with self._lock:
                    job.status, job.finished, job.error = "done", time.time(), None
                    self.store.save(job)
                    self._running = None
                self._log(f"job {job.job_id} done")
                return
            error = payload.get("error") or "failed"
            kind = payload.get("kind") or kind
        elif error is None:
            # The worker's stderr is this party's own log (it may count rows or quote a
            # traceback): it stays in the job's worker log and the node's log, never in the
            # error shown to the analyst.
            rc = proc.returncode if proc is not None else None
            how = (f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}")
            error = f"party {cfg.party!r} died ({how}) in its worker process"
            kind = "PartyDiedError"
            tail = [ln for ln in lines if not ln.startswith("progress ")]
            if tail:
                self._log(f"job {job.job_id}: last line of its worker log: {tail[-1]}")
        self._end(job, "failed", error, settle=not worker_settled, kind=kind)
        with self._lock:
            self._running = None
        self._log(f"job {job.job_id} failed: {error}")

    def _read_worker(self, proc, job: NodeJob, log, lines: list[str]) -> None:
        """Copy the worker's stderr to its log; keep its latest progress line."""
        prefix = f"progress {self.config.party}: "
        for line in proc.stderr:
            log.write(line)
            log.flush()
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith(prefix):
                job.progress = line[len(prefix):]


# ----------------------------------------------------------------------------- OpenAPI

def openapi(node: Node | None = None) -> dict:
    """The OpenAPI 3 description of the node API."""
    from . import __version__
    err = {"description": "refused or failed; one-line reason",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    job = {"description": "the job's status",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}}
    jid = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string",
                                                                         "pattern": f"^{JOB_ID_RE.pattern}$"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "jointstats party node", "version": __version__,
                 "description": "One party's node of a jointstats consortium. Analysts submit "
                                "signed protocol specs to every node; the nodes agree on the "
                                "order of jobs, run them as secure multi-party computations "
                                "and return only the revealed (differentially private, or "
                                "consented exact) results."
                                + (f" This node is party {node.config.party!r}." if node else "")},
        "paths": {
            "/jobs": {"post": {
                "summary": "Submit a job (send the same body to every node)",
                "description": "The signature is Ed25519 over jointstats.keys.submission_message"
                               "(spec, job_id, timestamp, analyst): the bytes "
                               "'jointstats-submission-v1\\n' followed by the compact sorted "
                               "JSON of {analyst, job_id, spec_sha256, timestamp}. Refused: "
                               "analysts not in policy.analysts, bad signatures, timestamps "
                               f"more than {MAX_SKEW} s off the node's clock, job ids used "
                               "before, specs the node's policy or remaining budget refuses.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Submission"}}}},
                "responses": {"202": {**job, "description": "queued"}, "400": err, "401": err,
                              "403": err, "409": err,
                              "411": {**err, "description": "a Transfer-Encoding instead of a "
                                                           "Content-Length"},
                              "413": {**err, "description": f"body over {MAX_BODY} bytes"},
                              "503": {**err, "description": "too many connections (from this "
                                                            "client address); try again"}}}},
            "/jobs/{job_id}": {"get": {"summary": "Status of a job", "parameters": [jid],
                                       "responses": {"200": job, "404": err}}},
            "/jobs/{job_id}/result": {"get": {
                "summary": "The revealed result of a finished job (docs/reference.md section 4)",
                "description": "Only for the job's analyst: the headers carry a signature as for "
                               "a submission, with spec text 'result:<job_id>'.",
                "parameters": [jid] + [{"name": f"X-Jointstats-{h}", "in": "header", "required": True,
                                        "schema": {"type": t}} for h, t in
                                       (("Analyst", "string"), ("Timestamp", "integer"),
                                        ("Signature", "string"))],
                "responses": {"200": {"description": "result", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Result"}}}},
                    "401": err, "403": err, "404": err,
                    "409": {**err, "description": "not finished, or failed"}}}},
            "/jobs/{job_id}/cancel": {"post": {
                "summary": "Cancel a queued job (its analyst only)",
                "description": "signature as for a submission, with spec text 'cancel:<job_id>'",
                "parameters": [jid],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Cancel"}}}},
                "responses": {"200": job, "401": err, "403": err, "404": err, "409": err}}},
            "/policy": {"get": {"summary": "Public policy and privacy budget per dataset",
                                "responses": {"200": {"description": "policy", "content": {
                                    "application/json": {"schema": {
                                        "$ref": "#/components/schemas/Policy"}}}}}}},
            "/health": {"get": {"summary": "Liveness, party name and index, queue length",
                                "responses": {"200": {"description": "node is up", "content": {
                                    "application/json": {"schema": {"type": "object"}}}}}}},
            "/openapi.json": {"get": {"summary": "This description",
                                      "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
        "components": {"schemas": {
            "Submission": {"type": "object",
                           "required": ["spec", "job_id", "timestamp", "analyst", "signature"],
                           "properties": {
                               "spec": {"type": "string", "description": "protocol spec YAML text"},
                               "job_id": {"type": "string", "pattern": f"^{JOB_ID_RE.pattern}$"},
                               "timestamp": {"type": "integer", "description": "seconds since the epoch"},
                               "analyst": {"type": "string"},
                               "signature": {"type": "string", "format": "byte"}}},
            "Cancel": {"type": "object", "required": ["timestamp", "analyst", "signature"],
                       "properties": {"timestamp": {"type": "integer"}, "analyst": {"type": "string"},
                                      "signature": {"type": "string", "format": "byte"}}},
            "Job": {"type": "object", "properties": {
                "job_id": {"type": "string"}, "party": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "analyst": {"type": "string"}, "protocol": {"type": "string"},
                "dataset": {"type": "string"}, "mode": {"type": "string", "enum": ["exact", "dp"]},
                "epsilon": {"type": "number", "nullable": True},
                "spec_sha256": {"type": "string"}, "timestamp": {"type": "integer"},
                "received": {"type": "string", "format": "date-time"},
                "started": {"type": "string", "format": "date-time", "nullable": True},
                "finished": {"type": "string", "format": "date-time", "nullable": True},
                "order": {"type": "integer", "nullable": True,
                          "description": "position among the jobs this node has run"},
                "progress": {"type": "string", "nullable": True},
                "error": {"type": "string", "nullable": True,
                          "description": "one line naming the party; never a data value or count"},
                "error_kind": {"type": "string", "nullable": True,
                               "description": "the error's class (PartyError, DataError, ...)"}}},
            "Result": {"type": "object", "required": ["protocol", "job_id", "spec_sha256", "parties",
                                                      "privacy", "results"],
                       "properties": {"protocol": {"type": "string"}, "job_id": {"type": "string"},
                                      "spec_sha256": {"type": "string"},
                                      "parties": {"type": "array", "items": {"type": "string"}},
                                      "privacy": {"type": "object", "nullable": True},
                                      "results": {"type": "object"}}},
            "Policy": {"type": "object", "properties": {
                "party": {"type": "string"}, "parties": {"type": "array", "items": {"type": "string"}},
                "policy": {"type": "object"},
                "datasets": {"type": "object", "additionalProperties": {"type": "object"}}}},
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"}, "kind": {"type": "string"}}},
        }},
    }


# ----------------------------------------------------------------------------- HTTP

_JOB_PATH = re.compile(r"/jobs/([^/]+)(/result|/cancel)?")
_CONTENT_LENGTH = re.compile(r"[0-9]{1,12}")


class _Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0). Every answer is JSON ``{"error", "kind"}`` on
    failure, one line of at most 300 characters; nothing a client sends yields a 500."""

    server_version = "jointstats-node"
    default_request_version = "HTTP/1.0"  # so that even a garbage request line gets a status line
    timeout = 10  # seconds any one read or write may wait (the server bounds the totals)
    node: Node  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str, kind: str) -> None:
        self.close_connection = True
        try:
            self._send(status, {"error": _safe_text(clip_error(message), 300), "kind": kind})
        except OSError:  # the client hung up, or its deadline passed
            pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (bad request line, headers too long or too many, unknown
        method, HTTP version) as one-line JSON; an unknown method is 405, a bad version 400:
        nothing a client sends gets a 5xx."""
        self.close_connection = True
        if code == 501:
            code = 405
        elif code >= 500:  # 505: an HTTP version other than 1.x
            code = 400
        text = {400: "malformed HTTP request", 405: f"method not allowed: {shorten(self.command)}",
                408: "request timed out", 414: "request line too long",
                431: "request headers too large or too many"}.get(code, message or "bad request")
        self._send_error(code, text, "HTTPError")

    def _read_done(self) -> None:
        """The request has been read: from now only the connection's total deadline applies."""
        self.server.request_read(self.request)

    def _body(self) -> Any:
        if self.headers.get("Transfer-Encoding") is not None:
            raise ApiError(411, "send the body with a Content-Length, not a Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if len(set(lengths)) > 1 or not all(_CONTENT_LENGTH.fullmatch(v.strip()) for v in lengths):
            raise ApiError(400, "bad Content-Length (one non-negative integer)")
        length = int(lengths[0]) if lengths else 0
        if length > MAX_BODY:
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise ApiError(400, f"request body shorter than its Content-Length ({len(raw)} of "
                                f"{length} bytes)")
        self._read_done()
        try:
            return json.loads(raw or b"null")
        except RecursionError:
            raise ApiError(400, "request body is nested too deeply") from None
        except ValueError:  # not JSON, not UTF-8, or an integer of more than 4300 digits
            raise ApiError(400, "request body is not valid JSON") from None

    def _dispatch(self, method: str) -> None:
        node = self.node
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET":
                self._read_done()
            if method == "GET" and path == "/health":
                return self._send(200, node.health())
            if method == "GET" and path == "/policy":
                node._authenticate(self.headers, "GET /policy", "GET /policy")
                return self._send(200, node.policy())
            if method == "GET" and path == "/openapi.json":
                node._authenticate(self.headers, "GET /openapi.json", "GET /openapi.json")
                return self._send(200, openapi(node))
            if method == "POST" and path == "/jobs":
                return self._send(202, node.submit(self._body()))
            m = _JOB_PATH.fullmatch(path)
            if m:
                job_id, tail = m.group(1), m.group(2)
                if method == "GET" and tail is None:
                    return self._send(200, node.job_status(job_id, self.headers))
                if method == "GET" and tail == "/result":
                    return self._send(200, node.job_result(job_id, self.headers))
                if method == "POST" and tail == "/cancel":
                    return self._send(200, node.cancel(job_id, self._body()))
            raise ApiError(404 if method == "GET" else 405,
                           f"no such endpoint: {method} {shorten(path, 80)}", "NotFound")
        except ApiError as exc:
            self._send_error(exc.status, str(exc), exc.kind)
        except JointStatsError as exc:
            err = _api_error(exc)
            self._send_error(err.status, str(err), err.kind)
        except OSError:  # the client hung up, or its deadline passed
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - the node keeps serving
            node._log("API bug: " + "".join(traceback.format_exception(exc)).strip())
            self._send_error(500, f"internal error: {type(exc).__name__}", "InternalError")

    def do_GET(self):  # noqa: N802 - http.server naming
        self._dispatch("GET")

    def do_POST(self):  # noqa: N802
        self._dispatch("POST")


_BUSY = json.dumps({"error": "too many connections; try again later", "kind": "Busy"}).encode()


class _Server(ThreadingHTTPServer):
    """A thread per connection, within bounds: at most ``max_connections`` at once and
    ``max_per_client`` per client address (others are answered 503 at once and closed, never
    given a thread); a client must send its whole request within ``request_deadline`` seconds
    and a connection lasts at most ``connection_deadline`` seconds, however slowly the client
    trickles its bytes (a reaper thread shuts down the connections past their deadlines)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def __init__(self, address, handler, *, request_deadline: float = REQUEST_DEADLINE,
                 connection_deadline: float = CONNECTION_DEADLINE,
                 max_connections: int = MAX_CONNECTIONS,
                 max_per_client: int = MAX_CONNECTIONS_PER_CLIENT):
        self.request_deadline = request_deadline
        self.connection_deadline = connection_deadline
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self._conn_lock = threading.Lock()
        self._conns: dict[Any, list] = {}  # socket -> [client, request deadline, total deadline]
        self._per_client: dict[str, int] = {}
        self._closing = threading.Event()
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="api-deadlines", daemon=True)
        self._reaper.start()

    def get_request(self):
        sock, addr = super().get_request()
        if self.tls is not None:  # handshake in the handler thread, on first read
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request, client_address):
        client = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        now = time.monotonic()
        with self._conn_lock:
            busy = (len(self._conns) >= self.max_connections
                    or self._per_client.get(client, 0) >= self.max_per_client)
            if not busy:
                self._conns[request] = [client, now + self.request_deadline,
                                        now + self.connection_deadline]
                self._per_client[client] = self._per_client.get(client, 0) + 1
        if busy:
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)  # a thread for this connection
        except Exception:  # noqa: BLE001 - e.g. no thread could be started
            self.shutdown_request(request)

    def _turn_away(self, request) -> None:
        """503 without reading the request (plain HTTP; a TLS client just sees the close)."""
        if self.tls is None:
            try:
                request.setblocking(False)
                request.send(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json"
                             b"\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: "
                             + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def request_read(self, request) -> None:
        with self._conn_lock:
            entry = self._conns.get(request)
            if entry is not None:
                entry[1] = math.inf

    def shutdown_request(self, request):
        with self._conn_lock:
            entry = self._conns.pop(request, None)
            if entry is not None:
                left = self._per_client[entry[0]] - 1
                if left:
                    self._per_client[entry[0]] = left
                else:
                    del self._per_client[entry[0]]
        super().shutdown_request(request)

    def _reap(self) -> None:
        """Shut down (not close: the handler thread still owns the socket) every connection
        past a deadline; its blocked read or write then fails and its thread ends."""
        while not self._closing.wait(0.25):
            now = time.monotonic()
            with self._conn_lock:
                late = [sock for sock, (_, read_by, done_by) in self._conns.items()
                        if now > read_by or now > done_by]
                for sock in late:
                    self._conns[sock][1] = self._conns[sock][2] = math.inf
            for sock in late:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # bypasses SSLSocket's
                except OSError:
                    pass

    def server_close(self):
        self._closing.set()
        super().server_close()

    def connections(self) -> int:
        """Connections being served now."""
        with self._conn_lock:
            return len(self._conns)

    def handle_error(self, request, client_address):
        pass  # a client that hangs up or fails the TLS handshake is not the node's problem


def make_server(node: Node, host: str | None = None, port: int | None = None,
                api_cert: str | Path | None = None, api_key: str | Path | None = None,
                **limits) -> _Server:
    """An HTTP(S) server for ``node`` bound to ``host:port`` (default: the config's ``api``).
    ``limits``: request_deadline, connection_deadline, max_connections, max_per_client (the
    module's constants by default)."""
    handler = type("Handler", (_Handler,), {"node": node})
    host = node.config.api_host if host is None else host
    port = node.config.api_port if port is None else port
    try:
        server = _Server((host, port), handler, **limits)
    except OSError as exc:
        raise ConfigError(f"party {node.config.party!r}: cannot listen for analysts on "
                          f"{host}:{port} ({exc.strerror})") from None
    if api_cert or api_key:
        if not (api_cert and api_key):
            raise ConfigError("--api-cert and --api-key must be given together")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(api_cert), str(api_key))
        except (OSError, ssl.SSLError) as exc:
            server.server_close()
            raise ConfigError(f"api tls: cannot load {api_cert} with key {api_key}: {exc}") from None
        server.tls = ctx
    return server


def serve(config: str | Path, *, api_cert: str | Path | None = None,
          api_key: str | Path | None = None, connect_timeout: float = 60.0,
          peer_wait: float = 120.0, orphan_grace: float = 30.0) -> int:
    """Run a node until SIGINT or SIGTERM (``jointstats node serve``)."""
    node = Node(config, connect_timeout=connect_timeout, peer_wait=peer_wait,
                orphan_grace=orphan_grace)
    try:
        server = make_server(node, api_cert=api_cert, api_key=api_key)
    except BaseException:
        node.state.close()
        raise
    host, port = server.server_address[:2]
    scheme = "https" if server.tls else "http"
    cfg = node.config
    node._log(f"serving analysts on {scheme}://{host}:{port} (party {cfg.index} of "
              f"{len(node.names)}: {', '.join(node.names)}; mpc tls "
              f"{'on' if cfg.tls else 'off'}; state {cfg.state})")
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node.start()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node._log("stopping")
        server.shutdown()
        server.server_close()
        node.stop()
        for s, h in old.items():
            signal.signal(s, h)
    return 0


# ----------------------------------------------------------------------------- worker

def _worker_main(argv: list[str]) -> int:
    """``python -m jointstats.node worker --parent PID <jointstats._party arguments>``."""
    parser = argparse.ArgumentParser(prog="jointstats-node-worker")
    parser.add_argument("--parent", type=int, required=True)
    args, rest = parser.parse_known_args(argv)
    from ._party import die_with_parent, main
    die_with_parent(args.parent)
    return main(rest)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        from ._party import exit_now
        exit_now(_worker_main(sys.argv[2:]))
    print("usage: jointstats node serve --config A.yaml", file=sys.stderr)
    sys.exit(2)
