"""The benchmark harness runs its smallest case end to end (so it cannot rot unnoticed).

``python -m bench --smallest``: the headline job (the demo's statistics plus a regression on
10 features) over 3 real party processes on loopback with 200 rows each, and the pooled
plaintext baseline on the same files. No timing is asserted, only that every figure is recorded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_smallest_case(tmp_path):
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "JOINTSTATS_BENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "bench", "--smallest", "--out", str(out), "--plot",
                           str(tmp_path / "plot.png"), "-q"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["system"] for r in records} == {"jointstats", "pooled-numpy"}
    for r in records:
        assert "error" not in r, r.get("error")
        assert r["wall_seconds"] > 0
        machine = r["machine"]
        assert machine["cores"] >= 1 and machine["cpu_model"] and machine["mpyc"] and machine["numpy"]
    ours = next(r for r in records if r["system"] == "jointstats")
    assert len(ours["per_party"]) == 3
    for p in ours["per_party"]:
        for key in ("cpu_seconds", "bytes_sent", "peak_rss_kb", "local_seconds", "secure_seconds",
                    "import_seconds", "read_seconds"):
            assert p[key] is not None and p[key] >= 0, key
        assert p["bytes_sent"] > 0 and p["peak_rss_kb"] > 0
        assert {s["name"] for s in p["stats"]} >= {"n", "model", "smoking", "corr"}
    # the harness compares like with like: same data, same answer
    pooled = next(r for r in records if r["system"] == "pooled-numpy")
    for a, b in zip(ours["check"]["coefficients"], pooled["check"]["coefficients"]):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert "| Target |" in proc.stdout  # the markdown report was produced


@pytest.mark.slow
def test_report_plot_from_records(tmp_path):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(REPO))
    try:
        from bench import report
    finally:
        sys.path.remove(str(REPO))
    machine = {"cpu_model": "cpu", "cores": 2, "python": "3", "mpyc": "0.11", "git": {"commit": "x", "dirty": False},
               "mem_gb": 1, "os": "os", "numpy": "2", "pyarrow": "1", "gmpy2": "2"}
    recs = []
    for n, ours, pooled, rows in ((10_000, 1.0, 0.01, 5.0), (100_000, 1.1, 0.1, 50.0)):
        base = {"run_id": "r", "suite": "quick", "time": "2026-01-01T00:00:00", "bench": "rows", "machine": machine}
        params = {"spec": "regression", "rows_per_party": n, "parties": 3, "features": 10, "mode": "exact"}
        recs.append({**base, "system": "jointstats", "params": params, "wall_seconds": ours,
                     "summary": {"secure_seconds": 0.4, "secure_bytes": 1000}, "secure_seconds_all": [0.4]})
        recs.append({**base, "system": "pooled-numpy", "params": params, "wall_seconds": pooled * 3,
                     "load_compute_seconds": pooled})
        recs.append({**base, "system": "mpyc-rows", "params": params, "wall_seconds": rows,
                     "summary": {"secure_seconds": rows - 1}, "extrapolated": n > 10_000})
    text = report.markdown(recs)
    assert "| 1e5 | 1.1 s" in text and "(extrapolated)" in text
    png = report.plot(recs, tmp_path / "scaling.png")
    assert png is not None and png.stat().st_size > 1000


@pytest.mark.slow
def test_repeated_secure_steps_are_recorded_and_agree(tmp_path, monkeypatch):
    # the flat benchmark runs each secure step several times inside one job (bench/_probe.py):
    # every party must repeat in step, every run recorded, the answer unchanged
    monkeypatch.setenv("JOINTSTATS_BENCH_CACHE", str(tmp_path / "cache"))
    sys.path.insert(0, str(REPO))
    try:
        from bench import data, jobs, specs
    finally:
        sys.path.remove(str(REPO))
    text, kind = specs.build("regression", d=3)
    files = data.party_files(kind, 300, 3, d=3, k=2)
    once = jobs.run_job(text, files)
    thrice = jobs.run_job(text, files, secure_repeats=3)
    assert len(jobs.summarize(thrice)["secure_repeat_seconds"]) == 3
    assert all(t > 0 for t in jobs.summarize(thrice)["secure_repeat_seconds"])
    for p in thrice["parties"]:
        assert len(p["secure_repeat_seconds"]) == 3 and [s["repeat"] for s in p["stats"]] == [0]
    assert once["result"]["results"]["model"] == thrice["result"]["results"]["model"]
