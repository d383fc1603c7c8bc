"""DP cost: one job (regression on 10 features + crosstab + two means, 3 parties x 1e5 rows)
in exact mode and in DP mode (discrete Laplace, delta 0; discrete Gaussian, delta 1e-6), each
DP mode with a cold noise-plan cache (an empty cache directory per job) and a warm one (the
job's plans already cached), repeats interleaved, medians and the ratio DP / exact.

``python -m bench --only dpcost`` (records in the results file, a table on stderr), or
``python -m bench.dpcost [--rows N] [--repeats R]`` for this benchmark alone.

Besides wall times, each record carries the slowest party's phases: ``plan_seconds`` (the
party's plan, noise plans included), ``secure_seconds`` (secure step: for DP the noise
sampling inside the MPC plus the reveal) and the local step; and, measured in this process
alone (no other party competing for the cores), the time to build the job's noise plans
cold and from a warm cache, per distinct noise scale.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import jobs

N_ROWS = 100_000
MODES = (("exact", None), ("dp-laplace", {"epsilon": 1.0, "delta": 0}),
         ("dp-gaussian", {"epsilon": 1.0, "delta": 1e-6}))
CACHE_ENV = "JOINTSTATS_NOISE_PLAN_CACHE"


def spec(dp: dict | None, d: int = 10) -> str:
    """Regression y ~ x1..xd, crosstab smoker x region, means of x1 and y."""
    feats = ", ".join(f"x{j}" for j in range(1, d + 1))
    cols = "\n".join(f"  x{j}: {{type: real, bounds: [-8, 8]}}" for j in range(1, d + 1))
    privacy = f"privacy:\n  epsilon: {dp['epsilon']}\n  delta: {dp['delta']}\n" if dp else ""
    return f"""name: bench-dpcost-d{d}
dataset: cohort
partition: horizontal
schema:
{cols}
  y: {{type: real, bounds: [-400, 400]}}
  smoker: {{type: categorical, levels: ["no", "yes"]}}
  region: {{type: categorical, levels: [north, south, east, west]}}
{privacy}statistics:
  mean_x1: {{kind: mean, column: x1}}
  mean_y:  {{kind: mean, column: y}}
  smoking: {{kind: crosstab, rows: smoker, cols: region, min_count: 10}}
  model:   {{kind: regression, target: y, features: [{feats}]}}
