"""Figures from a results file: the markdown tables for the README and the scaling plot.

``python -m bench.report [--in bench/results/latest.jsonl] [--run RUN_ID] [--plot PNG] [--readme]``
uses the last run in the file unless ``--run`` is given; ``--readme`` rewrites the figures
section of bench/README.md (between the ``bench:figures`` markers).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from .machine import one_line

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
START, END = "<!-- bench:figures:start -->", "<!-- bench:figures:end -->"


def load(path: Path, run_id: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not recs:
        return []
    run_id = run_id or recs[-1]["run_id"]
    return [r for r in recs if r["run_id"] == run_id]


def _ok(r):
    return r is not None and "wall_seconds" in r


def find(recs, bench=None, system=None, **params):
    """Records matching bench/system and every given parameter (bench=None: any bench)."""
    out = []
    for r in recs:
        if not _ok(r) or (bench and r["bench"] != bench) or (system and r["system"] != system):
            continue
        p = r.get("params", {})
        if all(p.get(k) == v for k, v in params.items()):
            out.append(r)
    return out


def one(recs, bench=None, system=None, **params):
    """The matching record (measured preferred over extrapolated; the last if several)."""
    found = find(recs, bench, system, **params)
    measured = [r for r in found if not r.get("extrapolated")]
    return (measured or found or [None])[-1]


def s(x, unit="s"):
    if x is None:
        return "–"
    if unit == "s":
        return f"{x:.3g} s" if x >= 0.01 else f"{x * 1000:.2g} ms"
    if unit == "B":
        for u, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
            if x >= f:
                return f"{x / f:.3g} {u}"
        return f"{x:.0f} B"
    if unit == "kB":
        return f"{x / 1024:.0f} MB"
    if unit == "x":
        return f"{x:.3g}x"
    return str(x)


def rows_label(n):
    return f"1e{len(str(n)) - 1}" if str(n).strip("0") == "1" else f"{n:,}"


def pooled_best(recs, bench=None, **params):
    cands = [one(recs, bench, f"pooled-{impl}", **params) for impl in ("numpy", "pandas")]
    cands = [c for c in cands if c]
    return min(cands, key=lambda r: r["load_compute_seconds"]) if cands else None


def _mark(ok):
    return "–" if ok is None else ("**met**" if ok else "**not met**")


def targets(recs) -> list[str]:
    lines = ["| Target | Measured | |", "| --- | --- | --- |"]
    # 1. headline vs pooled
    for n, limit in ((1_000_000, 2.0), (10_000_000, 1.5)):
        ours = one(recs, "rows", "jointstats", spec="headline", rows_per_party=n)
        pn = one(recs, "rows", "pooled-numpy", spec="headline", rows_per_party=n)
        pp = one(recs, "rows", "pooled-pandas", spec="headline", rows_per_party=n)
        if not ours or not (pn or pp):
            lines.append(f"| 3 parties x {rows_label(n)} rows x 10 features, regression + demo statistics, "
                         f"exact: at most {limit}x pooled plaintext | not measured in this run | – |")
            continue
        parts, best = [], None
        for p, name in ((pn, "numpy"), (pp, "pandas + statsmodels")):
            if p:
                ratio = ours["wall_seconds"] / p["load_compute_seconds"]
                best = ratio if best is None else max(best, ratio)
                parts.append(f"{ratio:.2g}x {name} ({s(p['load_compute_seconds'])} load+compute; "
                             f"{ours['wall_seconds'] / p['wall_seconds']:.2g}x its whole process)")
        lines.append(f"| 3 parties x {rows_label(n)} rows x 10 features, regression + demo statistics, exact: "
                     f"at most {limit}x pooled plaintext | ours {s(ours['wall_seconds'])} end to end; "
                     + "; ".join(parts) + f" | {_mark(best <= limit)} |")
    # 2. 100x faster than row sharing at 1e5
    for label, ours_q, base in (
            ("regression", dict(bench="rows", spec="regression", rows_per_party=100_000),
             [("mpyc-rows", dict(spec="regression", rows_per_party=100_000))]),
            ("crosstab", dict(bench="crosstab", spec="crosstab", rows_per_party=100_000, k=2),
             [("mpyc-rows", dict(spec="crosstab", rows_per_party=100_000, k=2, variant="compare")),
              ("mpyc-rows-onehot", dict(spec="crosstab", rows_per_party=100_000, k=2, variant="onehot"))])):
        ours = one(recs, ours_q.pop("bench"), "jointstats", **ours_q)
        parts, worst = [], None
        for system, q in base:
            b = one(recs, None, system, **q)
            if not ours or not b:
                continue
            ratio = b["wall_seconds"] / ours["wall_seconds"]
            worst = ratio if worst is None else min(worst, ratio)
            sec = b["summary"].get("secure_seconds") / max(ours["summary"]["secure_seconds"], 1e-9)
            tag = " (extrapolated)" if b.get("extrapolated") else ""
            parts.append(f"{system}{'' if system != 'mpyc-rows' or label == 'regression' else ' (compare)'}"
                         f" {s(b['wall_seconds'])}{tag}: {ratio:.3g}x end to end, {sec:.3g}x secure step")
        measured = f"ours {s(ours['wall_seconds'])}; " + "; ".join(parts) if ours and parts else "not measured"
        lines.append(f"| {label} at 1e5 rows per party: at least 100x faster than row-sharing MPyC "
                     f"| {measured} | {_mark(None if worst is None else worst >= 100)} |")
    # 3. flat secure step: the flat benchmark's repeated secure steps if this run has them
    pts = sorted(find(recs, None, "jointstats", spec="regression", parties=3, features=10, mode="exact"),
                 key=lambda r: r["params"]["rows_per_party"])
    repeated = [r for r in pts if r["bench"] == "flat" and r.get("secure_repeat_seconds")]
    pts = repeated or [r for r in pts if r["bench"] in ("rows", "flat")]
    if len({r["params"]["rows_per_party"] for r in pts}) >= 2:
        times = {}
        sent = {}
        for r in pts:
            n = r["params"]["rows_per_party"]
            times.setdefault(n, []).extend(r.get("secure_repeat_seconds") or r.get("secure_seconds_all")
                                           or [r["summary"]["secure_seconds"]])
            sent[n] = r["summary"]["secure_bytes"]
        med = {n: statistics.median(v) for n, v in times.items()}
        lo, hi = min(med.values()), max(med.values())
        blo, bhi = min(sent.values()), max(sent.values())
        spread_t = hi / lo - 1
        spread_b = bhi / blo - 1
        # least-squares trend of the secure time in the rows, over the measured range
        xs = [n for n, v in times.items() for _ in v]
        ys = [y for v in times.values() for y in v]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0
        trend = slope * (max(med) - min(med)) / my if my else 0.0
        how = (f"median of {min(len(v) for v in times.values())}+ secure steps per size "
               f"({len(pts) // len(times)} jobs each, interleaved); " if repeated else "")
        lines.append(f"| secure step flat within 10% from 1e4 to 1e7 rows per party (regression d=10) "
                     f"| {how}{rows_label(min(med))}..{rows_label(max(med))} rows: time {s(lo)}..{s(hi)} "
                     f"(max/min +{spread_t:.0%}; least-squares trend over the range {trend:+.0%}), "
                     f"bytes {s(blo, 'B')}..{s(bhi, 'B')} (+{spread_b:.2%}) "
                     f"| {_mark(spread_t <= 0.10 and spread_b <= 0.10)}"
                     f"{'' if max(med) >= 10_000_000 else ' (up to ' + rows_label(max(med)) + ' only)'} |")
    # 4. fixed overhead
    ov = (one(recs, "overhead", "jointstats", spec="count", rows_per_party=1000, launch="fork")
          or one(recs, "overhead", "jointstats", spec="count", rows_per_party=1000))
    ov_exec = one(recs, "overhead", "jointstats", spec="count", rows_per_party=1000, launch="exec")
    cli = one(recs, "overhead", "jointstats-cli", spec="count")
    head = one(recs, "overhead", "jointstats", spec="headline", rows_per_party=1000)
    if ov:
        worst = max([ov["wall_seconds"]] + [r["wall_seconds"] for r in (ov_exec, cli) if r])
        lines.append(f"| fixed overhead of a job (process start to result) at most 2 s, 3 parties | "
                     f"count job, 1e3 rows: {s(ov['wall_seconds'])} via the Python API "
                     f"(parties forked from the launcher; min {s(min(ov['walls']))})"
                     + (f", {s(ov_exec['wall_seconds'])} with a fresh interpreter per party "
                        f"(`JOINTSTATS_LAUNCH=exec`)" if ov_exec and ov_exec is not ov else "")
                     + (f", {s(cli['wall_seconds'])} via `jointstats run` (its own start and the "
                        f"launcher's included)" if cli else "")
                     + (f"; the headline job at 1e3 rows: {s(head['wall_seconds'])}" if head else "")
                     + f" | {_mark(worst <= 2.0)} |")
    return lines


def agreement(recs) -> str | None:
    """Largest relative difference between our regression coefficients and pooled numpy's."""
    worst, count = 0.0, 0
    for r in recs:
        if r["system"] != "jointstats" or not _ok(r) or not r.get("check"):
            continue
        p = {k: v for k, v in r["params"].items() if k in ("spec", "rows_per_party", "parties", "features", "format")}
        other = one(recs, r["bench"], "pooled-numpy", **p)
        if not other or not other.get("check"):
            continue
        for a, b in zip(r["check"]["coefficients"], other["check"]["coefficients"]):
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
        count += 1
    if not count:
        return None
    return (f"Same answers: over {count} regression{'s' if count > 1 else ''} measured against pooled numpy in this run, "
            f"the largest relative difference of a coefficient is {worst:.1e}.")


