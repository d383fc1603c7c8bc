"""Issue 18: the local step pushed into the engine, against the engine alone summing the same
columns.

    python -m bench.engines [--rows 1000000 10000000] [--files]      # numpy path vs DuckDB pushdown
    python -m bench.engines --postgres --rows 10000000 [--repeats 5]  # PostgreSQL party vs plain SUM
    python -m bench.engines --registry 100000000 [--repeats 3]       # registry + 2 hospitals, end to end
    python -m bench.engines --spark 100000000                         # Spark party (local mode)

``--files``: for each size a Parquet and a CSV file of the test cohort (6 columns); the local
step of a plan with a count, a mean, a variance, a crosstab, a histogram and a 4-term regression
through (a) the pyarrow + numpy readers and (b) DuckDB with the local step pushed down; both give
identical partials (checked).

``--postgres``: the same table in a throw-away PostgreSQL server (tests/engines/conftest.py),
loaded with COPY; the pushed-down local step (the party's whole ``aggregate`` call: connect, read
the header, one grouped scan, decode) against ``SELECT SUM(age), SUM(bmi), SUM(sbp),
COUNT(smoker), COUNT(region)`` (the columns the plan reads) on the same server and connection
settings, warm cache, repeats interleaved, medians.

``--registry``: a national registry of N rows x 10 features (cohort data: x1..x10, y, visits,
smoker, region; Parquet parts of 1e7 rows in a directory, written once under the bench cache
``JOINTSTATS_BENCH_CACHE``, default bench/.cache/, never in git) and two hospitals with 1e6 rows
each (Parquet files): an exact job with a regression of y on x1..x10, a crosstab and two means,
end to end (``jointstats.local.runner.run``: three party processes, the registry's local step pushed
into DuckDB), against DuckDB alone scanning the registry's files with one SUM per numeric column
it reads (and COUNT of the two categorical ones); the peak resident memory of each party.

Every figure is a median of repeats taken in the same run (the development machine has 2 cores
shared with other jobs: compare ratios, not seconds across runs). Results are appended as JSON
lines to bench/results/engines.jsonl (git-ignored) and printed.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SPEC = """
name: bench-engines
dataset: cohort
schema:
  age:    {type: real, bounds: [18, 100]}
  bmi:    {type: real, bounds: [10, 60]}
  sbp:    {type: real, bounds: [80, 220]}
  visits: {type: integer, bounds: [0, 50]}
  smoker: {type: categorical, levels: ["no", "yes"]}
  region: {type: categorical, levels: [north, south, east, west]}
privacy: {epsilon: 1.0, delta: 1.0e-6}
statistics:
  n:     {kind: count}
  m:     {kind: mean, column: age}
  v:     {kind: variance, column: bmi}
  x:     {kind: crosstab, rows: smoker, cols: region}
  h:     {kind: histogram, column: age, bins: [18, 30, 45, 60, 75, 100]}
  ols:   {kind: regression, target: sbp, features: [age, bmi, smoker]}
"""
PLAIN_SUM = "SELECT SUM(age), SUM(bmi), SUM(sbp), COUNT(smoker), COUNT(region) FROM bench"

REGISTRY_SPEC = """name: bench-registry
dataset: cohort
schema:
{schema}
statistics:
  model:   {{kind: regression, target: y, features: [{feats}]}}
  smoking: {{kind: crosstab, rows: smoker, cols: region}}
  mean_x1: {{kind: mean, column: x1}}
  mean_y:  {{kind: mean, column: y}}
