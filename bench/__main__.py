"""``python -m bench [--quick|--full] [--only NAME ...] [--out FILE]``: run the benchmarks.

Quick mode (the default) finishes in under two minutes on the 2-core development machine
once its data is cached (bench/.cache, written on first use); full mode sweeps up to
1e7 rows per party and takes about an hour. Results are appended as JSON lines to
``--out``; the tables and the plot are then made from this run (``bench.report``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import report, suites
from .machine import one_line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick suite (default, < 2 min)")
    mode.add_argument("--full", action="store_true", help="every sweep, up to 1e7 rows per party")
    mode.add_argument("--smallest", action="store_true", help="only the smallest case (smoke test)")
    ap.add_argument("--only", action="append", choices=sorted(suites.BENCHES), metavar="NAME",
                    help=f"run only this benchmark (repeatable): {', '.join(suites.BENCHES)}")
    ap.add_argument("--out", default=str(report.RESULTS / "latest.jsonl"), help="JSON lines file to append to")
    ap.add_argument("--plot", default=str(report.RESULTS / "scaling.png"), help="where to write the plot")
    ap.add_argument("--no-report", action="store_true", help="do not print tables or write the plot")
    ap.add_argument("--readme", action="store_true", help="also rewrite the figures in bench/README.md")
    ap.add_argument("--extend", metavar="RUN_ID", help="add these measurements to an earlier run in --out "
                    "(its report then covers both)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    suite = "full" if args.full else ("smallest" if args.smallest else "quick")
    rec = suites.Recorder(Path(args.out), suite, quiet=args.quiet, run_id=args.extend)
    if not args.quiet:
        print(f"bench {suite} run {rec.run_id} on {one_line()}", file=sys.stderr)
    t = time.perf_counter()
    if args.smallest:
        suites.smallest(rec)
    else:
        names = args.only or (suites.FULL if args.full else suites.QUICK)
        suites.run(rec, names, full=args.full)
    if not args.quiet:
        print(f"bench: {len(rec.records)} records in {time.perf_counter() - t:.1f}s -> {args.out}",
              file=sys.stderr)
    if not args.no_report and rec.records:
        records = report.load(Path(args.out), rec.run_id) if args.extend else rec.records
        text = report.markdown(records)
        print(text)
        (Path(args.out).parent / "latest.md").write_text(text)
        if report.find(records, "rows"):
            report.plot(records, Path(args.plot))
        if args.readme:
            report.update_readme(text)
    failed = [r for r in rec.records if "error" in r]
    return 1 if failed and args.smallest else 0


if __name__ == "__main__":
    sys.exit(main())
