"""Jobs over emulated wide-area links (issue 16 item 6): every job kind at 0, 10, 50 and 100 ms
RTT and 100 Mbit/s per direction of each pair (bench/netem.py), against the same job on plain
loopback, 3 parties, 1e4 rows per party (the secure step does not depend on the rows).

``python -m bench --only wan`` (records in the results file, the table on stderr), or
``python -m bench.wan [--rows N] [--repeats R] [--rtt 0,10,50,100] [--kinds a,b]`` alone.

Per job kind and link: the median wall time (call to result, as ``jointstats.local.runner.run``),
the slowest party's secure step (from the plan-hash exchange to the last reveal), the bytes
sent, and the **rounds**: the longest chain of messages each sent after the one before it
arrived, counted on the wire by the emulator (bench/netem.py); a round is one one-way
latency, so each costs RTT / 2. The count is read at the largest RTT, where computing
between messages is negligible against the delay (on fast links a party can send before a
message it has just been handed is processed, and the count overstates). The **latency
slope** is the other reading: extra secure-step seconds per extra second of one-way delay,
fitted over the emulated links.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from . import dpcost, jobs, netem, specs

N_ROWS = 10_000
RTTS_MS = (0, 10, 50, 100)
MBIT = 100.0
LAPLACE = {"epsilon": 1.0, "delta": 0}
GAUSS = {"epsilon": 1.0, "delta": 1e-6}


def _spec(name: str, stats: str, dp: dict | None = None) -> str:
    return (f"name: bench-wan-{name}\ndataset: cohort\npartition: horizontal\nschema:\n"
            f"{specs._schema(10)}\n{specs._privacy(dp)}statistics:\n{stats}")


def kinds() -> dict[str, str]:
    """Job kind -> spec text (cohort data, d = 10)."""
    feats = ", ".join(f"x{j}" for j in range(1, 11))
    count = "  n: {kind: count}\n"
    crosstab = "  smoking: {kind: crosstab, rows: smoker, cols: region, min_count: 10}\n"
    means = "  mean_x1: {kind: mean, column: x1}\n  mean_y: {kind: mean, column: y}\n"
    corr = "  corr: {kind: correlation, columns: [x1, x2, y, visits]}\n"
    regression = f"  model: {{kind: regression, target: y, features: [{feats}]}}\n"
    return {
        "count": _spec("count", count),
        "crosstab": _spec("crosstab", crosstab),
        "means": _spec("means", means),
        "correlation": _spec("correlation", corr),
        "regression": _spec("regression", regression),
        "headline exact": dpcost.spec(None),
        "dp count": _spec("dp-count", count, LAPLACE),
        "dp crosstab": _spec("dp-crosstab", crosstab, LAPLACE),
        "dp means": _spec("dp-means", means, LAPLACE),
        "dp regression": _spec("dp-regression", regression, LAPLACE),
        "headline dp delta 0": dpcost.spec(LAPLACE),
        "headline dp delta 1e-6": dpcost.spec(GAUSS),
    }


#: the kinds the quick variant (``--kinds``-less run of ``bench_wan`` with full=False) measures
QUICK_KINDS = ("count", "crosstab", "means", "correlation", "regression",
               "headline dp delta 0", "headline dp delta 1e-6")


def run_once(text: str, files: list[Path], rtt_ms: float | None, mbit: float | None = MBIT,
             patch: str | None = None) -> dict:
    """One job: plain loopback (``rtt_ms`` None) or through emulated links; adds ``net``.
    ``patch``: a what-if of bench/_probe.py (its parties then start in fresh interpreters)."""
    if rtt_ms is None:
        out = jobs.run_job(text, files, patch=patch)
        out["net"] = None
        return out
    with netem.LinkEmulator(rtt=rtt_ms / 1000.0, mbit=mbit) as net:
        with netem.per_party_addresses():
            out = jobs.run_job(text, files, peers_of=net.peer_lists, patch=patch)
        out["net"] = net.stats()
    return out


def step_seconds(run: dict) -> dict[str, float]:
    """The slowest party's seconds per step of one job: each statistic's secure step
    (``name/secure``, or ``name/prepare`` and ``name/reveal`` in DP mode: they run
    concurrently, each timed from its own start), the status exchange (``sync``) and the
    closing barrier (``close``)."""
    out: dict[str, float] = {}
    for party in run["parties"]:
        for st in party.get("stats") or []:
            key = f"{st['name']}/{st['phase']}"
            out[key] = max(out.get(key, 0.0), st["seconds"])
        for key in ("sync_seconds", "close_seconds"):
            if party.get(key) is not None:
                out[key[:-8]] = max(out.get(key[:-8], 0.0), party[key])
    return out


def step_rounds(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per job kind and step, the latency slope of the step's seconds over the one-way delay
    of the emulated links: how many one-way latencies (rounds) the step waits for."""
    out: dict[str, dict[str, float]] = {}
    for r in records:
        if r.get("params", {}).get("link") != "emulated" or not r.get("steps_all"):
            continue
        pts = out.setdefault(r["params"]["kind"], {})
        for steps in r["steps_all"]:
            for key, secs in steps.items():
                pts.setdefault(key, []).append((r["params"]["rtt_ms"] / 2000.0, secs))
    return {kind: {k: _slope(v) for k, v in steps.items()} for kind, steps in out.items()}


