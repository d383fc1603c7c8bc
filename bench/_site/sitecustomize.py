"""Loaded by every Python process the benchmark harness starts (it is put on PYTHONPATH).

It does nothing unless JOINTSTATS_BENCH_PROBE (phase timings), JOINTSTATS_BENCH_PROFILE
(cProfile / pyinstrument) or JOINTSTATS_BENCH_PATCH (what-if engine changes) is set. The
timings themselves come through the engine's tracing hook (JOINTSTATS_TRACE=bench._probe:install,
installed by each party process); here, at interpreter start, only what must start with the
interpreter: its start time, the profiler and the what-ifs (see bench/_probe.py).
"""
import os

if (os.environ.get("JOINTSTATS_BENCH_PROBE") or os.environ.get("JOINTSTATS_BENCH_PROFILE")
        or os.environ.get("JOINTSTATS_BENCH_PATCH")):
    try:
        import bench._probe as _bench_probe
        _bench_probe.install_patches()
    except Exception as _exc:  # never break the process being measured
        import sys
        print(f"bench probe not installed: {_exc!r}", file=sys.stderr)
