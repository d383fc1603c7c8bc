"""A real job's spans (jointstats/engine/trace.py), seen by a sink that JOINTSTATS_TRACE names
in every party process (forked from the launcher or exec'd), as the benchmarks see them."""
from __future__ import annotations

import json
import os

import pytest

from jointstats import run
from jointstats.engine import trace
from tests import faults
from tests.conftest import cohort_frame

SPEC = """dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
statistics:
  n: {kind: count}
  m: {kind: mean, column: age}
"""


def install():  # in the party process: every finished span, one JSON line per span
    folder = os.environ["JS_TEST_SPANS"]

    def write(span):
        path = os.path.join(folder, f"{trace.context.get('party', 'unknown')}.jsonl")
        with open(path, "a") as fh:
            fh.write(json.dumps(span._asdict()) + "\n")
    trace.add_sink(write)


@pytest.mark.parametrize("launch", ["fork", "exec"])
def test_a_jobs_spans_reach_a_sink_named_by_the_environment(consortium, tmp_path, monkeypatch, launch):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    configs = consortium([cohort_frame(30, i) for i in range(3)])
    folder = tmp_path / "spans"
    folder.mkdir()
    env = faults.environment("", {})  # the repository on the party processes' path
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])
    monkeypatch.setenv(trace.ENV, "tests.multiparty.test_trace_job:install")
    monkeypatch.setenv("JS_TEST_SPANS", str(folder))
    monkeypatch.setenv("JOINTSTATS_LAUNCH", launch)
    assert run(spec, configs).results["n"]["value"] == 90
    for party in ("party_a", "party_b", "party_c"):
        spans = [json.loads(ln) for ln in (folder / f"{party}.jsonl").read_text().splitlines()]
        names = [s["name"] for s in spans]
        for earlier, later in [("plan", "local_step"), ("local_step", "sync"), ("connect", "after_connect"),
                               ("after_connect", "sync"), ("sync", "statistic"),
                               ("statistic", "close"), ("close", "job"), ("job", "end")]:
            assert names.index(earlier) < names.index(later), (earlier, later, names)
        assert "read" in names
        stats = [s for s in spans if s["name"] == "statistic"]
        assert sorted(s["attrs"]["stat"] for s in stats) == ["m", "n"]
        assert all(s["attrs"]["phase"] == "secure" and s["attrs"]["bytes"] > 0 for s in stats)
        assert all(s["duration"] >= 0 and s["start"] > 0 for s in spans)
        job = next(s for s in spans if s["name"] == "job")
        local = next(s for s in spans if s["name"] == "local_step")
        assert job["start"] <= local["start"] and local["duration"] <= job["duration"]
