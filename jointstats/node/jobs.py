"""A node's job records and their folders (``<state>.jobs/<job id>/``).

:class:`NodeJob` is what a node keeps about one job (never any data value);
:class:`JobStore` writes each job's submission, spec, status, worker log and result into
its own folder, atomically, so that a crash leaves either the old or the new file.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from jointstats._files import atomic_write

__all__ = ["JOB_ID_RE", "STATUSES", "NodeJob", "JobStore", "iso_time"]

#: Job ids: 1-128 letters, digits, '_', '.', '-' (they name a folder). Always matched with
#: ``fullmatch``: ``match`` with ``$`` would accept a trailing newline.
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
#: Job states as the API reports them.
STATUSES = ("waiting", "queued", "running", "done", "failed", "cancelled")


def iso_time(t: float | None) -> str | None:
    """``t`` (seconds since the epoch) as an ISO 8601 UTC time, or None."""
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
    # governance (jointstats.consortium.agreements, _approval): the agreement admitted under, why the job
    # waits for an officer's approval, and the officers' decisions
    agreement: str | None = None
    approval_reasons: list = field(default_factory=list)
    decisions: list = field(default_factory=list)

    def entry(self) -> tuple:
        """The job as exchanged in the rendezvous: it sorts by (timestamp, job id)."""
        return (self.timestamp, self.job_id, self.analyst, self.spec_sha256)

    def public(self, party: str) -> dict:
        """The job's status object of the API (``jointstats.node.models.Job``)."""
        return {"job_id": self.job_id, "party": party, "status": self.status,
                "analyst": self.analyst, "protocol": self.protocol, "dataset": self.dataset,
                "mode": self.mode, "epsilon": self.epsilon, "spec_sha256": self.spec_sha256,
                "timestamp": self.timestamp, "received": iso_time(self.received),
                "started": iso_time(self.started), "finished": iso_time(self.finished),
                "order": self.order, "progress": self.progress, "error": self.error,
                "error_kind": self.error_kind, "agreement": self.agreement,
                "approval_reasons": self.approval_reasons, "decisions": self.decisions}


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
        atomic_write(d / "spec.yaml", spec_text)
        atomic_write(d / "submission.json", json.dumps(submission, indent=1))
        self.save(job)

    def save(self, job: NodeJob) -> None:
        atomic_write(self.folder(job.job_id) / "job.json", json.dumps(asdict(job), indent=1))

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
