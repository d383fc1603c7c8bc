"""A long-running party node: ``jointstats node serve --config A.yaml``.

The node is the sole guardian of its party's data and privacy budget. It listens for
analysts on ``api`` (HTTP/JSON on uvicorn, optionally HTTPS; the OpenAPI description,
generated from the request and response models, is at ``/openapi.json``), checks every
submission (Ed25519 signature of a listed analyst, fresh timestamp, unused job id, its own
policy and remaining budget), queues it, and runs each job in a worker subprocess
(``jointstats.engine.party``) that joins the MPC with the other nodes. A worker crash or hang
never takes the node down.

The node is made of small modules, one job each:

* this module: :class:`Node`, admission (checks, audit of refusals) and the queries the API
  answers, and :func:`serve`;
* ``jointstats.node.schedule``: agreeing on the next job with the other nodes, running it;
* ``jointstats.node.jobs``: job records and their folders;
* ``jointstats.node.errors``: error answers and the mapping of domain errors to statuses;
* ``jointstats.node.models``: the API's request and response models (pydantic);
* ``jointstats.node.http``: the ASGI app (FastAPI) and its route table;
* ``jointstats.node.server``: the uvicorn server with its size, time and connection limits.

Durable state lives beside ``state:`` of the config: the privacy ledger and audit log
in the SQLite file itself (:class:`jointstats.ledger.state.NodeState`), and per job a folder
``<state>.jobs/<job id>/`` with the submission, the spec, the worker log and the result.
On startup the node resolves every job left unfinished by a crash (``NodeState.recover``).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jointstats.local.launch import start_launcher
from jointstats.node.errors import ApiError, api_error, safe_text
from jointstats.node.jobs import JOB_ID_RE, STATUSES, JobStore, NodeJob, iso_time
from jointstats.node.schedule import Scheduler
from jointstats.consortium.config import PartyConfig, load_party_config
from jointstats.errors import (AuthError, BudgetError, ConfigError, JointStatsError, PolicyError,
                     SpecError, StaleRequestError)
from jointstats.plan.spec import clip_error, shorten

__all__ = ["Node", "NodeJob", "JobStore", "ApiError", "serve", "make_server", "openapi",
           "JOB_ID_RE", "STATUSES", "MAX_SKEW"]

#: Largest clock difference accepted between an analyst's timestamp and the node (seconds).
MAX_SKEW = 300
#: Submissions parsed and planned at once (each in a worker thread of the API, never in its
#: event loop); more wait up to PLANNING_WAIT seconds for a turn, then get 503.
MAX_PLANNING = 2
PLANNING_WAIT = 30.0


def _stamp() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


#: Refusals before a signature is verified that are audited one by one per minute (the rest counted).
UNAUTHENTICATED_AUDITS_PER_MINUTE = 20
_UNAUTHENTICATED = frozenset({"malformed", "unknown analyst", "revoked", "bad signature",
                              "stale timestamp"})


# ----------------------------------------------------------------------------- the node

class Node(Scheduler):
    """One party's node: API handlers, job queue, rendezvous and worker processes."""

    def __init__(self, config: str | Path | PartyConfig, *, connect_timeout: float = 60.0,
                 peer_wait: float = 120.0, orphan_grace: float = 30.0,
                 attempt_timeout: float = 5.0, job_timeout: float = 4 * 3600.0,
                 log=None):
        from jointstats.ledger.state import NodeState
        self.config = config if isinstance(config, PartyConfig) else load_party_config(config)
        cfg = self.config
        from jointstats.noise import cache as _plan_cache  # noise plans built while planning submissions, kept for workers
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
            from jointstats.consortium.tls import check_own_certificate
            check_own_certificate(cfg)
        for name, path in cfg.policy.analysts:
            if not Path(path).is_file():
                raise ConfigError(f"{cfg.path.name}: policy.analysts.{name}: no such public key "
                                  f"file {path}")
        cfg.state.parent.mkdir(parents=True, exist_ok=True)
        self.state = NodeState(cfg.state)
        self.store = JobStore(cfg.state.with_name(cfg.state.stem + ".jobs"))
        self._lock = threading.RLock()
        self._planning = threading.BoundedSemaphore(MAX_PLANNING)
        self.planning_wait = PLANNING_WAIT
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
            if job.status in ("queued", "waiting"):
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
        job_id, analyst = safe_text(job_id, 128), safe_text(analyst, 64)
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
                         reason=reason, detail=safe_text(clip_error(str(exc)), 500), **fields)
        self._log(f"refused submission {job_id[:40]!r} from {analyst[:40]!r}: "
                  f"{safe_text(clip_error(str(exc)), 500)}")

    def submit(self, body: Any) -> dict:
        """Check and queue a signed submission; ApiError with a one-line reason otherwise."""
        from jointstats.node.models import Submission
        from jointstats.consortium.keys import verify_submission
        cfg = self.config
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        job_id, analyst = body.get("job_id", "?"), body.get("analyst", "?")
        try:
            sub = Submission.from_body(body)
        except ApiError as err:
            self._refuse(job_id, analyst, "malformed", err)
            raise
        job_id, analyst, spec_text = sub.job_id, sub.analyst, sub.spec
        timestamp, signature = sub.timestamp, sub.signature
        pub = cfg.policy.analyst_key(analyst)
        if pub is None:
            revoked = analyst in cfg.policy.governance.revoked
            err = AuthError(f"analyst {analyst!r} is revoked at party {cfg.party!r} (policy.revoked)"
                            if revoked else f"analyst {analyst!r} is not listed in party "
                                            f"{cfg.party!r}'s policy.analysts")
            self._refuse(job_id, analyst, "revoked" if revoked else "unknown analyst", err)
            raise api_error(err)
        try:
            verify_submission(pub, spec_text, job_id, timestamp, analyst, signature,
                              now=int(time.time()), max_skew=MAX_SKEW)
        except AuthError as exc:
            reason = "stale timestamp" if isinstance(exc, StaleRequestError) else "bad signature"
            self._refuse(job_id, analyst, reason, exc)
            raise api_error(exc) from None
        with self._planning_turn():
            return self._admit(body, job_id, analyst, spec_text, timestamp)

    @contextmanager
    def _planning_turn(self):
        """One of MAX_PLANNING turns to parse and plan a submission (taken before the job id
        is used up, so that a submission turned away with 503 can be sent again as it is)."""
        if not self._planning.acquire(timeout=self.planning_wait):
            raise ApiError(503, f"party {self.config.party!r} is busy planning other "
                                f"submissions; try again", "Busy")
        try:
            yield
        finally:
            self._planning.release()

    def _admit(self, body: dict, job_id: str, analyst: str, spec_text: str,
               timestamp: int) -> dict:
        """Use up the job id, parse and plan the spec, check policy and budget, queue the job."""
        from jointstats.plan.spec import parse_spec
        cfg = self.config
        try:
            self.state.use_nonce(job_id, analyst=analyst)
        except AuthError as exc:
            self._refuse(job_id, analyst, "replay", exc)
            raise api_error(exc) from None
        # authenticated from here on; the job id is used up whatever happens next
        try:
            spec = parse_spec(spec_text)
            plan = self._plan(spec)
            from jointstats.consortium.agreements import admit
            admission = admit(cfg, self.state, spec, plan, analyst)
        except JointStatsError as exc:
            reason = ("budget" if isinstance(exc, BudgetError) else
                      "spec" if isinstance(exc, SpecError) else "policy")
            self._refuse(job_id, analyst, reason, exc)
            raise api_error(exc) from None
        except Exception as exc:  # e.g. a missing optional layer: still one line
            err = ApiError(500, f"party {cfg.party!r} cannot plan the job: "
                                f"{type(exc).__name__}: {exc}", "PartyError")
            self._refuse(job_id, analyst, "internal", err)
            raise err from None
        job = NodeJob(job_id=job_id, analyst=analyst, timestamp=timestamp,
                      spec_sha256=spec.sha256, protocol=spec.name, dataset=spec.dataset,
                      mode="exact" if spec.privacy is None else "dp",
                      epsilon=None if spec.privacy is None else float(spec.privacy.epsilon),
                      received=time.time(), status="waiting" if admission.waits else "queued",
                      agreement=admission.agreement and admission.agreement.id,
                      approval_reasons=list(admission.approval_reasons))
        with self._lock:
            self.store.create(job, spec_text, {k: body[k] for k in
                                               ("job_id", "timestamp", "analyst", "signature")})
            self.jobs[job_id] = job
        self.state.audit("submission", job_id=job_id, analyst=analyst, protocol=spec.name,
                         spec_sha256=spec.sha256, dataset=spec.dataset, mode=job.mode,
                         epsilon=job.epsilon, timestamp=timestamp, purpose=spec.purpose,
                         agreement=job.agreement)
        if admission.waits:
            self.state.audit("waiting", job_id=job_id, analyst=analyst,
                             reasons=list(admission.approval_reasons))
        self._log(f"{job.status} job {job_id} ({spec.name!r}, {job.mode}) from {analyst!r}")
        self._wake.set()
        return job.public(cfg.party)

    def _plan(self, spec):
        from jointstats.engine.output import add_noise_plans
        from jointstats.plan.sealed import make_plan
        return add_noise_plans(spec, make_plan(spec, self.names))

    def cancel(self, job_id: str, body: Any) -> dict:
        """Cancel a queued job; only its analyst may, with a fresh signature over ``cancel:<id>``."""
        from jointstats.consortium.keys import verify_submission
        from jointstats.node.models import Cancel
        job = self._job(job_id)
        req = Cancel.from_body(body)
        if req.analyst != job.analyst:
            raise ApiError(403, f"job {job_id!r} was submitted by {job.analyst!r}, not "
                                f"{req.analyst!r}", "AuthError")
        pub = self.config.policy.analyst_key(job.analyst)
        if pub is None:
            raise ApiError(401, f"analyst {job.analyst!r} is no longer listed", "AuthError")
        try:
            verify_submission(pub, f"cancel:{job_id}", job_id, req.timestamp, job.analyst,
                              req.signature, now=int(time.time()), max_skew=MAX_SKEW)
        except AuthError as exc:
            raise api_error(exc) from None
        with self._lock:
            if job.status not in ("queued", "waiting"):
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
        from jointstats.consortium.keys import verify_submission
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
            raise api_error(exc) from None
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
        from jointstats import __version__
        with self._lock:
            queued = sum(1 for j in self.jobs.values() if j.status == "queued")
            running = self._running
        return {"ok": True, "party": self.config.party, "index": self.config.index,
                "parties": self.names, "version": __version__,
                "mpc_tls": self.config.tls is not None, "queued": queued, "running": running,
                "up_since": iso_time(self.started)}

    # ------------------------------------------------------------------ scheduling

    def start(self) -> None:
        """Start the scheduler thread (the API is served separately) and the launcher the
        workers are forked from, so that the first job does not wait for it."""
        start_launcher(self._worker_env())
        self._scheduler.start()

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


