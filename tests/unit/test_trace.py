"""The engine's tracing hook (jointstats/engine/trace.py) and the test-only fault sink
(tests/faults.py) built on it."""
from __future__ import annotations

import logging
import os
import time

import pytest

from jointstats.engine import trace
from tests import faults

INSTALLED = []


def install_for_test():  # named by JOINTSTATS_TRACE below
    INSTALLED.append(True)


@pytest.fixture
def sinks():
    tokens = []

    def add(*a, **kw):
        tokens.append(trace.add_sink(*a, **kw))
        return tokens[-1]
    yield add
    for token in tokens:
        trace.remove_sink(token)


def test_no_sink_no_cost():
    assert not trace.active()
    with trace.span("x", a=1) as attrs:
        attrs["b"] = 2
    trace.point("y")


def test_spans_are_recorded_in_order_with_durations(sinks):
    ended, started = [], []
    sinks(ended.append, lambda name, attrs: started.append(name))
    with trace.span("outer", stat="m") as attrs:
        time.sleep(0.02)
        with trace.span("inner"):
            time.sleep(0.01)
        attrs["bytes"] = 7
    trace.point("after")
    assert started == ["outer", "inner", "after"]
    assert [s.name for s in ended] == ["inner", "outer", "after"]
    inner, outer, after = ended
    assert outer.duration >= 0.03 and inner.duration >= 0.01 and after.duration < 0.01
    assert outer.start <= inner.start <= after.start
    assert outer.attrs == {"stat": "m", "bytes": 7}
    assert outer[:3] == ("outer", outer.start, outer.duration)  # (name, start, duration)


def test_a_span_ends_when_its_block_raises(sinks):
    ended = []
    sinks(ended.append)
    with pytest.raises(KeyError):
        with trace.span("failing"):
            raise KeyError("x")
    assert [s.name for s in ended] == ["failing"]


def test_a_sink_that_raises_does_not_break_the_job(sinks, caplog):
    ended = []

    def bad_end(span):
        raise RuntimeError("sink bug")

    def bad_start(name, attrs):
        raise ValueError("start bug")
    sinks(bad_end, bad_start)
    sinks(ended.append)
    with caplog.at_level(logging.WARNING, logger="jointstats.trace"):
        for _ in range(3):
            with trace.span("work") as attrs:
                attrs["done"] = True
    assert len(ended) == 3 and all(s.attrs == {"done": True} for s in ended)
    assert 1 <= len([r for r in caplog.records if "trace sink" in r.getMessage()]) <= 2  # once per sink


def test_sinks_named_by_the_environment_are_installed_once(capsys):
    value = "tests.unit.test_trace:install_for_test, no.such.module:install"
    done = trace.install_from_env({trace.ENV: value})
    assert done == ["tests.unit.test_trace:install_for_test"] and INSTALLED == [True]
    assert "no.such.module:install" in capsys.readouterr().err
    assert trace.install_from_env({trace.ENV: value}) == [] and INSTALLED == [True]


def test_remove_sink(sinks):
    ended = []
    token = trace.add_sink(ended.append)
    trace.remove_sink(token)
    trace.remove_sink(token)  # twice: no error
    trace.point("x")
    assert ended == []


# ----------------------------------------------------------------------------- the fault sink

def test_fault_sink_kills_at_the_named_span_of_the_named_party(capsys):
    exits, sleeps = [], []
    kw = dict(exit=exits.append, sleep=sleeps.append)
    faults.strike("local_step", {}, party="party_b", fault="party_b:after_connect", **kw)
    faults.strike("after_connect", {}, party="party_a", fault="party_b:after_connect", **kw)
    faults.strike("after_connect", {}, party="party_b", fault="", **kw)
    assert exits == [] and sleeps == [] and capsys.readouterr().err == ""
    faults.strike("after_connect", {}, party="party_b", fault="party_b:after_connect", **kw)
    assert exits == [137] and capsys.readouterr().err == "fault party_b:after_connect\n"
    faults.strike("local_step", {}, party="party_b", fault="party_b:local_step:pause=2.5", **kw)
    assert sleeps == [2.5] and exits == [137]
    assert capsys.readouterr().err == "fault party_b:local_step\n"


def test_fault_sink_reads_the_party_from_the_trace_context(monkeypatch, sinks):
    exits = []
    monkeypatch.setenv(faults.VARIABLE, "party_c:commit")
    monkeypatch.setitem(trace.context, "party", "party_c")
    sinks(start=lambda name, attrs: faults.strike(name, attrs, exit=exits.append))
    trace.point("before_commit")
    trace.point("commit")
    assert exits == [137]


def test_fault_environment_names_the_sink_for_the_party_processes():
    env = faults.environment("party_a:local_step", {"JOINTSTATS_TRACE": "bench._probe:install"})
    assert env[faults.VARIABLE] == "party_a:local_step"
    assert env[trace.ENV] == "bench._probe:install,tests.faults:install"
    assert faults.REPO in env["PYTHONPATH"].split(os.pathsep)
    assert faults.environment("x:y", env)[trace.ENV] == env[trace.ENV]  # not twice
    with pytest.raises(ValueError):
        faults.parse("a:b:sleep=3")
