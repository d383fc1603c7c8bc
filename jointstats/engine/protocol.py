"""The worker protocol between a party process (``jointstats.engine.party``) and its parent
(``jointstats.local.runner`` or a node's scheduler, ``jointstats.node.schedule``).

* The parent hands the worker a JSON job description (``JobDescription``) as one argument,
  ``--job '{"config": ...}'`` (or ``--job PATH`` of a file holding it).
* The worker reports on its stdout, which is reserved for events: one JSON object a line,
  ``{"event": "progress", "party": P, "message": M}`` any number of times, then exactly one of
  ``{"event": "result", "party": P, "path": OUT}`` or ``{"event": "error", "party": P,
  "kind": K, "message": M, "cause": C, "path": OUT}``, where ``kind`` (and ``cause``, the class
  of a refusal where it arose) is a class name of ``jointstats.errors`` (``InternalError`` for
  a bug), never inferred from the message. Its stderr is its own log, never parsed.
* The result file at ``out`` is written before the terminal event.

A line that is not such an event (not JSON, not an object, no known ``event``) is handed to
the parent's ``malformed`` callback and otherwise ignored: a worker cannot make its parent
fail by what it prints.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import IO, Callable, Iterable

__all__ = ["JobDescription", "EVENTS", "EventWriter", "parse_event", "read_events", "WorkerEvents"]

#: The events a worker may send, with the fields each must carry (all strings).
EVENTS = {"progress": ("party", "message"), "result": ("party", "path"),
          "error": ("party", "kind", "message")}


@dataclasses.dataclass(frozen=True)
class JobDescription:
    """What one party process is to do."""
    config: str
    spec: str
    job_id: str
    out: str
    connect_timeout: float = 60.0
    analyst: str = "local"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def argv(self) -> list[str]:
        """The worker's arguments: the description as one JSON argument."""
        return ["--job", self.to_json()]

    @classmethod
    def from_json(cls, text: str) -> "JobDescription":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a job description is a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown field(s) in the job description: {', '.join(unknown)}")
        desc = cls(**data)
        for name in ("config", "spec", "job_id", "out", "analyst"):
            if not isinstance(getattr(desc, name), str):
                raise ValueError(f"job description: {name} must be a string")
        if not isinstance(desc.connect_timeout, (int, float)) or isinstance(desc.connect_timeout, bool):
            raise ValueError("job description: connect_timeout must be a number")
        return desc

    @classmethod
    def load(cls, arg: str) -> "JobDescription":
        """From ``--job``'s value: the JSON text itself, or the path of a file holding it."""
        return cls.from_json(arg if arg.lstrip().startswith("{") else Path(arg).read_text())


class EventWriter:
    """The worker's side: JSON lines on the events channel (a file object), one at a time."""

    def __init__(self, stream: IO[str] | None):
        self.stream = stream
        self.lock = threading.Lock()

    @classmethod
    def take_stdout(cls) -> "EventWriter":
        """Reserve this process's stdout for events: the events go to (a duplicate of) fd 1,
        and fd 1 itself then points at stderr, so that nothing else printed reaches the
        channel (MPyC's or a library's prints land in the process's log)."""
        import sys
        try:
            sys.stdout.flush()
            fd = os.dup(1)
            os.dup2(2, 1)
        except OSError:  # no stdout at all
            return cls(None)
        return cls(os.fdopen(fd, "w", buffering=1, encoding="utf-8"))

    def emit(self, event: str, **fields) -> None:
        if self.stream is None:
            return
        line = json.dumps({"event": event, **fields}) + "\n"
        with self.lock:
            try:
                self.stream.write(line)
                self.stream.flush()
            except (OSError, ValueError):  # the parent stopped listening: the result file stays
                pass


def parse_event(line: str) -> dict | None:
    """The event on one line, or None if the line is not a well-formed event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    needed = EVENTS.get(event.get("event"))  # type: ignore[arg-type]
    if needed is None or not all(isinstance(event.get(f), str) for f in needed):
        return None
    return event


def read_events(stream: Iterable[str], handle: Callable[[dict], None],
                malformed: Callable[[str], None] | None = None) -> None:
    """Read a worker's events until its channel closes: ``handle(event)`` for each well-formed
    one, ``malformed(line)`` for anything else."""
    for line in stream:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        event = parse_event(line)
        if event is not None:
            handle(event)
        elif malformed is not None:
            malformed(line)


class WorkerEvents:
    """The parent's record of one worker's events: its latest progress, its terminal event."""

    def __init__(self, on_progress: Callable[[str, str], None] | None = None):
        self.on_progress = on_progress
        self.progress: str | None = None
        self.outcome: dict | None = None  # the result or error event
        self.malformed: list[str] = []

    def handle(self, event: dict) -> None:
        if event["event"] == "progress":
            self.progress = event["message"]
            if self.on_progress is not None:
                self.on_progress(event["party"], event["message"])
        elif self.outcome is None:
            self.outcome = event

    def bad_line(self, line: str) -> None:
        if len(self.malformed) < 100:
            self.malformed.append(line[:500])

    def read(self, stream: Iterable[str]) -> None:
        read_events(stream, self.handle, self.bad_line)
