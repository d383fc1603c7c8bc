"""Test-only fault injection into party processes, through the engine's tracing hook.

A party process installs the sinks named by JOINTSTATS_TRACE when it starts
(``jointstats.engine.trace``); ``arm`` names this module's ``install`` there, and
JOINTSTATS_TEST_FAULT says where to strike:

* ``party:point``: that party dies abruptly (exit status 137) as span ``point`` starts;
* ``party:point:pause=S``: it pauses S seconds there instead.

Points are the engine's span names (``local_step``, ``after_connect``, ``before_commit``,
``commit``, ...). Either way a line ``fault party:point`` goes to the party's stderr (its
log) first, to say when. Production modules know none of this.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from jointstats.engine import trace

#: The variable naming the fault (read as each span starts, in the party process).
VARIABLE = "JOINTSTATS_TEST_FAULT"
SINK = "tests.faults:install"
REPO = str(Path(__file__).resolve().parents[1])


def parse(fault: str) -> tuple[str, str, float | None] | None:
    """(party, point, pause seconds or None for a kill), or None if no fault is set."""
    parts = fault.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    pause = None
    if len(parts) > 2:
        if not parts[2].startswith("pause="):
            raise ValueError(f"{VARIABLE}: expected party:point[:pause=S], got {fault!r}")
        pause = float(parts[2][len("pause="):])
    return parts[0], parts[1], pause


def strike(name: str, attrs: dict | None = None, *, party: str | None = None,
           fault: str | None = None, exit=os._exit, sleep=time.sleep) -> None:
    """The span-start sink: act if span ``name`` of this party is the armed fault."""
    armed = parse(os.environ.get(VARIABLE, "") if fault is None else fault)
    party = trace.context.get("party") if party is None else party
    if armed is None or (armed[0], armed[1]) != (party, name):
        return
    print(f"fault {party}:{name}", file=sys.stderr, flush=True)  # when, for the fault table
    if armed[2] is None:
        exit(137)
    else:
        sleep(armed[2])


def install() -> None:
    """Register the fault sink in this process (named by JOINTSTATS_TRACE)."""
    trace.add_sink(start=strike)


def environment(fault: str, env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the fault armed for the parties it starts."""
    env = dict(os.environ if env is None else env)
    env[VARIABLE] = fault
    sinks = [s for s in env.get(trace.ENV, "").split(",") if s and s != SINK]
    env[trace.ENV] = ",".join([*sinks, SINK])
    path = env.get("PYTHONPATH", "")
    if REPO not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, path]))
    return env


def arm(monkeypatch, fault: str) -> None:
    """Arm ``fault`` for every party process started while ``monkeypatch`` is in force."""
    for key, value in environment(fault).items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)


def disarm(monkeypatch) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
