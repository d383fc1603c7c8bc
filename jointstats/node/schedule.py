"""A node's scheduler: agree with the other nodes on the next job, run it in a worker.

Every node runs at most one job at a time, and all nodes run the same job at the same time.
Before each job the nodes *agree* on it, over the same mutually authenticated MPC channels
the job will use: every node with queued jobs joins a short rendezvous in which each node
sends its whole queue to every other node (a typed record, ``jointstats.mpc.codec``, never a
pickle). All nodes then hold the same information and pick the same job: the earliest, by
(timestamp, job id), of the jobs that every node holds. A job some node does not hold waits
(it may still be arriving) and is failed if it is still missing there ``orphan_grace``
seconds later; if the other nodes do not join at all for ``peer_wait`` seconds, the queued
jobs fail, naming the parties that did not join.

Each job runs in a worker process forked from the node's launcher (``jointstats.local.launch``)
and exec'd as ``python -m jointstats.node.service worker``; a worker crash or hang never takes the
node down. :class:`Scheduler` is mixed into :class:`jointstats.node.service.Node`, whose job
records, store, ledger and lock it uses.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import traceback

from jointstats.engine.protocol import JobDescription, WorkerEvents
from jointstats.local.launch import start_party
from jointstats.node.jobs import NodeJob
from jointstats.errors import AuthError, ConfigError, JointStatsError, PartyError, PeerTlsError

__all__ = ["Scheduler", "RENDEZVOUS_TAG"]

#: Rendezvous message tag.
RENDEZVOUS_TAG = "jointstats-rendezvous/1"
_RDV = RENDEZVOUS_TAG


#: Seconds a node tries to reach the other parties to tell them its worker died before connecting.
ANNOUNCE_TIMEOUT = 10.0


class Scheduler:
    """The scheduling half of a node (mixed into :class:`jointstats.node.service.Node`)."""

    @staticmethod
    def _worker_env() -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _queued(self) -> list[NodeJob]:
        with self._lock:
            return sorted((j for j in self.jobs.values() if j.status == "queued"),
                          key=NodeJob.entry)

    def _schedule(self) -> None:
        """The scheduler loop: agree on the next job with the other nodes, run it, repeat."""
        failing_since: float | None = None
        last_error = None
        while not self._stop.is_set():
            from jointstats.node import governance as _gov_node
            _gov_node.expire_waiting(self)
            queued = self._queued()
            waiting = _gov_node.waiting_jobs(self)  # take part in the rendezvous, never run
            if not queued and not waiting:
                failing_since = None
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                queues = asyncio.run(self._rendezvous(_gov_node.rendezvous_entries(queued, waiting)))
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
            if chosen is None:  # only jobs waiting for approval here: rendezvous less often
                self._stop.wait(0.2 if queued else 1.0)
                continue
            self._run(chosen)

    def _choose(self, queued: list[NodeJob], queues: dict[str, list]) -> NodeJob | None:
        """The earliest job every party holds; fail own jobs missing elsewhere for too long."""
        from jointstats.consortium.approval import split_queues
        queues, waiting_at = split_queues(queues)  # a job waiting for approval somewhere is held
        held = {party: {tuple(e) for e in q} for party, q in queues.items()}
        common = set.intersection(*held.values())
        now = time.time()
        for job in queued:
            missing = [p for p in self.names if job.entry() not in held.get(p, set())
                       and job.entry() not in waiting_at.get(p, set())]
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
        from jointstats.mpc import codec as _codec
        logging.getLogger().setLevel(logging.WARNING)  # MPyC logs every shutdown at INFO
        cfg = self.config
        rt = self._party_runtime()
        # a typed record (jointstats.mpc.codec), never a pickle: at most MAX_QUEUE entries, the
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
        argv = JobDescription(config=str(cfg.path), spec=str(self.store.spec_path(job.job_id)),
                              job_id=job.job_id, out=str(out), analyst=job.analyst,
                              connect_timeout=self.connect_timeout).argv()
        lines: list[str] = []
        events = WorkerEvents()
        error = None
        kind = "PartyError"
        try:
            with open(self.store.log_path(job.job_id), "a") as log:
                # forked from the node's launcher (a clean interpreter, never a fork of the
                # node: no keys, no state); exec'd as a worker that dies with the node otherwise
                proc = start_party(argv, self._worker_env(), new_session=True,
                                   exec_command=[sys.executable, "-m", "jointstats.node.service", "worker",
                                                 "--parent", str(os.getpid()), *argv])
                self._proc = proc
                self._log(f"job {job.job_id}: worker process {proc.pid}")
                reader = threading.Thread(target=self._read_worker, args=(proc, log, lines),
                                          daemon=True)
                reader.start()
                listener = threading.Thread(target=self._read_events, args=(proc, job, events, log),
                                            daemon=True)
                listener.start()
                try:
                    proc.wait(timeout=self.job_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    error = f"party {cfg.party!r}: the job did not finish within {self.job_timeout:.0f} s"
                reader.join(timeout=5)
                listener.join(timeout=5)
        except OSError as exc:
            error = f"party {cfg.party!r} cannot start its worker: {exc}"
            proc = None
        finally:
            self._proc = None
        connected = getattr(events, "connected", False)
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
            # the class the worker reported (its error event; the result file says the same)
            outcome = events.outcome or {}
            kind = (outcome.get("kind") if outcome.get("event") == "error" else None) \
                or payload.get("kind") or kind
        elif error is None:
            # The worker's stderr is this party's own log (it may count rows or quote a
            # traceback): it stays in the job's worker log and the node's log, never in the
            # error shown to the analyst.
            rc = proc.returncode if proc is not None else None
            how = (f"signal {-rc}" if rc is not None and rc < 0 else f"exit status {rc}")
            error = f"party {cfg.party!r} died ({how}) in its worker process"
            kind = "PartyDiedError"
            if lines:
                self._log(f"job {job.job_id}: last line of its worker log: {lines[-1]}")
            if not connected:
                self._announce_death(job)
        self._end(job, "failed", error, settle=not worker_settled, kind=kind)
        with self._lock:
            self._running = None
        self._log(f"job {job.job_id} failed: {error}")

    def _party_runtime(self):
        """A runtime on this party's MPC port and identity (TLS if configured), in the node
        process: for the rendezvous, and to speak for a worker that died before connecting."""
        from jointstats.mpc import runtime as _mpc
        cfg = self.config
        rt = _mpc.make_party_runtime(cfg.index, self.names, [(p.host, p.port) for p in cfg.peers])
        if cfg.tls is not None:
            from jointstats.consortium.tls import configure_tls
            configure_tls(rt, cfg)
        return rt

    def _announce_death(self, job: NodeJob) -> None:
        """The worker died before it connected: the other parties' workers wait for it until
        their connect timeout. Connect in its place (this party's MPC port is free again, the
        same identity) and tell them, in a typed notice naming this party, so that they stop
        within seconds and name the right party."""
        from jointstats.mpc import codec as _codec

        async def tell() -> None:
            cfg = self.config
            rt = self._party_runtime()
            try:
                await rt.start(min(self.connect_timeout, ANNOUNCE_TIMEOUT))
                rt.blame(cfg.index, _codec.DIED, f"party {cfg.party!r} died before connecting")
                await rt._deliver_notices()
            finally:
                rt.abort()
        try:
            asyncio.run(tell())
            self._log(f"job {job.job_id}: told the other parties that its worker died before connecting")
        except Exception as exc:  # noqa: BLE001 - best effort: the peers' own timeout still ends it
            self._log(f"job {job.job_id}: could not tell the other parties that its worker died "
                      f"({type(exc).__name__}: {exc})")

    @staticmethod
    def _read_worker(proc, log, lines: list[str]) -> None:
        """Copy the worker's stderr (its own log, never parsed) to the job's worker log."""
        for line in proc.stderr:
            log.write(line)
            log.flush()
            lines.append(line.rstrip("\n"))

    def _read_events(self, proc, job: NodeJob, events: WorkerEvents, log) -> None:
        """The worker's events (``jointstats.engine.protocol``): the job's progress field
        follows its progress events; a line that is not an event is noted in the worker log."""
        party = self.config.party

        def progress(sender: str, message: str) -> None:
            if sender == party:
                job.progress = message
                if message == "connected":
                    events.connected = True

        def malformed(line: str) -> None:
            events.bad_line(line)
            log.write(f"(not a worker event, ignored) {line[:500]}\n")
            log.flush()
        events.on_progress = progress
        from jointstats.engine.protocol import read_events
        read_events(proc.stdout, events.handle, malformed)