"""
_PART_ROWS = 10_000_000
RESULTS = Path(__file__).resolve().parent / "results" / "engines.jsonl"


def make_table(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 95, n).round(1)
    bmi = (18 + 0.08 * age + rng.normal(0, 4, n)).round(1)
    sbp = (90 + 0.5 * age + 0.9 * bmi + rng.normal(0, 10, n)).round(1)
    return pa.table({"age": age, "bmi": bmi, "sbp": sbp, "visits": rng.poisson(1 + age / 30),
                     "smoker": rng.choice(np.array(["no", "yes"]), n),
                     "region": rng.choice(np.array(["north", "south", "east", "west"]), n)})


def timed(fn, repeat: int = 2):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, the repeats of all of them interleaved (one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k, fn in fns.items():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def record(kind: str, **fields) -> None:
    from bench.machine import describe
    rec = {"bench": "engines", "kind": kind, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": describe(), "loadavg": os.getloadavg(), **fields}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


def bench_files(rows: list[int]) -> None:
    from jointstats.engine.local_step import compute_partials
    from jointstats.engine.sources import open_source
    from jointstats.engine.sql_sources import DuckDBSource
    plan, schema = _plan(SPEC)
    root = Path(tempfile.mkdtemp(prefix="jointstats-bench-engines-"))
    print(f"{'rows':>10} {'format':8} {'numpy path s':>13} {'duckdb pushdown s':>18}")
    for n in rows:
        table = make_table(n)
        pq.write_table(table, root / f"d{n}.parquet", row_group_size=1 << 20)
        pacsv.write_csv(table, root / f"d{n}.csv")
        for fmt in ("parquet", "csv"):
            path = root / f"d{n}.{fmt}"
            t_np, want = timed(lambda: compute_partials(plan, open_source(path.name, root).iter_chunks(
                schema, "p", strict=False)))

            def pushed():
                src = DuckDBSource(str(path), files=str(path), file_format=fmt, path=path)
                try:
                    return src.aggregate(plan, schema, "p", strict=False)
                finally:
                    src.close()
            t_dd, got = timed(pushed)
            assert got == want, "the partials differ"
            print(f"{n:>10} {fmt:8} {t_np:13.2f} {t_dd:18.2f}", flush=True)
            record("files", rows=n, format=fmt, numpy_seconds=t_np, duckdb_pushdown_seconds=t_dd)


def _plan(text: str):
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import parse_spec
    spec = parse_spec(text)
    return add_noise_plans(spec, make_plan(spec, ["a", "b", "c"])), list(spec.schema)


def bench_postgres(rows: list[int], repeats: int) -> None:
    from jointstats.engine.sources import open_source
    from tests.engines.conftest import PASSWORD, pg_server
    plans = {"dp": _plan(SPEC), "exact": _plan(SPEC.replace("privacy: {epsilon: 1.0, delta: 1.0e-6}\n", ""))}
    gen = pg_server.__wrapped__()
    srv = next(gen)
    try:
        os.environ["PGPASSWORD"] = PASSWORD
        for n in rows:
            table = make_table(n)
            _copy_table(srv, table)
            con = __import__("psycopg").connect(host="127.0.0.1", port=srv.port, user="reader",
                                                dbname="cohort", password=PASSWORD)

            def plain():
                con.execute(PLAIN_SUM).fetchall()
                con.rollback()

            def pushed(mode):
                plan, schema = plans[mode]
                src = open_source(srv.url(table="bench"), Path("."))
                try:
                    return src.aggregate(plan, schema, "p", strict=False)
                finally:
                    src.close()
            med = interleaved({"plain": plain, "dp": lambda: pushed("dp"), "exact": lambda: pushed("exact")},
                              repeats)
            con.close()
            print(f"{n:>10} postgres: plain SUM {med['plain']:.2f} s; pushed-down local step: "
                  f"DP plan {med['dp']:.2f} s ({med['dp'] / med['plain']:.1f}x), exact plan "
                  f"{med['exact']:.2f} s ({med['exact'] / med['plain']:.1f}x)", flush=True)
            record("postgres", rows=n, repeats=repeats, plain_sum_seconds=med["plain"],
                   pushdown_dp_seconds=med["dp"], pushdown_exact_seconds=med["exact"])
    finally:
        gen.close()


def _copy_table(srv, table: pa.Table) -> None:
    """The table as ``bench`` (COPY of its CSV text), analysed, readable by ``reader``."""
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    data = buf.getbuffer()
    with srv.connect("cohort") as con:
        con.execute("DROP TABLE IF EXISTS bench")
        con.execute("CREATE TABLE bench (age double precision, bmi double precision, "
                    "sbp double precision, visits bigint, smoker text, region text)")
        with con.cursor().copy("COPY bench FROM STDIN WITH (FORMAT csv)") as copy:
            for i in range(0, len(data), 1 << 22):
                copy.write(data[i:i + (1 << 22)])
        con.execute("VACUUM ANALYZE bench")
        con.execute("GRANT SELECT ON bench TO reader")


def registry_dir(rows: int, d: int = 10) -> Path:
    """The registry's Parquet parts (1e7 rows each), written once under the bench cache."""
    from bench.data import CACHE, _cohort_block
    path = CACHE / f"registry-cohort-d{d}-n{rows}"
    done = path / "_complete"
    if done.exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, _PART_ROWS)):
        f = path / f"part-{part:03d}.parquet"
        if f.exists():
            continue
        rng = np.random.default_rng([7, rows, d, part])
        tmp = f.with_suffix(".part")
        with pq.ParquetWriter(tmp, _cohort_block(rng, 1, d).schema) as writer:
            n = min(_PART_ROWS, rows - start)
            for s in range(0, n, 1 << 20):
                writer.write_table(_cohort_block(rng, min(1 << 20, n - s), d), row_group_size=1 << 20)
        os.replace(tmp, f)
        print(f"  registry part {part} written", flush=True)
    done.write_text("")
    return path


