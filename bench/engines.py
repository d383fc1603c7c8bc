"""Issue 18: the local step in the engine vs the numpy path, and a PostgreSQL party vs a plain
SUM on the same server.

    python -m bench.engines [--rows 1000000 10000000] [--postgres]

For each size: a Parquet and a CSV file of the test cohort (6 columns); the local step of a plan
with a count, a mean, a variance, a crosstab, a histogram and a regression on 4 terms, through
(a) the current readers (pyarrow + numpy, jointstats.engine.sources/_local) and (b) DuckDB with the
local step pushed down (jointstats.engine.sql_sources); both give identical partials (checked).
With --postgres, the same table in a throw-away PostgreSQL server (see tests/engines/conftest.py):
the pushed-down local step against ``SELECT SUM(age), COUNT(*) FROM t``.
"""
from __future__ import annotations

import argparse
import logging
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


def main(argv=None) -> None:
    from jointstats.engine.local_step import compute_partials
    from jointstats.engine.sources import open_source
    from jointstats.engine.sql_sources import DuckDBSource
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import parse_spec

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--postgres", action="store_true")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    spec = parse_spec(SPEC)
    plan = add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    schema = list(spec.schema)
    root = Path(tempfile.mkdtemp(prefix="jointstats-bench-engines-"))
    print(f"{'rows':>10} {'format':8} {'numpy path s':>13} {'duckdb pushdown s':>18}")
    for n in args.rows:
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
        if args.postgres:
            bench_postgres(n, table, plan, schema)


def bench_postgres(n, table, plan, schema) -> None:
    import os
    from tests.engines.conftest import PASSWORD, pg_server, load_frame  # noqa: F401
    gen = pg_server.__wrapped__()
    srv = next(gen)
    try:
        load_frame(srv, "bench", table.to_pandas())
        os.environ["PGPASSWORD"] = PASSWORD
        with srv.connect("cohort") as con:
            con.execute("ANALYZE bench")
            t_sum, _ = timed(lambda: con.execute("SELECT SUM(age), COUNT(*) FROM bench").fetchall())
        from jointstats.engine.sources import open_source

        def pushed():
            src = open_source(srv.url(table="bench"), Path("."))
            try:
                return src.aggregate(plan, schema, "p", strict=False)
            finally:
                src.close()
        t_push, _ = timed(pushed)
        print(f"{n:>10} postgres: pushed-down local step {t_push:.2f} s; SELECT SUM(age), COUNT(*) {t_sum:.2f} s",
              flush=True)
    finally:
        gen.close()


if __name__ == "__main__":
    main()