def _slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return (sum((x - mx) * (y - my) for x, y in points)
            / sum((x - mx) ** 2 for x, _ in points))


def measure(rec, *, names: list[str] | None = None, n: int = N_ROWS, repeats: int = 3,
            rtts_ms=RTTS_MS, mbit: float = MBIT, patch: str | None = None) -> list[dict]:
    """Every kind: one unmeasured warm-up, then ``repeats`` rounds over the links (loopback
    first, then each RTT), medians; one record per (kind, link)."""
    from .suites import _files
    files = _files("cohort", n, 3, 10, 2)
    table = kinds()
    names = list(names or table)
    links = [None] + list(rtts_ms)
    records = []
    for name in names:
        text = table[name]
        try:
            run_once(text, files, None, patch=patch)  # warm-up: launcher, page cache, plan cache
            runs: dict = {link: [] for link in links}
            for _ in range(repeats):
                for link in links:
                    runs[link].append(run_once(text, files, link, mbit, patch))
        except Exception as exc:  # noqa: BLE001 - record it, go on with the next kind
            records.append(rec.emit({"bench": "wan", "system": "jointstats",
                                     "params": {"kind": name, "rows_per_party": n, "parties": 3},
                                     "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}))
            continue
        loop_wall = statistics.median(r["wall_seconds"] for r in runs[None])
        secure_pts = [(link / 2000.0, jobs.summarize(r)["secure_seconds"])
                      for link in rtts_ms for r in runs[link]]
        wall_pts = [(link / 2000.0, r["wall_seconds"]) for link in rtts_ms for r in runs[link]]
        top = max(rtts_ms)
        rounds_top = statistics.median(r["net"]["rounds"] for r in runs[top])
        for link in links:
            rs = runs[link]
            walls = [r["wall_seconds"] for r in rs]
            median_run = sorted(rs, key=lambda r: r["wall_seconds"])[len(rs) // 2]
            secure = [jobs.summarize(r)["secure_seconds"] for r in rs]
            params = {"kind": name + (f" [{patch}]" if patch else ""), "rows_per_party": n, "parties": 3,
                      "link": "loopback" if link is None else "emulated",
                      "rtt_ms": 0 if link is None else link, "mbit": None if link is None else mbit}
            out = {"bench": "wan", "system": "jointstats", "params": params,
                   "wall_seconds": statistics.median(walls), "walls": walls,
                   "secure_seconds": statistics.median(secure), "secure_seconds_all": secure,
                   "over_loopback": statistics.median(walls) / loop_wall,
                   "loopback_wall_seconds": loop_wall,
                   "rounds_at_max_rtt": rounds_top,
                   "secure_slope_per_oneway_second": _slope(secure_pts),
                   "wall_slope_per_oneway_second": _slope(wall_pts),
                   "summary": jobs.summarize(median_run),
                   "steps_all": [step_seconds(r) for r in rs]}
            if link is not None:
                out["rounds"] = [r["net"]["rounds"] for r in rs]
                out["wire_bytes"] = median_run["net"]["bytes"]
                out["net"] = median_run["net"]
            records.append(rec.emit(out))
    return records


def _f(x):
    return "–" if x is None else (f"{x:.3g} s" if x >= 0.01 else f"{x * 1000:.2g} ms")


def table(records: list[dict]) -> str:
    """Markdown: per job kind, wall at each link (and the secure step), rounds, latency slope."""
    ok = [r for r in records if "wall_seconds" in r]
    rtts = sorted({r["params"]["rtt_ms"] for r in ok if r["params"]["link"] == "emulated"})
    head = ["job kind (3 x 1e4 rows)", "loopback"] + [f"{x} ms RTT" for x in rtts] + [
        "rounds", "slope (s per s of one-way delay)", "bytes on the wire"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    names = list(dict.fromkeys(r["params"]["kind"] for r in ok))
    for name in names:
        rs = {(r["params"]["link"], r["params"]["rtt_ms"]): r for r in ok if r["params"]["kind"] == name}
        base = rs.get(("loopback", 0))
        if base is None:
            continue
        cells = [name, f"{_f(base['wall_seconds'])} ({_f(base['secure_seconds'])})"]
        for x in rtts:
            r = rs.get(("emulated", x))
            cells.append("–" if r is None else f"{_f(r['wall_seconds'])} ({_f(r['secure_seconds'])})")
        slope = base.get("secure_slope_per_oneway_second")
        top = rs.get(("emulated", rtts[-1])) if rtts else None
        cells += [f"{base['rounds_at_max_rtt']:g}", "–" if slope is None else f"{slope:.0f}",
                  "–" if top is None else f"{top['wire_bytes'] / 1e6:.2f} MB"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def steps_table(records: list[dict]) -> str:
    """Markdown: per job kind, the rounds of each step (latency slopes, see ``step_rounds``)."""
    lines = ["| job kind | step | rounds (latency slope) |", "| --- | --- | --- |"]
    for kind, steps in step_rounds(records).items():
        for key, slope in sorted(steps.items()):
            if slope is not None:
                lines.append(f"| {kind} | {key} | {slope:.1f} |")
    return "\n".join(lines)


def target(records: list[dict]) -> str | None:
    """The issue's target: the headline DP job at 50 ms RTT <= 2 x loopback + 2 s."""
    out = []
    for name in ("headline dp delta 0", "headline dp delta 1e-6"):
        rs = {(r["params"]["link"], r["params"]["rtt_ms"]): r for r in records
              if "wall_seconds" in r and r["params"]["kind"] == name}
        base, at50 = rs.get(("loopback", 0)), rs.get(("emulated", 50))
        if base and at50:
            bound = 2 * base["wall_seconds"] + 2
            out.append(f"{name}: {at50['wall_seconds']:.2f} s at 50 ms RTT against "
                       f"2 x {base['wall_seconds']:.2f} s + 2 s = {bound:.2f} s: "
                       + ("met" if at50["wall_seconds"] <= bound else "NOT met"))
    return "\n".join(out) or None


def bench_wan(rec, full: bool) -> None:
    """Every job kind over emulated links (full), or the issue's kinds (quick variant)."""
    records = measure(rec, names=None if full else list(QUICK_KINDS), repeats=5 if full else 3)
    if not rec.quiet:
        print(table(records), file=sys.stderr, flush=True)
        t = target(records)
        if t:
            print(t, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from .machine import one_line
    from .report import RESULTS
    from .suites import Recorder, precompile
    ap = argparse.ArgumentParser(prog="python -m bench.wan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=N_ROWS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rtt", default=",".join(map(str, RTTS_MS)), help="RTTs in ms, comma-separated")
    ap.add_argument("--mbit", type=float, default=MBIT)
    ap.add_argument("--kinds", default=None, help=f"comma-separated, of: {', '.join(kinds())}")
    ap.add_argument("--patch", default=None, help="a what-if of bench/_probe.py, e.g. log_coins")
    ap.add_argument("--out", default=str(RESULTS / "latest.jsonl"))
    args = ap.parse_args(argv)
    precompile()
    rec = Recorder(Path(args.out), "wan")
    print(f"bench wan run {rec.run_id} on {one_line()}", file=sys.stderr)
    names = [k.strip() for k in args.kinds.split(",")] if args.kinds else None
    records = measure(rec, names=names, n=args.rows, repeats=args.repeats,
                      rtts_ms=[float(x) if "." in x else int(x) for x in args.rtt.split(",")],
                      mbit=args.mbit, patch=args.patch)
    print(table(records))
    t = target(records)
    if t:
        print(t)
    print(steps_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