def bench_registry(rows: int, repeats: int, d: int = 10) -> None:
    from bench.data import party_file
    from bench.jobs import run_job
    t = time.perf_counter()
    reg = registry_dir(rows, d)
    hospitals = [party_file("cohort", 1_000_000, i, d=d) for i in (1, 2)]
    print(f"data ready in {time.perf_counter() - t:.0f} s ({sum(f.stat().st_size for f in reg.glob('*.parquet')) / 1e9:.1f} GB)",
          flush=True)
    spec = registry_spec(d)
    plain = _duckdb_run(registry_plain_sql(reg, d))
    jobs = []

    # every party's DuckDB and Arrow may use all the cores (JOINTSTATS_THREADS): a registry runs
    # on its own machine, and the hospitals here finish in under a second; left to the local
    # runner's even split, three parties on two cores get one thread each
    os.environ.setdefault("JOINTSTATS_THREADS", str(os.cpu_count() or 1))

    def job():
        jobs.append(run_job(spec, [reg, *hospitals]))
    med = interleaved({"plain": plain, "job": job}, repeats)
    last = jobs[-1]
    rss = {p["party"]: (p.get("peak_rss_kb") or 0) / 2**20 for p in last["parties"]}
    local = {p["party"]: p.get("local_seconds") for p in last["parties"]}
    print(f"registry {rows} rows x {d} features + 2 hospitals x 1e6: DuckDB alone (one SUM per column) "
          f"{med['plain']:.1f} s; the exact job end to end {med['job']:.1f} s ({med['job'] / med['plain']:.2f}x); "
          f"peak RSS GiB {', '.join(f'{k} {v:.2f}' for k, v in rss.items())}; local step s {local}", flush=True)
    record("registry", rows=rows, features=d, repeats=repeats, duckdb_sum_seconds=med["plain"],
           job_seconds=med["job"], peak_rss_gib=rss, local_seconds=local)


def registry_spec(d: int = 10) -> str:
    """The registry job's spec: regression on x1..xd, a crosstab, two means."""
    schema = "\n".join([f"  x{j}: {{type: real, bounds: [-8, 8]}}" for j in range(1, d + 1)]
                       + ["  y: {type: real, bounds: [-400, 400]}",
                          '  smoker: {type: categorical, levels: ["no", "yes"]}',
                          "  region: {type: categorical, levels: [north, south, east, west]}"])
    return REGISTRY_SPEC.format(schema=schema, feats=", ".join(f"x{j}" for j in range(1, d + 1)))


def registry_plain_sql(reg: Path, d: int = 10) -> str:
    """The issue's baseline: DuckDB alone, one SUM per numeric column, COUNT of the others."""
    sums = ", ".join([f"SUM(x{j})" for j in range(1, d + 1)] + ["SUM(y)", "COUNT(smoker)", "COUNT(region)"])
    return f"SELECT {sums} FROM read_parquet('{reg}/*.parquet')"


def _duckdb_run(sql: str):
    """A function running ``sql`` on a fresh in-memory DuckDB connection (for ``interleaved``)."""
    def run():
        import duckdb
        con = duckdb.connect()
        try:
            con.execute(sql).fetchall()
        finally:
            con.close()
    return run


