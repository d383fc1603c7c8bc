"""One party's side of one job, run as its own OS process.

It reads only its own config and data, checks its own policy, computes its partial
aggregates locally, joins the MPC with the other parties, checks that all hold the
same plan, runs the secure step and writes the revealed result (or a one-line error).

Usage: ``python -m jointstats.engine.party --job JOB`` (JOB: a JSON job description, or the
path of a file holding one), or for a person ``python -m jointstats.engine.party --config A.yaml
--spec SPEC --job-id ID --out FILE``.

The worker protocol (what ``jointstats.local.runner`` and the node's scheduler speak):

* the job description: ``{"config": path, "spec": path, "job_id": str, "out": path,
  "connect_timeout": seconds, "analyst": str}`` (``JobDescription``);
* events: the process's stdout is reserved for them, one JSON object a line
  (``{"event": "progress", "party": ..., "message": ...}``, then exactly one of
  ``{"event": "result", "party": ..., "path": ...}`` or ``{"event": "error", "party": ...,
  "kind": <class name in jointstats.errors>, "message": ..., "cause": ..., "path": ...}``);
  anything else the process would print on stdout goes to its stderr, which is its own log;
* the result file at ``out`` (written before the terminal event): the payload the runner reads.

Phases are marked with spans of ``jointstats.engine.trace`` (sinks named by JOINTSTATS_TRACE
are installed when the process starts).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from jointstats.mpc import codec as _codec
from jointstats.engine import trace
from jointstats.engine.protocol import EventWriter, JobDescription
from jointstats.consortium.config import PartyConfig, load_party_config
from jointstats.errors import DataError, JointStatsError, PartyError, PeerLostError, PlanMismatchError
from jointstats.plan.sealed import Plan, make_plan
from jointstats.consortium.policy import check_job, effective_min_count
from jointstats.plan.spec import Spec, load_spec

#: Seconds to wait for every peer to finish its local step (reading its data).
LOCAL_STEP_TIMEOUT = 3600.0
#: Rows per chunk of the local step: bounds memory whatever the size of the data.
CHUNK_ROWS = 1 << 18
#: Seconds any single secure-step wait may take before the job fails.
SECURE_STEP_TIMEOUT = 600.0

log = logging.getLogger("jointstats.party")

#: Bytes of messages a peer may have waiting unread, per shared value of a statistic: 1 KiB
#: per cell, bin or count (the largest message measured is 0.35 KB per value: an exact
#: crosstab with a minimum count) and 8 KiB per Gram-matrix entry and prime field of a
#: regression or correlation (measured 1.2 KB). See ``unread_limit``.
UNREAD_PER_VALUE = 1 << 10
UNREAD_PER_GRAM_VALUE = 8 << 10


def unread_limit(plan: Plan) -> int:
    """The most bytes of messages any one peer may make this party hold unread in this job
    (and the longest message it may send): the floor of fixed costs, plus, for every
    statistic, what its shared values can need in one round (every statistic's steps run
    at once). A peer beyond it is dropped and named (``jointstats.mpc.runtime._Exchanger``)."""
    total = _codec.UNREAD_FLOOR + sum(
        s.partial_size * (UNREAD_PER_GRAM_VALUE * max(1, s.primes) if s.gram else UNREAD_PER_VALUE)
        for s in plan.statistics)
    return min(total, _codec.MAX_UNREAD)


def local_step_failure(party: str) -> str:
    """The fixed reason a party gives its peers and the analyst when its local step fails in
    DP mode: it names the party only (what went wrong, with any count, is in its own log)."""
    return f"party {party!r} could not read and aggregate its data; the reason is in its own log only"


class PartyJob:
    """Everything one party needs for one job; ``run()`` returns the revealed result dict."""

    def __init__(self, config: PartyConfig, spec: Spec, job_id: str, *, connect_timeout: float = 60.0,
                 progress=None, hooks=None):
        self.config = config
        self.spec = spec
        self.job_id = job_id
        self.connect_timeout = connect_timeout
        self.progress = progress or (lambda msg: None)
        self.hooks = hooks  # ledger/audit hooks of a node (jointstats.node.service), or None
        self.metrics: dict = {}
        self.fingerprint: dict | None = None  # keyed hash of the data read (jointstats.engine.report)

    def plan(self) -> Plan:
        """The plan this party derives on its own from the spec and the public party list."""
        from jointstats.noise import cache as _plan_cache
        from jointstats.engine.output import add_noise_plans
        # noise plans (the samplers' coins) cached beside this party's state file
        _plan_cache.set_directory(_plan_cache.directory_for_state(self.config.state))
        plan = make_plan(self.spec, [p.name for p in self.config.peers])
        with trace.span("plan"):
            return add_noise_plans(self.spec, plan)

    def local_step(self, plan: Plan) -> dict[str, list[int]]:
        """Policy check, then read, validate, clip and aggregate this party's own rows.

        The policy check, the data source and its header do not depend on the rows: their
        errors are precise in both modes. Exact mode reads strictly (a value outside the
        schema fails the job, naming column and count). In DP mode nothing another party or
        the analyst sees may depend on the data except through the noise: values outside
        the schema are read as missing (counted only in this party's own log), and any
        failure while reading or aggregating becomes one fixed reason naming this party
        (``local_step_failure``), the details logged here only.
        """
        from jointstats.engine.local_step import compute_partials
        from jointstats.engine.sources import open_source
        party = self.config.party
        check_job(self.config, self.spec, plan, getattr(self.hooks, "analyst", "local"))
        if plan.vertical and self.config.compute_only:
            from jointstats.engine.vertical import local_block
            return local_block(self.config, self.spec, plan, plan.mode == "dp")
        if self.config.compute_only:
            # a compute-only party holds no data: zero partials of the plan's shape, nothing read
            self.metrics["local_seconds"] = 0.0
            return compute_partials(plan, ())
        source = open_source(self.config.dataset_source(self.spec.dataset), self.config.base_dir,
                             self.config.dataset_options(self.spec.dataset))
        started = time.perf_counter()
        dp = plan.mode == "dp"
        # consent withdrawals in force when the job started (read by the hooks, or now)
        exclusion = getattr(self.hooks, "exclusion", None)
        if exclusion is None:
            from jointstats.ledger.consent import load_exclusion
            exclusion = load_exclusion(self.config, self.spec.dataset)
        if exclusion is not None and getattr(source, "aggregate", None) is not None:
            raise DataError(f"party {party!r}: consent withdrawal (subject_id) is not supported "
                            f"for engine sources; exclude withdrawn subjects in the table or query")

        def aggregate():
            with trace.span("local_step"):
                return aggregate_rows()

        def aggregate_rows():
            # an engine-backed source (PostgreSQL, DuckDB, Spark) computes the partials itself
            # (jointstats.engine.sql_sources); None: stream its rows through the numpy path
            if plan.vertical:  # a linked job: keys and encoded rows (jointstats.engine.vertical)
                from jointstats.engine.vertical import local_block
                try:
                    return local_block(self.config, self.spec, plan, dp, source)
                finally:
                    getattr(source, "close", lambda: None)()
            try:
                pushed = getattr(source, "aggregate", None)
                partials = None if pushed is None else pushed(plan, list(self.spec.schema), party,
                                                               strict=not dp)
                if partials is None:
                    chunks = source.iter_chunks(list(self.spec.schema), party, chunk_rows=CHUNK_ROWS,
                                                strict=not dp, exclude=exclusion)
                    partials = compute_partials(plan, _traced_chunks(chunks) if trace.active() else chunks)
                from jointstats.engine.report import fingerprint  # the data's version, for the release report
                self.fingerprint = fingerprint(self.config, self.spec.dataset, exclusion)
                return partials
            finally:
                getattr(source, "close", lambda: None)()

        if not dp:
            partials = aggregate()
        else:
            try:
                partials = aggregate()
            except Exception as exc:  # noqa: BLE001 - whatever it was, its text stays here
                log.warning("party %r: local step failed: %s: %s", party, type(exc).__name__, exc,
                            exc_info=not isinstance(exc, JointStatsError))
                raise DataError(local_step_failure(party)) from None
        self.metrics["local_seconds"] = time.perf_counter() - started
        return partials

    def _refusal(self, exc: JointStatsError) -> str:
        """The one-line refusal this party sends its peers, naming itself."""
        reason = str(exc)
        return reason if reason.startswith("party ") else f"party {self.config.party!r} refused: {reason}"

    async def _each_statistic(self, rt, plan: Plan, step, what: str, report: bool = False,
                              phase: str = "secure") -> dict:
        """Run ``step(stat)`` for every statistic concurrently; their results by name.

        Every statistic's MPC work is started (in plan order) before any is awaited, on its
        own branch of the program counter, so the statistics share round trips.
        """
        from jointstats.mpc import runtime as _mpc
        pending = {stat.name: _mpc.start_branch(_traced_step(rt, stat, step(stat), phase))
                   for stat in plan.statistics}
        out = {}
        for stat in plan.statistics:
            out[stat.name] = await rt.guard(_mpc.await_branch(pending[stat.name]),
                                            SECURE_STEP_TIMEOUT, f"{what} {stat.name!r}")
            if report:
                self.progress(f"{stat.name} done")
        return out

    async def run(self) -> dict:
        """Run the whole job for this party (inside an asyncio loop)."""
        from jointstats.mpc import runtime as _mpc
        from jointstats.engine.output import secure_statistic
        cfg = self.config
        plan = self.plan()
        names = [p.name for p in cfg.peers]
        rt = _mpc.make_party_runtime(cfg.index, names, [(p.host, p.port) for p in cfg.peers])
        rt.unread_limit = unread_limit(plan)
        if cfg.tls is not None:
            from jointstats.consortium.tls import configure_tls
            configure_tls(rt, cfg)
        refusal = None
        refused_by = None  # the class of this party's own refusal (the exit status follows it)
        partials = None
        try:
            if self.hooks:
                with trace.span("ledger", hook="before_data"):
                    self.hooks.before_data(plan)
        except JointStatsError as exc:
            refusal, refused_by = self._refusal(exc), type(exc).__name__
        # Connect while the local step runs in a thread (Arrow and numpy release the GIL):
        # the connections are up when the slowest peer's data are read, and no party polls
        # for a peer that is still reading. Nothing about the data is sent before the
        # status exchange below.
        connecting = asyncio.ensure_future(_traced("connect", rt.start(self.connect_timeout)))
        if refusal is None:
            local = asyncio.ensure_future(_in_thread(self.local_step, plan))
            await asyncio.wait({local, connecting}, return_when=asyncio.FIRST_EXCEPTION)
            if not local.done():  # connecting failed (say, the port is taken): say so now
                local.cancel()
                rt.abort()  # stops the heartbeats (and their watchdog thread) too
                raise connecting.exception()
            try:
                partials = local.result()
            except JointStatsError as exc:
                refusal, refused_by = self._refusal(exc), type(exc).__name__
            except BaseException:
                connecting.cancel()
                rt.abort()
                raise
        self.progress("local step done" if refusal is None else "refusing")
        started = time.perf_counter()
        try:
            await connecting
        except BaseException:
            rt.abort()
            raise
        self.progress("connected")
        trace.point("after_connect")
        try:
            status = {"party": cfg.party, "plan": plan.sha256, "job": self.job_id,
                      "refusal": refusal, "min_count_floor": cfg.policy.min_count}
            with trace.span("sync") as sync:
                statuses = await rt.guard(rt.transfer(status, codec=_codec.RECORD), LOCAL_STEP_TIMEOUT,
                                          "the local step")
                sync["bytes_sent"] = rt.bytes_sent()
            # each status is named by its sender's index in mpc.parties, never by what it claims
            for name, st in zip(names, statuses):
                if st["refusal"]:
                    raise PartyError(_codec.refusal_line(name, st["refusal"]),
                                     cause=refused_by if name == cfg.party else None)
            for name, st in zip(names, statuses):
                if st["job"] != self.job_id:
                    raise PlanMismatchError(f"party {name!r} is running job {st['job']!r}, "
                                            f"not {self.job_id!r}")
                if st["plan"] != plan.sha256:
                    theirs = (st["plan"] or "none")[:12]  # a peer may send no plan at all
                    raise PlanMismatchError(f"party {name!r} holds a different plan "
                                            f"({theirs} vs {plan.sha256[:12]}): check "
                                            "that every party runs the same spec and version")
            floors = [st["min_count_floor"] for st in statuses]
            committed = False

            async def commit() -> None:
                """Commit the budget (DP), once, before anything noisy is opened: the results,
                or already a DP inner linked job's noisy linked count (found in review: a job
                that failed after that opening released its reservation, so reruns would have
                averaged the count away for free)."""
                nonlocal committed
                if committed:
                    return
                trace.point("before_commit")
                await rt.guard(rt.transfer("ready", codec=_codec.TEXT), SECURE_STEP_TIMEOUT, "the noise step")
                trace.point("commit")
                if self.hooks:
                    with trace.span("ledger", hook="before_reveal"):
                        self.hooks.before_reveal(plan)  # commit the budget before anything is revealed
                # and open only once every party has committed: an opening needs only t + 1
                # shares, so without this barrier the others could open while one party's
                # commit failed, and its ledger would not have charged the release
                await rt.guard(rt.transfer("committed", codec=_codec.TEXT), SECURE_STEP_TIMEOUT,
                               "the budget commit")
                committed = True
            if plan.vertical:  # link the rows; each party's partials become additive shares
                from jointstats.engine.vertical import secure_partials
                partials = await secure_partials(
                    rt, cfg, self.spec, plan, partials,
                    lambda aw, what, timeout=SECURE_STEP_TIMEOUT: rt.guard(aw, timeout, what),
                    self.metrics, commit if plan.mode == "dp" else None)
                self.progress("linkage done")
            if plan.mode == "dp":
                from jointstats.engine import dp as _dp
                # noise is added to secret values; nothing revealed yet
                noise = _dp.sample_noise(rt, plan)  # all of the job's noise in one batch
                noisy = await self._each_statistic(rt, plan, lambda stat: _dp.prepare(
                    rt, stat, partials[stat.name], effective_min_count(stat, floors),
                    noise.get(stat.name)), "statistic", phase="prepare")
                await commit()
                results = await self._each_statistic(rt, plan, lambda stat: _dp.reveal(
                    rt, stat, noisy[stat.name], effective_min_count(stat, floors)), "revealing",
                    report=True, phase="reveal")
            else:
                if self.hooks:
                    with trace.span("ledger", hook="before_reveal"):
                        self.hooks.before_reveal(plan)
                results = await self._each_statistic(rt, plan, lambda stat: secure_statistic(
                    rt, stat, partials[stat.name], effective_min_count(stat, floors)), "statistic",
                    report=True)
            self.metrics["secure_seconds"] = time.perf_counter() - started
            self.metrics["bytes_sent"] = rt.bytes_sent()
            self.metrics.update(rt.link_metrics())
            with trace.span("close", bytes_sent=rt.bytes_sent()):
                await rt.close()
        except BaseException:
            rt.abort()
            raise
        from jointstats.engine.roles import mpc_block, two_party_scope
        from jointstats.engine.output import privacy_block
        privacy = privacy_block(self.spec, plan)
        if privacy is not None and len(cfg.peers) == 2:
            privacy = {**privacy, "two_party": two_party_scope(cfg.peers)}
        mpc = mpc_block(cfg.peers, plan.mode == "dp")
        if plan.vertical:  # what the linkage shows every party (docs/linkage.md)
            from jointstats.engine.vertical import LINKAGE_SEES
            mpc = {**mpc, "linkage": LINKAGE_SEES}
        return {"protocol": self.spec.name, "job_id": self.job_id, "spec_sha256": self.spec.sha256,
                "parties": names, "mpc": mpc, "privacy": privacy,
                "results": results}


async def _traced(name: str, awaitable, **attrs):
    """``await awaitable`` inside span ``name``."""
    with trace.span(name, **attrs):
        return await awaitable


async def _traced_step(rt, stat, awaitable, phase: str):
    """One statistic's secure step (already started) inside a ``statistic`` span, with the
    bytes this party sent over its window (statistics run at once: windows overlap)."""
    if not trace.active():
        return await awaitable
    sent, cpu = rt.bytes_sent(), time.process_time()
    with trace.span("statistic", stat=stat.name, kind=stat.kind, phase=phase) as attrs:
        try:
            return await awaitable
        finally:
            attrs["bytes"] = rt.bytes_sent() - sent
            attrs["cpu"] = time.process_time() - cpu  # the whole process's (windows overlap)


def _traced_chunks(chunks):
    """The chunks, each one's read (the reader's work to yield it) in a ``read`` span."""
    it = iter(chunks)
    while True:
        cpu = time.process_time()
        with trace.span("read") as attrs:
            try:
                chunk = next(it)
            except StopIteration:
                attrs["cpu"] = time.process_time() - cpu
                return
            attrs["cpu"] = time.process_time() - cpu
        yield chunk


async def _in_thread(fn, *args):
    """``fn(*args)`` in a daemon thread (``jointstats._threads``), awaited."""
    from jointstats._threads import in_daemon_thread
    return await in_daemon_thread(fn, *args, name="jointstats-local-step")


def _peak_rss_kb() -> int:
    """This process's own peak resident memory (VmHWM; ru_maxrss can include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _configure_arrow() -> None:
    """Arrow for a short-lived party process: jemalloc that keeps freed memory, and thread
    pools sized by JOINTSTATS_THREADS (set by the runner for co-located parties).

    Arrow's default allocator (mimalloc) hands freed batches back to the system, so every
    batch of a large file page-faults its memory in anew: on the development VM that
    doubled the time to read 1e6 rows (0.45-1.0 s against 0.22-0.39 s with jemalloc).
    """
    import pyarrow
    try:
        pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
        pyarrow.jemalloc_set_decay_ms(-1)
    except (NotImplementedError, AttributeError):  # a pyarrow built without jemalloc
        pass
    threads = os.environ.get("JOINTSTATS_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        pyarrow.set_cpu_count(int(threads))
        pyarrow.set_io_thread_count(int(threads))


def die_with_parent(parent: int) -> None:
    """Make this process die when ``parent`` dies, even by SIGKILL (no orphan keeps computing)."""
    import signal
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        import threading

        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(137)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(137)


def _stop_on_sigterm(party: str) -> None:
    """SIGTERM (sent by a runner whose other party died) fails the job like any error: the
    failure is recorded in this party's ledger and audit log, and its result file says so."""
    import signal

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
        raise PeerLostError(f"party {party!r} was stopped before the job finished")
    signal.signal(signal.SIGTERM, stop)


def _log_to_stderr() -> None:
    """This party's own log: the ``jointstats`` loggers (INFO and up) on the process's stderr,
    which a node keeps in the job's worker log and a local runner keeps to itself (MPyC's
    root handler may write to stdout, which a party process discards)."""
    logger = logging.getLogger("jointstats")
    if not any(getattr(h, "_jointstats_party", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler._jointstats_party = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _job_description(argv: list[str] | None) -> JobDescription:
    """The job: ``--job JSON`` (or ``--job PATH``), or the flags a person would type."""
    parser = argparse.ArgumentParser(prog="jointstats-party")
    parser.add_argument("--job", help="the JSON job description, or the path of a file holding it")
    parser.add_argument("--config")
    parser.add_argument("--spec")
    parser.add_argument("--job-id")
    parser.add_argument("--out")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    parser.add_argument("--analyst", default="local")
    args = parser.parse_args(argv)
    if args.job is not None:
        try:
            return JobDescription.load(args.job)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"--job: {exc}")
    missing = [flag for flag, value in (("--config", args.config), ("--spec", args.spec),
                                        ("--job-id", args.job_id), ("--out", args.out)) if value is None]
    if missing:
        parser.error(f"--job, or all of {', '.join(missing)}, required")
    return JobDescription(args.config, args.spec, args.job_id, args.out, args.connect_timeout,
                          args.analyst)


def main(argv: list[str] | None = None) -> int:
    """Entry point of a party process; exit status 0 on success, 1 with a one-line reason
    (the worker protocol: ``jointstats.engine.protocol``)."""
    desc = _job_description(argv)
    events = EventWriter.take_stdout()
    trace.install_from_env()
    trace.context["job_id"] = desc.job_id
    trace.point("start")
    _configure_arrow()
    _log_to_stderr()
    out = Path(desc.out)
    name = "?"
    dp = True  # until the spec says otherwise: an unexpected error's text is not passed on
    try:
        config = load_party_config(desc.config)
        name = trace.context["party"] = config.party
        _stop_on_sigterm(name)
        spec = load_spec(desc.spec)
        dp = not spec.exact
        job = PartyJob(config, spec, desc.job_id, connect_timeout=desc.connect_timeout,
                       progress=lambda msg: events.emit("progress", party=name, message=msg))
        from jointstats.engine.roles import job_hooks
        with trace.span("ledger", hook="open"):
            job.hooks = job_hooks(config, spec, desc.job_id, analyst=desc.analyst)
        try:
            try:
                with trace.span("job"):
                    result = asyncio.run(job.run())
            except BaseException as exc:
                with trace.span("ledger", hook="failed"):
                    job.hooks.failed(str(exc) if isinstance(exc, JointStatsError) else type(exc).__name__)
                raise
            with trace.span("ledger", hook="done"):
                job.hooks.done(result)
            from jointstats.engine.report import approvals_of, attest
            agreement = getattr(job.hooks, "agreement", None)
            attestation = attest(config, result, analyst=desc.analyst, purpose=spec.purpose,
                                 agreement=None if agreement is None else agreement.id,
                                 dataset_fingerprint=job.fingerprint,
                                 approvals=approvals_of(config, desc.job_id))
        finally:
            with trace.span("ledger", hook="close"):
                job.hooks.close()
        job.metrics["peak_rss_kb"] = _peak_rss_kb()
        job.metrics["cpu_seconds"] = time.process_time()
        job.metrics["pid"], job.metrics["ppid"] = os.getpid(), os.getppid()
        payload = {"ok": True, "result": result, "attestation": attestation, "metrics": job.metrics}
        status = 0
    except JointStatsError as exc:
        payload = {"ok": False, "error": str(exc), "kind": type(exc).__name__, "party": name,
                   "cause": getattr(exc, "cause", None)}
        status = 1
    except Exception as exc:  # a bug: still one line, naming the party
        # in DP mode its text (which might quote data) goes to this party's own log only
        log.warning("party %r failed", name, exc_info=True)
        detail = "" if dp else f": {exc}"
        payload = {"ok": False, "error": f"party {name!r} failed: {type(exc).__name__}{detail}",
                   "kind": "InternalError", "party": name}
        status = 1
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, out)
    if status:
        print(payload["error"], file=sys.stderr, flush=True)
        events.emit("error", party=name, kind=payload["kind"], message=payload["error"],
                    cause=payload.get("cause"), path=str(out))
    else:
        events.emit("result", party=name, path=str(out))
    trace.point("end")
    return status


def exit_now(status: int) -> None:
    """Leave the process at once, skipping the interpreter's teardown (0.1-0.2 s of freeing
    objects and unloading modules): the result file is written and the state database closed.
    Exit handlers (``atexit``: logging, profilers, coverage) still run."""
    import atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