# ----------------------------------------------------------------------------- serving

def make_server(node: Node, host: str | None = None, port: int | None = None,
                api_cert: str | Path | None = None, api_key: str | Path | None = None,
                **limits):
    """The API server of ``node`` (``jointstats.node.server.ApiServer``), bound to
    ``host:port`` (default: the config's ``api``); HTTPS with ``api_cert``/``api_key``.
    ``limits``: fields of ``jointstats.node.server.Limits`` (its defaults otherwise)."""
    from jointstats.node.server import make_server as _make
    return _make(node, host, port, api_cert, api_key, **limits)


def openapi(node: Node | None = None) -> dict:
    """The OpenAPI 3 description of the node API, generated from its models and routes."""
    from jointstats.node.http import create_app
    return create_app(node).openapi()


def serve(config: str | Path, *, api_cert: str | Path | None = None,
          api_key: str | Path | None = None, connect_timeout: float = 60.0,
          peer_wait: float = 120.0, orphan_grace: float = 30.0, **limits) -> int:
    """Run a node until SIGINT or SIGTERM (``jointstats node serve``); ``limits``: fields of
    ``jointstats.node.server.Limits`` for its API."""
    node = Node(config, connect_timeout=connect_timeout, peer_wait=peer_wait,
                orphan_grace=orphan_grace)
    try:
        server = make_server(node, api_cert=api_cert, api_key=api_key, **limits)
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
    from jointstats.node.governance import reload_on_signal
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload_on_signal(node))
    node.start()
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="api")
    thread.start()
    try:
        while not stop.wait(0.5):
            if not thread.is_alive():
                node._log("the API server stopped")
                break
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
    """``python -m jointstats.node.service worker --parent PID <jointstats.engine.party arguments>``."""
    parser = argparse.ArgumentParser(prog="jointstats-node-worker")
    parser.add_argument("--parent", type=int, required=True)
    args, rest = parser.parse_known_args(argv)
    from jointstats.engine.party import die_with_parent, main
    die_with_parent(args.parent)
    return main(rest)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        from jointstats.engine.party import exit_now
        exit_now(_worker_main(sys.argv[2:]))
    print("usage: jointstats node serve --config A.yaml", file=sys.stderr)
    sys.exit(2)