"""


@contextlib.contextmanager
def plan_cache(path: Path | None):
    """JOINTSTATS_NOISE_PLAN_CACHE for the parties of the jobs run inside."""
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path) if path is not None else "off"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


def plan_building(dp: dict) -> dict:
    """This process alone: the job's noise plans built with no cache, cold (built and written)
    and warm (from the cache); wall and CPU seconds (CPU is robust to other load)."""
    from jointstats.noise import sampler as _noise
    from jointstats.noise import cache as _plan_cache
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import parse_spec
    sp = parse_spec(spec(dp))
    base = make_plan(sp, ["party_1", "party_2", "party_3"])

    def clear():
        _noise.dl_plan.cache_clear()
        _noise.dg_plan.cache_clear()
        _noise._dg_alpha.cache_clear()

    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="jsbench-plans-"))
    try:
        for label, path in (("imports", None), ("none", None), ("cold", tmp), ("warm", tmp)):
            clear()
            with plan_cache(path):
                t, c = time.perf_counter(), time.process_time()
                plan = add_noise_plans(sp, base)
                out[f"{label}_cpu_seconds"] = time.process_time() - c
                out[f"{label}_seconds"] = time.perf_counter() - t
        del out["imports_seconds"], out["imports_cpu_seconds"]  # the first pass imports modules
        scales = {s for st in plan.statistics for s in st.noise.scales}
        out["distinct_scales"] = len(scales)
        out["samples"] = sum(len(st.noise.scales) for st in plan.statistics)
        out["cache_files"] = len(list(tmp.glob("*.json")))
        out["cache_bytes"] = sum(f.stat().st_size for f in tmp.glob("*.json"))
    finally:
        clear()
        shutil.rmtree(tmp, ignore_errors=True)
        _plan_cache.set_directory(None)
    return out


def measure(rec, *, n: int = N_ROWS, repeats: int = 5, patch: str | None = None,
            launch: str | None = None, mechanisms: tuple[str, ...] | None = None) -> list[dict]:
    """Interleaved repeats of every (mode, cache) case; one record per case, with medians.

    ``patch``: a what-if of bench/_probe.py (e.g. ``log_coins``) in every job (which then
    starts fresh interpreters, as ``launch="exec"``); ``mechanisms``: only these DP modes."""
    from .suites import _files
    files = _files("cohort", n, 3, 10, 2)
    cases = [("exact", None, "-")]
    for name, dp in MODES[1:]:
        if mechanisms is None or name in mechanisms:
            cases += [(name, dp, "cold"), (name, dp, "warm")]
    run_opts = {"patch": patch, "launch": launch}
    runs: dict[tuple, list[dict]] = {(m, c): [] for m, _, c in cases}
    root = Path(tempfile.mkdtemp(prefix="jsbench-dpcost-"))
    try:
        warm_dirs = {}
        for name, dp, cache in cases:  # fill the warm caches (not measured)
            if cache == "warm":
                warm_dirs[name] = root / f"warm-{name}"
                with plan_cache(warm_dirs[name]):
                    jobs.run_job(spec(dp), files, **run_opts)
        for r in range(repeats):
            for name, dp, cache in cases:
                path = warm_dirs.get(name) if cache == "warm" else root / f"cold-{name}-{r}"
                with plan_cache(path if dp else None):
                    runs[(name, cache)].append(jobs.run_job(spec(dp), files, **run_opts))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    exact = statistics.median(r["wall_seconds"] for r in runs[("exact", "-")])
    records = []
    for name, dp, cache in cases:
        rs = runs[(name, cache)]
        walls = [r["wall_seconds"] for r in rs]
        median_run = sorted(rs, key=lambda r: r["wall_seconds"])[len(rs) // 2]
        phases = [jobs.summarize(r) for r in rs]

        def med(key):
            vals = [p[key] for p in phases if p.get(key) is not None]
            return statistics.median(vals) if vals else None
        params = {"spec": "dpcost", "rows_per_party": n, "parties": 3, "features": 10,
                  "mode": "exact" if dp is None else "dp", "mechanism": name, "plan_cache": cache,
                  "patch": patch or "", "launch": launch or ""}
        if dp:
            params["privacy"] = dict(dp)
        out = {"bench": "dpcost", "system": "jointstats", "params": params,
               "wall_seconds": statistics.median(walls), "walls": walls,
               "ratio_to_exact": statistics.median(walls) / exact,
               "median_phases": {k: med(k) for k in ("plan_seconds", "local_seconds", "secure_seconds",
                                                     "connect_seconds", "sync_seconds", "cpu_seconds")},
               "summary": jobs.summarize(median_run), "per_party": median_run["parties"]}
        if dp and cache == "cold":
            out["plan_building_alone"] = plan_building(dp)
        records.append(rec.emit(out))
    return records


def table(records: list[dict]) -> str:
    """Markdown table of the dpcost records."""
    lines = ["| job (3 x 1e5 rows) | plan cache | wall (median) | DP / exact | plans per party | "
             "secure step | local step | CPU per party |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(x):
        return "–" if x is None else (f"{x:.3g} s" if x >= 0.01 else f"{x * 1000:.2g} ms")
    for r in records:
        if "wall_seconds" not in r:
            continue
        p, ph = r["params"], r["median_phases"]
        lines.append(f"| {p['mechanism']} | {p['plan_cache']} | {f(r['wall_seconds'])} | "
                     f"{r['ratio_to_exact']:.2f}x | {f(ph.get('plan_seconds'))} | "
                     f"{f(ph.get('secure_seconds'))} | {f(ph.get('local_seconds'))} | "
                     f"{f(ph.get('cpu_seconds'))} |")
    alone = [(r["params"]["mechanism"], r["plan_building_alone"]) for r in records
             if "plan_building_alone" in r]
    if alone:
        lines += ["", "| noise plans of the job, one process, CPU | distinct scales | no cache | cold cache "
                  "(build + write) | warm cache |", "| --- | --- | --- | --- | --- |"]
        for name, a in alone:
            k = a["distinct_scales"]
            none, cold, warm = (a.get(f"{x}_cpu_seconds", a[f"{x}_seconds"]) for x in ("none", "cold", "warm"))
            lines.append(f"| {name} | {k} ({a['samples']} samples) | {f(none)} ({f(none / k)} per scale) | "
                         f"{f(cold)} | {f(warm)} ({f(warm / k)} per scale) |")
    return "\n".join(lines)


def bench_dpcost(rec, full: bool) -> None:
    """DP job cost against the same job in exact mode, cold and warm noise-plan cache."""
    records = measure(rec, repeats=7 if full else 5)
    if not rec.quiet:
        print(table(records), file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from .machine import one_line
    from .report import RESULTS
    from .suites import Recorder, precompile
    ap = argparse.ArgumentParser(prog="python -m bench.dpcost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=N_ROWS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "latest.jsonl"))
    ap.add_argument("--patch", help="a what-if of bench/_probe.py in every job, e.g. log_coins")
    ap.add_argument("--launch", choices=["fork", "exec"], help="JOINTSTATS_LAUNCH for every job")
    ap.add_argument("--mechanism", action="append", choices=[m for m, _ in MODES[1:]],
                    help="only this DP mode (repeatable)")
    args = ap.parse_args(argv)
    precompile()
    rec = Recorder(Path(args.out), "dpcost")
    print(f"bench dpcost run {rec.run_id} on {one_line()}", file=sys.stderr)
    records = measure(rec, n=args.rows, repeats=args.repeats, patch=args.patch, launch=args.launch,
                      mechanisms=tuple(args.mechanism) if args.mechanism else None)
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
