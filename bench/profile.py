"""Where the time of one end-to-end job goes: phase timings of every party, plus a profile.

``python -m bench.profile [--spec headline] [--rows 1000000] [--parties 3] [--profiler cprofile|cpu|pyinstrument|none]``
``python -m bench.profile --local`` (the local step alone, in process) and
``python -m bench.profile --whatif 3`` (proposed engine changes, measured without editing the package)

Prints, per party, the phases measured by the probe (bench/_probe.py): process spawn,
imports, reading + encoding the data, local aggregation, connecting (which includes waiting
for the slowest peer's local step), the plan-hash exchange, each statistic's secure step,
closing, and the ledger; then the top of the profile of the first party. Profiles are
kept in ``--keep`` (default bench/results/profile/): ``*.prof`` opens with ``python -m pstats``
or snakeviz; pyinstrument writes ``.txt`` and ``.html``.
"""
from __future__ import annotations

import argparse
import io
import pstats
import sys
import time
from pathlib import Path

from . import data, jobs, specs
from .report import RESULTS


def phase_table(run: dict) -> str:
    keys = [("spawn_seconds", "spawn"), ("import_seconds", "imports"), ("read_seconds", "read+encode"),
            ("aggregate_seconds", "aggregate"), ("connect_seconds", "connect+wait"), ("sync_seconds", "plan sync"),
            ("secure_seconds", "secure"), ("close_seconds", "close"), ("ledger_seconds", "ledger"),
            ("exit_after_call_seconds", "exit (from call)"), ("cpu_seconds", "cpu"), ("peak_rss_kb", "peak RSS kB")]
    lines = ["party      " + "".join(f"{label:>15}" for _, label in keys)]
    for p in run["parties"]:
        cells = []
        for key, _ in keys:
            v = p.get(key)
            cells.append(f"{'-' if v is None else (f'{v:.0f}' if key == 'peak_rss_kb' else f'{v:.3f}'):>15}")
        lines.append(f"{p['party']:<11}" + "".join(cells))
    lines.append(f"wall (runner.run call to result): {run['wall_seconds']:.3f} s")
    stats = {}
    for p in run["parties"]:
        for st in p.get("stats", []):
            cur = stats.setdefault(st["name"], [st["kind"], 0.0, 0])
            cur[1] = max(cur[1], st["seconds"])
            cur[2] = max(cur[2], st["bytes"])
    if stats:
        lines.append("secure step per statistic (max over parties): " + ", ".join(
            f"{name} ({kind}) {sec:.3f}s/{b / 1e3:.0f}kB" for name, (kind, sec, b) in stats.items()))
    return "\n".join(lines)


def local_breakdown(spec_text: str, files: list[Path], party: int = 0) -> str:
    """The local step of one party, in this process (no MPC, no other party competing for the CPU).

    Compares: pyarrow reading the same columns straight to numpy; jointstats' chunk reader
    (read + schema encoding); its partial aggregation per statistic; and one float64
    ``X^T X`` in BLAS over every numeric column, the floor for the aggregation.
    """
    import numpy as np
    import pyarrow.parquet as pq
    from jointstats.engine import local_step as _local
    from jointstats.engine.sources import open_source
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import parse_spec
    spec = parse_spec(spec_text)
    plan = make_plan(spec, [f"p{i}" for i in range(len(files))])
    path = files[party]
    cols = [c.name for c in spec.schema]
    out = []
    t = time.perf_counter()
    if path.suffix == ".parquet":
        table = pq.read_table(path, columns=cols)
    else:
        import pyarrow.csv as pacsv
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=cols))
    arrays = {c: table.column(c).to_numpy() for c in cols}
    t_raw = time.perf_counter() - t
    n = table.num_rows
    numeric = [c.name for c in spec.schema if c.type != "categorical"]
    t_blas = 0.0
    if numeric:
        X = np.column_stack([arrays[c] for c in numeric]).astype(np.float64)
        t = time.perf_counter()
        X.T @ X
        t_blas = time.perf_counter() - t
        del X
    del table, arrays
    from jointstats.engine import party as _party
    chunk_rows = getattr(_party, "CHUNK_ROWS", 1 << 20)
    source = open_source(str(path), path.parent)
    t = time.perf_counter()
    chunks = list(source.iter_chunks(list(spec.schema), "bench", chunk_rows=chunk_rows))
    t_read = time.perf_counter() - t
    per_stat = {}
    t = time.perf_counter()
    for chunk in chunks:
        for stat in plan.statistics:
            t1 = time.perf_counter()
            _local._chunk_partial(stat, chunk)
            per_stat[(stat.name, stat.kind, len(stat.terms))] = per_stat.get((stat.name, stat.kind, len(stat.terms)), 0.0) \
                + time.perf_counter() - t1
    t_agg = time.perf_counter() - t
    t = time.perf_counter()
    _local.compute_partials(plan, iter(chunks))
    t_cp = time.perf_counter() - t
    out.append(f"local step of one party alone, {n} rows, {len(cols)} columns ({path.suffix[1:]}), "
               f"chunks of {chunk_rows} rows:")
    out.append(f"  pyarrow read_table + to_numpy (the floor for reading): {t_raw:.3f} s")
    out.append(f"  jointstats chunk reader (read + encode + clip + re-chunk): {t_read:.3f} s "
               f"({t_read / max(t_raw, 1e-9):.1f}x the floor)")
    out.append(f"  one float64 X^T X over the {len(numeric)} numeric columns (BLAS floor): {t_blas:.3f} s")
    out.append(f"  jointstats partial aggregation, all statistics: {t_agg:.3f} s "
               f"(compute_partials: {t_cp:.3f} s)")
    for (name, kind, k), sec in sorted(per_stat.items(), key=lambda kv: -kv[1]):
        out.append(f"    {name} ({kind}{f', {k} terms' if k else ''}): {sec:.3f} s")
    return "\n".join(out)