def scaling_table(recs) -> list[str]:
    lines = ["| Rows per party | jointstats (end to end) | its secure step | pooled numpy | pooled pandas + statsmodels "
             "| row-sharing MPyC | ours / pooled (fastest) | row-sharing / ours |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    sizes = sorted({r["params"]["rows_per_party"] for r in find(recs, "rows", spec="regression")})
    for n in sizes:
        ours = one(recs, "rows", "jointstats", spec="regression", rows_per_party=n)
        pn = one(recs, "rows", "pooled-numpy", spec="regression", rows_per_party=n)
        pp = one(recs, "rows", "pooled-pandas", spec="regression", rows_per_party=n)
        mr = one(recs, "rows", "mpyc-rows", spec="regression", rows_per_party=n)
        best = pooled_best(recs, "rows", spec="regression", rows_per_party=n)
        lines.append(" | ".join([
            f"| {rows_label(n)}",
            s(ours and ours["wall_seconds"]), s(ours and ours["summary"]["secure_seconds"]),
            s(pn and pn["load_compute_seconds"]), s(pp and pp["load_compute_seconds"]),
            (s(mr["wall_seconds"]) + (" (extrapolated)" if mr.get("extrapolated") else "")) if mr else "–",
            s(ours["wall_seconds"] / best["load_compute_seconds"], "x") if ours and best else "–",
            s(mr["wall_seconds"] / ours["wall_seconds"], "x") if ours and mr else "–"]) + " |")
    return lines


def _job_line(r, label):
    sm = r["summary"]
    return (f"| {label} | {s(r['wall_seconds'])} | {s(sm.get('local_seconds'))} | {s(sm.get('secure_seconds'))} "
            f"| {s(sm.get('secure_bytes'), 'B')} | {s(sm.get('peak_rss_kb'), 'kB')} | {s(sm.get('cpu_seconds'))} |")


def sweeps(recs) -> list[str]:
    lines = ["| Job (jointstats, exact unless noted) | Wall | Local step (max) | Secure step (max) "
             "| Secure bytes sent per party | Peak RSS per party | CPU per party |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in find(recs, "rows", "jointstats", spec="headline"):
        lines.append(_job_line(r, f"headline, 3 parties, {rows_label(r['params']['rows_per_party'])} rows"))
    for r in find(recs, "parties", "jointstats"):
        p = r["params"]
        lines.append(_job_line(r, f"{p['spec']} d=10, {p['parties']} parties, {rows_label(p['rows_per_party'])} rows"))
    for r in find(recs, "features", "jointstats"):
        p = r["params"]
        lines.append(_job_line(r, f"regression d={p['features']}, 3 parties, {rows_label(p['rows_per_party'])} rows"))
    for r in find(recs, "crosstab", "jointstats"):
        p = r["params"]
        lines.append(_job_line(r, f"crosstab {p['k']}x{p['k']}, 3 parties, {rows_label(p['rows_per_party'])} rows"))
    for r in find(recs, "dp", "jointstats"):
        p = r["params"]
        what = f"crosstab {p['k']}x{p['k']} ({p['k'] ** 2} noise samples)" if p["spec"] == "crosstab" else p["spec"]
        mech = ("discrete Gaussian" if (p.get("privacy") or {}).get("delta") else "discrete Laplace")
        lines.append(_job_line(r, f"DP ({mech}) {what}, 3 parties, {rows_label(p['rows_per_party'])} rows"))
    for r in find(recs, "tls", "jointstats"):
        p = r["params"]
        lines.append(_job_line(r, f"headline, TLS {'on' if p['tls'] else 'off'}, {rows_label(p['rows_per_party'])} rows"))
    for r in find(recs, "format", "jointstats"):
        p = r["params"]
        lines.append(_job_line(r, f"headline from {p['format']}, {rows_label(p['rows_per_party'])} rows"))
    skipped = [r for r in recs if "skipped" in r]
    errors = [r for r in recs if "error" in r]
    out = lines
    if skipped:
        out += [""] + [f"Skipped: {r['bench']}: {r['skipped']}." for r in skipped]
    if errors:
        out += [""] + [f"Failed: {r['bench']} {r.get('system', '')} {r.get('params', {})}: {r['error']}"
                       for r in errors]
    return out


def baselines_table(recs) -> list[str]:
    rows = [r for r in recs if _ok(r) and r["system"].startswith("mpyc-rows")]
    if not rows:
        return []
    lines = ["| Row-sharing MPyC baseline | Rows per party | Wall | Sharing rows | Computing on rows "
             "| Bytes sent per party | Peak RSS per party |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        p, sm = r["params"], r["summary"]
        what = p["spec"] + (f" {p['k']}x{p['k']} ({p.get('variant')})" if p["spec"] == "crosstab"
                            else f" d={p['features']}")
        comp = sm.get("gram_seconds") or sm.get("cells_seconds")
        tag = " (extrapolated)" if r.get("extrapolated") else ""
        lines.append(f"| {what} | {rows_label(p['rows_per_party'])}{tag} | {s(r['wall_seconds'])} "
                     f"| {s(sm.get('share_seconds'))} | {s(comp)} | {s(sm.get('bytes_sent'), 'B')} "
                     f"| {s(sm.get('peak_rss_kb'), 'kB')} |")
    return lines


def markdown(recs) -> str:
    if not recs:
        return "No results."
    m = recs[0]["machine"]
    head = [f"Run `{recs[0]['run_id']}` ({recs[0]['suite']} mode), {recs[0]['time'][:10]}, "
            f"commit {m['git']['commit']}{' (with local changes)' if m['git']['dirty'] else ''}.",
            f"Machine: {one_line(m)}."]
    cal = [r for r in recs if r["bench"] == "calibration" and "wall_seconds" in r]
    if len(cal) >= 2:
        head.append(f"Machine speed check (fixed CPU workload) at start / end of the run: "
                    f"{cal[0]['wall_seconds']:.2f} s / {cal[-1]['wall_seconds']:.2f} s.")
    head.append("")
    agree = agreement(recs)
    parts = head + ["**Targets**", ""] + targets(recs) + ([""] + [agree] if agree else []) + ["", "**Scaling in rows per party** "
                                                         "(3 parties, OLS regression on 10 features, exact mode; "
                                                         "pooled plaintext timed as load + compute)", ""]
    parts += scaling_table(recs) + ["", "**Sweeps**", ""] + sweeps(recs)
    bt = baselines_table(recs)
    if bt:
        parts += ["", "**Row-sharing baseline details**", ""] + bt
    dpcost = [r for r in recs if r.get("bench") == "dpcost" and "wall_seconds" in r]
    if dpcost:
        from .dpcost import table as dpcost_table
        parts += ["", "**Cost of a DP job** (bench/dpcost.py)", "", dpcost_table(dpcost)]
    return "\n".join(parts) + "\n"


def plot(recs, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))

    def series(system, key=lambda r: r["wall_seconds"], spec="regression", extrapolated=None):
        pts = []
        for r in find(recs, "rows", system, spec=spec):
            if extrapolated is not None and bool(r.get("extrapolated")) != extrapolated:
                continue
            pts.append((r["params"]["rows_per_party"], key(r)))
        return sorted(pts)

    def draw(pts, **kw):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], **kw)

    draw(series("jointstats"), marker="o", color="C0", label="jointstats, end to end")
    draw(series("jointstats", key=lambda r: r["summary"]["secure_seconds"]), marker="o", ls=":", color="C0",
         label="jointstats, secure step only")
    meas = series("mpyc-rows", extrapolated=False)
    ext = series("mpyc-rows", extrapolated=True)
    draw(meas, marker="s", color="C3", label="row-sharing MPyC (secfxp arrays)")
    if ext and meas:
        draw([meas[-1]] + ext, marker="s", mfc="none", ls="--", color="C3", label="row-sharing MPyC, extrapolated")
    draw(series("pooled-pandas", key=lambda r: r["load_compute_seconds"]), marker="^", color="C2",
         label="pooled plaintext, pandas + statsmodels (load + compute)")
    draw(series("pooled-numpy", key=lambda r: r["load_compute_seconds"]), marker="v", color="C1",
         label="pooled plaintext, numpy normal equations (load + compute)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows per party (3 parties)")
    ax.set_ylabel("seconds")
    ax.set_title("OLS on 10 features, exact, 3 parties on loopback", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    m = recs[0]["machine"]
    fig.text(0.01, 0.01, f"{m['cpu_model']}, {m['cores']} cores; Python {m['python']}, MPyC {m['mpyc']}; "
             f"run {recs[0]['run_id']}", fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def update_readme(text: str, readme: Path = BENCH / "README.md") -> None:
    body = readme.read_text()
    if START not in body or END not in body:
        raise SystemExit(f"{readme}: markers {START} / {END} not found")
    pre, rest = body.split(START, 1)
    _, post = rest.split(END, 1)
    readme.write_text(pre + START + "\n" + text + END + post)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report")
    ap.add_argument("--in", dest="src", default=str(RESULTS / "latest.jsonl"))
    ap.add_argument("--run", default=None)
    ap.add_argument("--plot", default=str(RESULTS / "scaling.png"))
    ap.add_argument("--readme", action="store_true", help="rewrite the figures section of bench/README.md")
    args = ap.parse_args(argv)
    recs = load(Path(args.src), args.run)
    text = markdown(recs)
    print(text)
    (RESULTS / "latest.md").write_text(text)
    if args.plot and find(recs, "rows"):
        plot(recs, Path(args.plot))
    if args.readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
