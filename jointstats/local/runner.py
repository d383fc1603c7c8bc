"""Run one job over locally started party processes (one OS process per party)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Mapping

from jointstats.engine.protocol import JobDescription, WorkerEvents
from jointstats.local.launch import THREAD_VARIABLES, start_party
from jointstats.consortium.config import PartyConfig, check_consortium, load_party_config
from jointstats.errors import (DataError, JointStatsError, PartyDiedError, PartyError, PeerLostError,
                     SpecError, error_class)
from jointstats.plan.sealed import make_plan
from jointstats.consortium.policy import check_job
from jointstats.result import Result
from jointstats.plan.spec import Spec, load_spec, parse_spec

#: Seconds a whole local job may take before every party process is stopped.
JOB_TIMEOUT = 4 * 3600.0
#: Seconds the other parties get to fail on their own once one party process has failed.
STOP_GRACE = 2.0


def _as_spec(spec: Spec | str | Path | Mapping) -> Spec:
    """A Spec from a Spec, a YAML path or text, or the spec as Python data (a mapping)."""
    if isinstance(spec, Mapping):
        return parse_spec(spec)
    return spec if isinstance(spec, Spec) else load_spec(spec)


def _as_configs(parties: list) -> list[PartyConfig]:
    configs = [p if isinstance(p, PartyConfig) else load_party_config(p) for p in parties]
    return check_consortium(configs)


def validate(spec: Spec | str | Path, parties: list | None = None, analyst: str = "local") -> str:
    """Check a spec (and, given party configs, its fit to their policies and data headers).

    Computes nothing and spends no budget. Returns the plan's description, followed by one
    line per party saying which data-use agreement covers the job for ``analyst`` (PolicyError
    naming every party that none covers, and why).
    """
    from jointstats.consortium.agreements import explain
    from jointstats.engine.sources import open_source
    spec = _as_spec(spec)
    names = ["party_1", "party_2", "party_3"]
    configs: list[PartyConfig] = []
    if parties:
        configs = _as_configs(parties)
        names = [p.name for p in configs[0].peers]
    from jointstats.engine.output import add_noise_plans
    plan = add_noise_plans(spec, make_plan(spec, names))
    verdicts = [explain(cfg, spec, analyst) for cfg in configs]
    uncovered = [v for v in verdicts if "NOT covered" in v]
    if uncovered:
        from jointstats.errors import PolicyError
        raise PolicyError("; ".join(uncovered))
    owners = None
    if spec.vertical and configs:  # linked data: who holds which column (each exactly one)
        from jointstats.plan.sealed import assign_columns
        owners = assign_columns(spec, {c.party: c.held_columns(spec.dataset) or ()
                                       for c in configs if not c.compute_only})
        if spec.link.join == "left" and spec.link.base in [c.party for c in configs if c.compute_only]:
            raise SpecError(f"link.base: {spec.link.base!r} holds no data (role: compute); a left "
                            "join keeps the records of a data holder")
    for cfg in configs:
        check_job(cfg, spec, plan, analyst)
        if cfg.compute_only:  # holds no data: nothing to read
            continue
        src = open_source(cfg.dataset_source(spec.dataset), cfg.base_dir, cfg.dataset_options(spec.dataset))
        header = src.columns()
        getattr(src, "close", lambda: None)()
        wanted = ([spec.link.key] + [c for c, p in owners.items() if p == cfg.party] if owners is not None
                  else [c.name for c in spec.schema])
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataError(f"party {cfg.party!r}: column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))} missing from its data")
    compute = [p.name for p in configs[0].peers if p.role == "compute"] if configs else []
    governed = [v for cfg, v in zip(configs, verdicts) if cfg.policy.governance.enabled]
    return plan.describe(compute, owners) + ("\n" + "\n".join(governed) if governed else "")


def run(spec: Spec | str | Path, parties: list, *, out: str | Path | None = None,
        job_id: str | None = None, progress: bool = False, timeout: float = JOB_TIMEOUT,
        metrics: dict | None = None) -> Result:
    """Run ``spec`` over the given party configs, one OS process per party; return the Result.

    Every party process reads only its own config and data and enforces its own policy.
    Raises PartyError naming the party that refused, failed or died.
    """
    spec = _as_spec(spec)
    configs = _as_configs(parties)
    job_id = job_id or uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="jointstats-") as tmp:
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(spec.text)
        procs = []
        env = party_environment(len(configs))
        for cfg in configs:
            out_file = Path(tmp) / f"{cfg.party}.json"
            desc = JobDescription(config=str(cfg.path), spec=str(spec_path), job_id=job_id,
                                  out=str(out_file))
            procs.append((cfg, start_party(desc.argv(), env), out_file))
        deadline = time.monotonic() + timeout
        stderr = {cfg.party: [] for cfg in configs}
        events = {cfg.party: WorkerEvents(_show_progress if progress else None) for cfg in configs}
        readers = [threading.Thread(target=_read_stderr, args=(proc, stderr[cfg.party]), daemon=True)
                   for cfg, proc, _ in procs]
        readers += [threading.Thread(target=events[cfg.party].read, args=(proc.stdout,), daemon=True)
                    for cfg, proc, _ in procs]
        for reader in readers:
            reader.start()
        try:
            _wait_for_parties(procs, deadline, timeout)
        finally:
            for _, proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for reader in readers:
                reader.join(timeout=5)
        payloads = {}
        errors = []
        for cfg, proc, out_file in procs:
            outcome = _outcome(events[cfg.party], out_file)
            if outcome is not None and outcome["event"] == "error":
                # the class of the error where it arose (a refusal's, at the refusing party)
                errors.append((cfg.party, outcome["message"], outcome.get("cause") or outcome["kind"]))
            elif outcome is not None and out_file.exists():
                payloads[cfg.party] = json.loads(out_file.read_text())
            else:
                how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
                # its stderr is the party's own log; in DP mode it may count rows, so none of
                # it goes into the error
                tail = stderr[cfg.party]
                detail = f": {tail[-1]}" if tail and spec.exact else ""
                errors.append((cfg.party, f"party {cfg.party!r} died ({how}){detail}", "PartyDiedError"))
        if errors:
            message, kind = _root_error(errors)
            raise PartyError(message, cause=kind)
    results = [payloads[cfg.party]["result"] for cfg in configs]
    for cfg, res in zip(configs[1:], results[1:]):
        if res != results[0]:
            raise PartyError(f"party {cfg.party!r} revealed a different result from "
                             f"{configs[0].party!r}; the job is void")
    attestations = {cfg.party: payloads[cfg.party].get("attestation") for cfg in configs}
    if all(attestations.values()):  # every party signed its release (jointstats.engine.report)
        from jointstats.engine.report import merge
        result = Result.from_dict(merge(results[0], attestations))
    else:
        result = Result.from_dict(results[0])
    if metrics is not None:
        metrics.update({cfg.party: payloads[cfg.party].get("metrics", {}) for cfg in configs})
    if out is not None:
        Path(out).write_text(result.to_json())
    return result


def _wait_for_parties(procs: list, deadline: float, timeout: float) -> None:
    """Wait until every party process has ended.

    Once one has failed, the others get STOP_GRACE seconds to fail on their own (a refusal
    or a lost connection reaches them at once, and their own reasons name the culprit);
    then they are sent SIGTERM, which each party records as a failure in its ledger and
    audit log, and SIGKILL STOP_GRACE seconds later. Without this, a party that died
    before it had connected would keep the others waiting for their connect timeout.
    """
    first_failure = None
    terminated = None
    while True:
        running = [(cfg, proc) for cfg, proc, _ in procs if proc.poll() is None]
        if not running:
            return
        now = time.monotonic()
        if now > deadline:
            raise PartyError(f"party {running[0][0].party!r} did not finish within {timeout:.0f} s")
        if first_failure is None and any(proc.returncode not in (None, 0) for _, proc, _ in procs):
            first_failure = now
        if first_failure is not None and terminated is None and now - first_failure > STOP_GRACE:
            terminated = now
            for _, proc in running:
                proc.terminate()
        if terminated is not None and now - terminated > STOP_GRACE:
            for _, proc in running:
                proc.kill()
        try:
            running[0][1].wait(timeout=0.05 if first_failure is None else 0.01)
        except subprocess.TimeoutExpired:
            pass


def party_environment(local_parties: int) -> dict[str, str]:
    """Environment of party processes that share this machine: each gets its share of the cores.

    Left alone, BLAS and Arrow each start a thread per core in every party process, and
    three processes on two cores spend more time switching threads than computing (the local
    step of 3 x 1e6 rows went from 2.9 s to 1.6 s with one thread each). Variables the
    user has set are kept.
    """
    threads = str(max(1, (os.cpu_count() or 1) // max(local_parties, 1)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in THREAD_VARIABLES + ("JOINTSTATS_THREADS",):
        env.setdefault(var, threads)
    return env


def _rank(kind: str | None) -> int:
    """How well an error of this kind explains a failed job (lower: better), by class only.

    A party that died; then an error of the party's own (a refusal, a spec, config or data
    error, a malformed plan); then a bug; then one party's report of another's failure
    (PartyError); last the consequences of a failure elsewhere (PeerLostError: a peer
    disconnected, never connected, or this party was stopped)."""
    cls = error_class(kind)
    if cls is None:
        return 2  # InternalError (a bug at that party) or not known
    if issubclass(cls, PartyDiedError):
        return 0
    if issubclass(cls, PeerLostError):
        return 4
    if issubclass(cls, PartyError):
        return 3
    return 1


def _root_error(errors: list[tuple[str, str, str | None]]) -> tuple[str, str | None]:
    """The most informative one-line reason among every party's (party, error, kind), and its
    kind (the error class name at that party)."""
    _, msg, kind = min(errors, key=lambda e: _rank(e[2]))  # min keeps the first of a rank
    return msg, kind


def _root_cause(errors: list[tuple]) -> str:
    """The most informative one-line reason among (party, error[, kind]) triples."""
    return _root_error([(e[0], e[1], e[2] if len(e) > 2 else None) for e in errors])[0]


def _outcome(events: WorkerEvents, out_file: Path) -> dict | None:
    """A party's terminal event (``jointstats.engine.protocol``): ``result`` or ``error``, or
    None if it sent neither (it died). A result file without an event (the process was killed
    between writing it and reporting it) still counts, read as the event it would have sent."""
    if events.outcome is not None:
        return events.outcome
    if not out_file.exists():
        return None
    payload = json.loads(out_file.read_text())
    if payload.get("ok"):
        return {"event": "result", "party": payload.get("party"), "path": str(out_file)}
    return {"event": "error", "party": payload.get("party"), "kind": payload.get("kind") or "PartyError",
            "message": payload.get("error") or "failed", "cause": payload.get("cause")}


def _show_progress(party: str, message: str) -> None:
    print(f"  {party}: {message}", file=sys.stderr, flush=True)


def _read_stderr(proc, lines: list[str]) -> None:
    """Collect a party process's stderr (its own log; never parsed)."""
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