WHATIF = ["", "no_pandas", "rowgroup_reader", "fast_exit", "no_pandas,rowgroup_reader,fast_exit"]


def whatif(spec_text: str, files: list[Path], repeats: int) -> str:
    """Wall time, local step and peak memory with each proposed change applied in the party
    processes (bench/_probe.py), runs interleaved so that drifts of the machine hit all alike."""
    import statistics
    runs: dict[str, list[dict]] = {w: [] for w in WHATIF}
    for _ in range(repeats):
        for w in WHATIF:
            runs[w].append(jobs.run_job(spec_text, files, patch=w or None))
    lines = [f"{'change':<40}{'wall (median)':>15}{'local step':>12}{'peak RSS/party':>16}"]
    for w, rs in runs.items():
        wall = statistics.median(r["wall_seconds"] for r in rs)
        local = statistics.median(jobs.summarize(r)["local_seconds"] for r in rs)
        rss = max(jobs.summarize(r)["peak_rss_kb"] for r in rs) / 1024
        lines.append(f"{w or '(as is)':<40}{wall:>14.3f}s{local:>11.3f}s{rss:>13.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--spec", default="headline", choices=["headline", "regression", "count", "crosstab"])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--parties", type=int, default=3)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--format", default="parquet", choices=["parquet", "csv"])
    ap.add_argument("--profiler", default="cprofile", choices=["cprofile", "cpu", "pyinstrument", "none"],
                    help="cpu: cProfile on CPU time (co-located parties waiting for a core are not charged)")
    ap.add_argument("--launch", default="exec", choices=["exec", "fork"],
                    help="profile parties started as fresh interpreters (exec) or forked from the launcher")
    ap.add_argument("--keep", default=str(RESULTS / "profile"))
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--local", action="store_true", help="only the in-process local-step breakdown")
    ap.add_argument("--whatif", type=int, default=0, metavar="REPEATS",
                    help="only measure the proposed engine changes (bench/_probe.py), REPEATS runs each")
    args = ap.parse_args(argv)
    from .suites import precompile
    precompile()
    text, kind = specs.build(args.spec, d=args.d, k=args.k)
    files = data.party_files(kind, args.rows, args.parties, d=args.d, k=args.k, fmt=args.format)
    if args.whatif:
        print(f"== what if: {args.spec}, {args.parties} parties x {args.rows} rows ({args.format})")
        print(whatif(text, files, args.whatif))
        return 0
    print(local_breakdown(text, files))
    if args.local:
        return 0
    # one unprofiled run first: the phases without profiler overhead
    plain = jobs.run_job(text, files)
    print(f"== {args.spec}, {args.parties} parties x {args.rows} rows ({args.format}), no profiler")
    print(phase_table(plain))
    if args.profiler == "none":
        return 0
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    for old in keep.glob("party_*"):
        old.unlink()
    t = time.perf_counter()
    if args.launch == "fork":  # the profiling launcher's first job (its start-up is not the party's)
        jobs.run_job(text, files, profile=f"{args.profiler}:{keep}", launch="fork")
        for old in keep.glob("party_*"):
            old.unlink()
    prof = jobs.run_job(text, files, profile=f"{args.profiler}:{keep}", launch=args.launch)
    print(f"\n== the same job under {args.profiler} ({time.perf_counter() - t:.1f}s; profiles in {keep})")
    print(phase_table(prof))
    first = sorted(keep.glob("party_1-*"))
    if args.profiler in ("cprofile", "cpu") and first:
        for sort in ("cumulative", "tottime"):
            buf = io.StringIO()
            pstats.Stats(str(first[0]), stream=buf).strip_dirs().sort_stats(sort).print_stats(args.top)
            print(f"\n== party_1, top {args.top} by {sort}\n" + buf.getvalue().split("\n\n", 1)[-1])
    elif first:
        txt = [f for f in first if f.suffix == ".txt"]
        if txt:
            print(txt[0].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
