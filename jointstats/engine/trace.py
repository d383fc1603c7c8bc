"""The engine's tracing hook: named spans with their timings, for whoever registers a sink.

A party's job marks its phases with ``span(name, **attrs)`` (a context manager) and its
instants with ``point(name, **attrs)`` (a span of no length). Each finished span is handed to
every registered sink as a :class:`Span` ``(name, start, duration, attrs)``: ``start`` in
seconds since the epoch (``time.time()``), ``duration`` in seconds (``time.perf_counter()``).
A sink may also ask to hear when a span starts (``add_sink(start=...)``, called with the
name and attrs). With no sink registered a span costs one list check.

Sinks are registered in-process (``add_sink``) or named by one environment variable that a
party process reads when it starts (``install_from_env``)::

    JOINTSTATS_TRACE=package.module:function[,other.module:function]

Each function is imported and called with no arguments (it registers its sinks). The
benchmarks (``bench/_probe.py``) and the test suite's fault injection (``tests/faults.py``)
observe the engine this way; the engine knows neither.

A sink must not break the job: one that raises is logged (once per sink) and skipped.
``context`` holds what the process is (``party``, ``job_id``), set by the party process.

Spans of a party job (``jointstats.engine.party``): ``start`` and ``end`` (points), ``plan``
(noise plans), ``local_step`` (read and aggregate; ``read`` for each chunk the reader yields,
attr ``cpu``), ``connect``, ``after_connect`` (a point), ``sync`` (the status exchange, attr
``bytes_sent``), ``statistic`` (each statistic's secure step, attrs ``stat``, ``kind``,
``phase``: ``secure``, ``prepare`` or ``reveal``, ``bytes`` sent and ``cpu`` of the process
over its window: statistics run at once, windows overlap), ``before_commit`` and ``commit``
(points, DP jobs), ``ledger`` (each ledger hook, attr ``hook``), ``close`` (attr
``bytes_sent``) and ``job`` (the whole run).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

__all__ = ["Span", "ENV", "add_sink", "remove_sink", "span", "point", "install_from_env",
           "context", "active"]

#: The one environment variable naming sinks to install at a party process's start.
ENV = "JOINTSTATS_TRACE"

log = logging.getLogger("jointstats.trace")


class Span(NamedTuple):
    """One finished span: its name, start (epoch seconds), duration (seconds) and attrs."""
    name: str
    start: float
    duration: float
    attrs: dict


class _Sink(NamedTuple):
    end: Callable[[Span], Any] | None
    start: Callable[[str, dict], Any] | None


_sinks: list[_Sink] = []
_complained: set[int] = set()
_installed: set[str] = set()
#: What this process is (set by the party process): ``party``, ``job_id``.
context: dict = {}


def add_sink(end: Callable[[Span], Any] | None = None,
             start: Callable[[str, dict], Any] | None = None) -> object:
    """Register a sink: ``end(span)`` for each finished span, ``start(name, attrs)`` as each
    span starts. Returns a token for ``remove_sink``."""
    sink = _Sink(end, start)
    _sinks.append(sink)
    return sink


def remove_sink(token: object) -> None:
    """Unregister a sink returned by ``add_sink`` (no error if it is not registered)."""
    try:
        _sinks.remove(token)  # type: ignore[arg-type]
    except ValueError:
        pass


def active() -> bool:
    """Whether any sink is registered."""
    return bool(_sinks)


def _call(sink: _Sink, fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - an observer never breaks the job
        if id(sink) not in _complained:
            _complained.add(id(sink))
            log.warning("trace sink %r failed (ignored from now on for its errors): %s: %s",
                        fn, type(exc).__name__, exc)


@contextlib.contextmanager
def span(name: str, **attrs) -> Iterator[dict]:
    """Time the block as span ``name``; yields its attrs (the block may add to them)."""
    if not _sinks:
        yield attrs
        return
    for sink in list(_sinks):
        if sink.start is not None:
            _call(sink, sink.start, name, attrs)
    wall, started = time.time(), time.perf_counter()
    try:
        yield attrs
    finally:
        done = Span(name, wall, time.perf_counter() - started, attrs)
        for sink in list(_sinks):
            if sink.end is not None:
                _call(sink, sink.end, done)


def point(name: str, **attrs) -> None:
    """An instant: a span of (almost) no length."""
    if _sinks:
        with span(name, **attrs):
            pass


def install_from_env(environ: dict | None = None) -> list[str]:
    """Import and call each ``module:function`` named by JOINTSTATS_TRACE (once per process);
    the names installed. One that cannot be installed is reported on stderr and skipped."""
    value = (os.environ if environ is None else environ).get(ENV, "")
    done = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item in _installed:
            continue
        _installed.add(item)
        try:
            module, _, function = item.partition(":")
            getattr(importlib.import_module(module), function or "install")()
            done.append(item)
        except Exception as exc:  # noqa: BLE001 - an observer never breaks the job
            import sys
            print(f"jointstats: trace sink {item!r} not installed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
    return done