def bench_floor(rows: int, repeats: int, d: int = 10) -> None:
    """The registry's local step in DuckDB against two references on the same files, in the
    same run, repeats interleaved: the plain SUM per column (the issue's baseline) and the
    bare exact sums an exact Gram statistic cannot do without (the columns on the grid as
    BIGINT, every sum and every sum of products, no clipping, missing-value or rounding
    rule): the floor of any exact pushdown of this plan."""
    from jointstats.engine.sources import open_source
    reg = registry_dir(rows, d)
    plan, schema = _plan(registry_spec(d))
    rel = f"read_parquet('{reg}/*.parquet')"
    cols = [f"x{j}" for j in range(1, d + 1)] + ["y"]
    grid = ", ".join(f"CAST(round({c} * 67108864) AS BIGINT) AS {c}" for c in cols)
    pairs = [f"SUM({a} * {b})" for i, a in enumerate(cols) for b in cols[i:]]
    bare_sql = (f"SELECT {', '.join(f'SUM({c})' for c in cols)}, {', '.join(pairs)} "
                f"FROM (SELECT {grid} FROM {rel})")

    def pushed():
        src = open_source(str(reg), reg.parent, {})
        try:
            src.aggregate(plan, schema, "registry", strict=True)
        finally:
            src.close()
    med = interleaved({"plain": _duckdb_run(registry_plain_sql(reg, d)), "bare": _duckdb_run(bare_sql),
                       "pushed": pushed}, repeats)
    print(f"registry {rows} rows, DuckDB: plain SUM per column {med['plain']:.2f} s; bare exact sums "
          f"({len(cols) + len(pairs)}) {med['bare']:.2f} s ({med['bare'] / med['plain']:.2f}x); the "
          f"pushed-down local step {med['pushed']:.2f} s ({med['pushed'] / med['plain']:.2f}x, "
          f"{med['pushed'] / med['bare']:.2f}x the bare sums)", flush=True)
    record("floor", rows=rows, repeats=repeats, plain_sum_seconds=med["plain"],
           bare_sums_seconds=med["bare"], pushdown_seconds=med["pushed"])


def bench_spark(rows: int) -> None:
    from jointstats.engine.spark_source import SparkSource
    reg = registry_dir(rows)
    plan, schema = _plan(registry_spec())
    src = SparkSource(f"spark:parquet:{reg}", files=str(reg), file_format="parquet",
                      spark={"master": "local[2]", "conf": {"spark.driver.memory": "2g"}})
    try:
        t = time.perf_counter()
        src.columns()
        start = time.perf_counter() - t
        sums = ", ".join([f"SUM(x{j})" for j in range(1, 11)] + ["SUM(y)", "COUNT(smoker)", "COUNT(region)"])
        med = {}  # one run each (minutes at 1e8 rows), the plain scan first: it warms the files
        for name, fn in (("plain", lambda: src._query(f"SELECT {sums} FROM {src._relation()}")),
                         ("pushed", lambda: src.aggregate(plan, schema, "p", strict=True))):
            t = time.perf_counter()
            fn()
            med[name] = time.perf_counter() - t
    finally:
        src.close()
    print(f"spark local[2] {rows} rows: session start {start:.0f} s; plain SUM {med['plain']:.1f} s; "
          f"pushed-down local step {med['pushed']:.1f} s ({med['pushed'] / med['plain']:.2f}x)", flush=True)
    record("spark", rows=rows, session_seconds=start, plain_sum_seconds=med["plain"],
           pushdown_seconds=med["pushed"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--files", action="store_true")
    ap.add_argument("--postgres", action="store_true")
    ap.add_argument("--registry", type=int, default=0, metavar="ROWS")
    ap.add_argument("--spark", type=int, default=0, metavar="ROWS")
    ap.add_argument("--floor", type=int, default=0, metavar="ROWS",
                    help="the registry's local step against a plain scan and the bare exact sums")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.files or not (args.postgres or args.registry or args.spark or args.floor):
        bench_files(args.rows)
    if args.postgres:
        bench_postgres(args.rows, args.repeats)
    if args.registry:
        bench_registry(args.registry, args.repeats)
    if args.spark:
        bench_spark(args.spark)
    if args.floor:
        bench_floor(args.floor, args.repeats)


if __name__ == "__main__":
    main()
