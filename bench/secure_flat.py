"""The secure step does not grow with the rows; memory is bounded by chunked reading.

``python -m bench.secure_flat [--max-rows 1000000] [--repeats 3] [--big 1000000 [10000000]]``

1. Runs the same regression (3 parties, 10 features, exact mode) at 1e4, 2e4, 4e4, ... rows per
   party (doubling, then ``--max-rows``) and prints, for each, the secure step's time
   (median over ``--repeats`` runs, slowest party) and the bytes each party sent in it.
   The secure step is timed inside each party process from the moment every party has finished
   its local step (the plan-hash exchange) to the last reveal, so waiting for a slower peer's
   local step is not counted in it.
2. Runs the regression of 3 parties x ``--big`` rows x 10 features end to end (Parquet files,
   one OS process per party) and prints the wall time and each party's peak RSS next to the
   size its data would take in memory as float64.

Every run is also appended as a JSON line to ``--out`` (bench "flat" / "bigmem").
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from . import data, suites
from .report import RESULTS


def rows_schedule(max_rows: int, start: int = 10_000) -> list[int]:
    out, n = [], start
    while n < max_rows:
        out.append(n)
        n *= 2
    return out + [max_rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.secure_flat")
    ap.add_argument("--max-rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--big", type=int, nargs="*", default=[1_000_000],
                    help="rows per party of the end-to-end memory run(s); none to skip")
    ap.add_argument("--out", default=str(RESULTS / "secure_flat.jsonl"))
    args = ap.parse_args(argv)
    rec = suites.Recorder(Path(args.out), "secure_flat", quiet=True)

    print(f"Secure step of a regression on {args.d} features, 3 parties, exact mode "
          f"(median of {args.repeats} runs; max over parties)")
    print(f"{'rows/party':>12} {'secure step':>12} {'min..max':>17} {'bytes sent (secure)':>20} "
          f"{'local step':>11} {'wall':>8}")
    rows = []
    for n in rows_schedule(args.max_rows):
        r = suites.measure_ours(rec, "flat", "regression", n=n, d=args.d, repeats=args.repeats)
        if "error" in r:
            print(f"{n:>12} ERROR {r['error']}")
            continue
        sec = r["secure_seconds_all"]
        s = r["summary"]
        rows.append((n, statistics.median(sec), s["secure_bytes"]))
        print(f"{n:>12} {statistics.median(sec):>11.3f}s {min(sec):>7.3f}..{max(sec):.3f}s "
              f"{s['secure_bytes']:>20,} {s['local_seconds']:>10.3f}s {r['wall_seconds']:>7.2f}s")
    if len(rows) >= 2:
        t = [x[1] for x in rows]
        b = [x[2] for x in rows]
        print(f"spread over {rows[0][0]:,}..{rows[-1][0]:,} rows: time max/min - 1 = {max(t) / min(t) - 1:.1%}, "
              f"bytes max/min - 1 = {max(b) / min(b) - 1:.3%}  (target: within 10%)")

    for big in args.big or []:
        print(f"\nEnd to end: 3 parties x {big:,} rows x {args.d} features, regression, exact mode (Parquet)")
        r = suites.measure_ours(rec, "bigmem", "regression", n=big, d=args.d)
        if "error" in r:
            print(f"ERROR {r['error']}")
            continue
        in_memory = big * (args.d + 1) * 8 / 2 ** 20
        files = data.party_files("cohort", big, 3, d=args.d)
        print(f"wall {r['wall_seconds']:.2f} s; data on disk {data.gb_on_disk(files):.2f} GB; "
              f"one party's {args.d + 1} used columns as float64 would take {in_memory:,.0f} MB")
        for p in r["per_party"]:
            print(f"  {p['party']}: peak RSS {p['peak_rss_kb'] / 1024:,.0f} MB, local step {p['local_seconds']:.2f} s, "
                  f"secure step {p['secure_seconds']:.2f} s, sent {p['bytes_sent']:,} bytes, "
                  f"CPU {p['cpu_seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
