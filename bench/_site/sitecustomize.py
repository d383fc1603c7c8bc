"""Loaded by every Python process the benchmark harness starts (it is put on PYTHONPATH).

It does nothing unless JOINTSTATS_BENCH_PROBE (phase timings), JOINTSTATS_BENCH_PROFILE
(cProfile / pyinstrument) or JOINTSTATS_BENCH_PATCH (what-if engine changes) is set;
see bench/_probe.py.
"""
import os

if (os.environ.get("JOINTSTATS_BENCH_PROBE") or os.environ.get("JOINTSTATS_BENCH_PROFILE")
        or os.environ.get("JOINTSTATS_BENCH_PATCH")):
    try:
        import bench._probe as _bench_probe
        _bench_probe.install()
    except Exception as _exc:  # never break the process being measured
        import sys
        print(f"bench probe not installed: {_exc!r}", file=sys.stderr)
