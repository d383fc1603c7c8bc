"""The worker protocol (jointstats/engine/protocol.py): a JSON job description in, JSON-lines
events out on the worker's stdout; malformed lines are ignored, error kinds are typed."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import types

import pytest

from jointstats.engine import protocol
from jointstats.engine.protocol import JobDescription, WorkerEvents, parse_event
from jointstats.errors import BudgetError, PartyError, error_class
from tests.conftest import cohort_frame

SPEC = """dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
"""


def test_job_description_round_trip_and_file():
    desc = JobDescription(config="a.yaml", spec="s.yaml", job_id="j1", out="o.json",
                          connect_timeout=5, analyst="ana")
    assert desc.argv()[0] == "--job"
    assert JobDescription.load(desc.argv()[1]) == desc


def test_job_description_from_a_file(tmp_path):
    desc = JobDescription(config="a.yaml", spec="s.yaml", job_id="j1", out="o.json")
    path = tmp_path / "job.json"
    path.write_text(desc.to_json())
    assert JobDescription.load(str(path)) == desc


@pytest.mark.parametrize("text", ['[1, 2]', '{"config": "a"}', '{"config": 1, "spec": "s", "job_id": "j", "out": "o"}',
                                  '{"config": "a", "spec": "s", "job_id": "j", "out": "o", "extra": 1}'])
def test_bad_job_descriptions_are_refused(text):
    with pytest.raises((ValueError, TypeError)):
        JobDescription.from_json(text)


@pytest.mark.parametrize("line", ["", "progress party_a: connected", "not json {", "[1, 2]", "42", "null",
                                  '{"event": "nonsense"}', '{"no_event": 1}',
                                  '{"event": "progress", "party": "a"}',
                                  '{"event": "error", "party": "a", "message": "m"}',
                                  '{"event": "error", "party": "a", "kind": 3, "message": "m"}',
                                  '{"event": "result", "party": "a", "path": null}'])
def test_malformed_event_lines_are_not_events(line):
    assert parse_event(line) is None


def test_events_are_read_and_malformed_lines_set_aside():
    seen = []
    events = WorkerEvents(lambda party, msg: seen.append((party, msg)))
    stream = io.StringIO("\n".join([
        "garbage", json.dumps({"event": "progress", "party": "a", "message": "connected"}),
        "{\"event\": \"progress\"", "",
        json.dumps({"event": "error", "party": "a", "kind": "BudgetError", "message": "over"}),
        json.dumps({"event": "result", "party": "a", "path": "/x"}),  # after the outcome: ignored
    ]) + "\n")
    events.read(stream)
    assert seen == [("a", "connected")] and events.progress == "connected"
    assert events.outcome["event"] == "error" and events.outcome["kind"] == "BudgetError"
    assert events.malformed == ["garbage", "{\"event\": \"progress\""]


def test_event_writer_writes_json_lines():
    out = io.StringIO()
    writer = protocol.EventWriter(out)
    writer.emit("progress", party="a", message="local step done")
    writer.emit("result", party="a", path="/r.json")
    lines = out.getvalue().splitlines()
    assert [parse_event(ln)["event"] for ln in lines] == ["progress", "result"]
    protocol.EventWriter(None).emit("progress", party="a", message="x")  # no channel: nothing


# A stand-in worker: prints junk on its stdout (the events channel) and its stderr, then the
# event its party's name asks for; it never writes a result file.
FAKE_WORKER = r'''
import json, sys
desc = json.loads(sys.argv[sys.argv.index("--job") + 1])
party = desc["config"].rsplit("/", 1)[-1].split(".")[0]
print("progress " + party + ": this is not an event", flush=True)
print("{not json", flush=True)
print(json.dumps([1, 2]), flush=True)
print(json.dumps({"event": "progress", "party": party, "message": "connected"}), flush=True)
print("some log line", file=sys.stderr, flush=True)
kinds = json.loads(sys.argv[-1])
if party in kinds:
    # the message would read as a death; the kind says what it is
    print(json.dumps({"event": "error", "party": party, "kind": kinds[party],
                      "message": f"party {party!r} died (signal 9)", "cause": None,
                      "path": desc["out"]}), flush=True)
    sys.exit(1)
sys.exit(0)
'''


def _fake_start(kinds):
    def start_party(argv, env, **kw):
        return subprocess.Popen([sys.executable, "-c", FAKE_WORKER, *argv, json.dumps(kinds)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return start_party


def test_a_workers_typed_error_reaches_the_runner_as_its_class(consortium, tmp_path, monkeypatch, capsys):
    import jointstats.local.runner as runner
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(10, i) for i in range(3)])
    monkeypatch.setattr(runner, "start_party", _fake_start(
        {"party_a": "PeerLostError", "party_b": "BudgetError", "party_c": "PeerLostError"}))
    with pytest.raises(PartyError) as info:
        runner.run(spec, configs, progress=True)
    assert info.value.cause == "BudgetError" and error_class(info.value.cause) is BudgetError
    assert str(info.value) == "party 'party_b' died (signal 9)"  # its text, never parsed
    assert info.value.exit_code == BudgetError("x").exit_code
    err = capsys.readouterr().err
    assert "  party_a: connected" in err and "not an event" not in err


def test_a_worker_that_sends_no_outcome_died(consortium, tmp_path, monkeypatch):
    import jointstats.local.runner as runner
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(10, i) for i in range(3)])
    monkeypatch.setattr(runner, "start_party", _fake_start({"party_a": "PeerLostError",
                                                            "party_b": "PeerLostError"}))
    with pytest.raises(PartyError, match=r"party 'party_c' died \(exit status 0\)") as info:
        runner.run(spec, configs)
    assert info.value.cause == "PartyDiedError"


def test_node_worker_events_set_the_progress_and_log_malformed_lines(tmp_path):
    from jointstats.node.schedule import Scheduler
    node = types.SimpleNamespace(config=types.SimpleNamespace(party="party_a"))
    job = types.SimpleNamespace(progress=None)
    proc = types.SimpleNamespace(stdout=io.StringIO("\n".join([
        json.dumps({"event": "progress", "party": "party_a", "message": "local step done"}),
        "junk",
        json.dumps({"event": "progress", "party": "party_b", "message": "not ours"}),
        json.dumps({"event": "error", "party": "party_a", "kind": "PlanMismatchError", "message": "m"}),
    ]) + "\n"))
    events = WorkerEvents()
    log = io.StringIO()
    Scheduler._read_events(node, proc, job, events, log)
    assert job.progress == "local step done"
    assert events.outcome["kind"] == "PlanMismatchError"
    assert "(not a worker event, ignored) junk" in log.getvalue()
