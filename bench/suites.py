"""The benchmarks: what is measured in quick and full mode, and the records they write.

Every measurement is one JSON line (see ``Recorder.emit``) carrying the run id, the suite,
the machine, the system measured (``jointstats``, ``pooled-pandas``, ``pooled-numpy``,
``mpyc-rows`` / ``mpyc-rows-onehot``), its parameters and its figures. Baseline row counts are
capped so that they finish; beyond the cap they are extrapolated linearly from the two
largest measured sizes and the record says ``"extrapolated": true``.
"""
from __future__ import annotations

import datetime as _dt
import importlib
import json
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

from . import baselines, data, jobs, specs
from .machine import _git, describe

DP = {"epsilon": 1.0, "delta": 0}


class Recorder:
    """Collects records, appends them to the JSONL file and prints one line per record."""

    def __init__(self, out: Path, suite: str, quiet: bool = False, run_id: str | None = None):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.suite = suite
        self.run_id = run_id or _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.records: list[dict] = []
        self.quiet = quiet
        self.started = time.perf_counter()

    def emit(self, rec: dict) -> dict:
        rec = {"run_id": self.run_id, "suite": self.suite,
               "time": _dt.datetime.now().isoformat(timespec="seconds"), **rec,
               "machine": {**describe(), "git": _git()}}  # the code may change during a long run
        self.records.append(rec)
        with self.out.open("a") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")
        if not self.quiet:
            print(_line(rec), file=sys.stderr, flush=True)
        return rec


def _fmt_s(x):
    return "-" if x is None else f"{x:.3g}s"


def _line(rec: dict) -> str:
    elapsed = ""
    p = rec.get("params", {})
    what = " ".join(f"{k}={v}" for k, v in p.items() if v not in (None, False, ""))
    if "error" in rec or "skipped" in rec:
        return f"[{rec['bench']}] {rec.get('system', '')} {what}: " + (
            f"SKIPPED ({rec['skipped']})" if "skipped" in rec else f"ERROR {rec['error']}")
    s = rec.get("summary", {})
    extra = ""
    if rec["system"] == "jointstats":
        extra = (f" local {_fmt_s(s.get('local_seconds'))} secure {_fmt_s(s.get('secure_seconds'))}"
                 f" sent {s.get('secure_bytes')} B rss {s.get('peak_rss_kb')} kB")
    elif rec["system"].startswith("pooled"):
        extra = f" load+compute {_fmt_s(rec.get('load_compute_seconds'))}"
    elif rec["system"] == "machine":
        extra = (f" (python powmod {_fmt_s(rec['python_powmod_seconds'])},"
                 f" numpy matmul {_fmt_s(rec['numpy_matmul_seconds'])})")
    if rec.get("extrapolated"):
        extra += " (EXTRAPOLATED)"
    return f"[{rec['bench']}] {rec['system']} {what}: wall {_fmt_s(rec.get('wall_seconds'))}{extra}{elapsed}"


# ----------------------------------------------------------------------------- measurements


def _files(kind: str, n: int, m: int, d: int, k: int, fmt: str = "parquet") -> list[Path]:
    """The party files of a case, read once so that every system measured starts from the page cache."""
    files = data.party_files(kind, n, m, d=d, k=k, fmt=fmt)
    for f in files:
        warm_page_cache(f)
    return files


def warm_page_cache(path: Path) -> None:
    """Read a file once. This VM evicts idle file pages within minutes, so without this
    whichever system runs first on a case pays for the disk (up to 4x its read time)."""
    with open(path, "rb", buffering=0) as fh:
        while fh.read(16 << 20):
            pass


def measure_ours(rec: Recorder, bench: str, spec: str, *, n: int, m: int = 3, d: int = 10, k: int = 2,
                 dp: dict | None = None, tls: bool = False, fmt: str = "parquet", repeats: int = 1,
                 secure_repeats: int = 1, launch: str | None = None) -> dict | None:
    from jointstats.local.launch import use_launcher
    launch = launch or ("fork" if use_launcher() else "exec")
    params = {"spec": spec, "rows_per_party": n, "parties": m, "features": d, "k": k,
              "mode": "dp" if dp else "exact", "tls": tls, "format": fmt, "launch": launch}
    if secure_repeats > 1:
        params["secure_repeats"] = secure_repeats
    if dp:
        params["privacy"] = dict(dp)
    try:
        text, kind = specs.build(spec, d=d, k=k, dp=dp)
        files = _files(kind, n, m, d, k, fmt)
        runs = [jobs.run_job(text, files, tls=tls, secure_repeats=secure_repeats, launch=launch)
                for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001 - record and go on
        return rec.emit({"bench": bench, "system": "jointstats", "params": params,
                         "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
    walls = [r["wall_seconds"] for r in runs]
    median = sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
    secure = [jobs.summarize(r)["secure_seconds"] for r in runs]
    result = median["result"]["results"]
    model = result.get("model")
    return rec.emit({"bench": bench, "system": "jointstats", "params": params,
                     "wall_seconds": statistics.median(walls), "walls": walls,
                     "secure_seconds_all": secure,
                     "secure_repeat_seconds": [t for r in runs for t in (jobs.summarize(r)["secure_repeat_seconds"] or [])],
                     "summary": jobs.summarize(median), "per_party": median["parties"],
                     "data_gb": data.gb_on_disk(files),
                     "check": {"coefficients": model["coefficients"]} if model else None})


def measure_pooled(rec: Recorder, bench: str, spec: str, *, n: int, m: int = 3, d: int = 10, k: int = 2,
                   impl: str = "numpy", fmt: str = "parquet", repeats: int = 1) -> dict | None:
    params = {"spec": spec, "rows_per_party": n, "parties": m, "features": d, "k": k, "format": fmt}
    try:
        kind = specs.build(spec, d=d, k=k)[1]
        files = _files(kind, n, m, d, k, fmt)
        runs = [baselines.run_pooled(spec, files, impl=impl, d=d, k=k) for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001
        return rec.emit({"bench": bench, "system": f"pooled-{impl}", "params": params,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
    # the median run, as for ours (with one run, that run)
    best = sorted(runs, key=lambda r: r["load_compute_seconds"])[len(runs) // 2]
    res = best.pop("result")
    model = res.get("model")
    return rec.emit({"bench": bench, "system": f"pooled-{impl}", "params": params, **best,
                     "load_compute_all": [r["load_compute_seconds"] for r in runs],
                     "check": {"coefficients": model["coefficients"]} if model else None})


def measure_rows(rec: Recorder, bench: str, stat: str, *, n: int, m: int = 3, d: int = 10, k: int = 2,
                 variant: str = "compare", repeats: int = 1) -> dict | None:
    system = "mpyc-rows" if stat == "regression" or variant == "compare" else "mpyc-rows-onehot"
    params = {"spec": stat, "rows_per_party": n, "parties": m, "features": d, "k": k,
              "variant": variant if stat == "crosstab" else ""}
    try:
        kind = "cohort" if stat == "regression" else "xtab"
        files = _files(kind, n, m, d, k)
        runs = [baselines.run_rows(stat, files, d=d, k=k, variant=variant) for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001
        return rec.emit({"bench": bench, "system": system, "params": params,
                         "error": f"{type(exc).__name__}: {exc}"[:300]})
    # the median run, as for ours and the pooled baseline (with one run, that run)
    out = sorted(runs, key=lambda r: r["wall_seconds"])[len(runs) // 2]
    ps = out["parties"]
    summary = {key: max(p.get(key) or 0 for p in ps) for key in
               ("load_seconds", "connect_seconds", "share_seconds", "gram_seconds", "cells_seconds",
                "solve_seconds", "suppress_seconds", "secure_seconds", "bytes_sent", "peak_rss_kb",
                "cpu_seconds")}
    res = ps[0]["result"]
    return rec.emit({"bench": bench, "system": system, "params": params, "wall_seconds": out["wall_seconds"],
                     "walls": [r["wall_seconds"] for r in runs],
                     "summary": summary, "per_party": [{k2: v for k2, v in p.items() if k2 != "result"} for p in ps],
                     "extrapolated": False, "check": res if stat == "regression" else None})


def extrapolate(rec: Recorder, bench: str, measured: list[dict], targets: list[int]) -> None:
    """Row-sharing baseline beyond its cap: time by scaling its row-dependent phases, linearly.

    From the largest measured size n_b: wall(n) = wall(n_b) + (load + share + compute)(n_b) * (n/n_b - 1),
    where compute is X^T X or the one-hot/cell step (the slowest party's phases); the fixed
    phases (start-up, connecting, the d x d solve, suppression) are kept as measured. Per-row
    cost in MPyC grows slightly with n (Python object arrays), so this is, if anything, an
    underestimate of the baseline. Bytes and memory: straight line through the two largest sizes.
    """
    ok = sorted((r for r in measured if r and "wall_seconds" in r and not r.get("extrapolated")),
                key=lambda r: r["params"]["rows_per_party"])
    if not ok:
        return
    b = ok[-1]
    nb = b["params"]["rows_per_party"]
    sm = b["summary"]
    rowdep = sum(sm.get(k) or 0.0 for k in ("load_seconds", "share_seconds", "gram_seconds", "cells_seconds"))
    rowdep_secure = sum(sm.get(k) or 0.0 for k in ("share_seconds", "gram_seconds", "cells_seconds"))

    def line(key, n):
        if len(ok) < 2:
            return sm[key] * n / nb
        a = ok[-2]
        na = a["params"]["rows_per_party"]
        slope = max((sm[key] - a["summary"][key]) / (nb - na), 0.0)
        return sm[key] + slope * (n - nb)
    for n in targets:
        if n <= nb:
            continue
        f = n / nb - 1
        rec.emit({"bench": bench, "system": b["system"], "params": {**b["params"], "rows_per_party": n},
                  "wall_seconds": b["wall_seconds"] + rowdep * f,
                  "summary": {"secure_seconds": sm["secure_seconds"] + rowdep_secure * f,
                              "bytes_sent": int(line("bytes_sent", n)), "peak_rss_kb": int(line("peak_rss_kb", n))},
                  "extrapolated": True, "extrapolated_from": [r["params"]["rows_per_party"] for r in ok[-2:]]})


def calibrate(rec: Recorder, when: str) -> None:
    """A fixed CPU workload, so that runs (and the start and end of one run) can be compared:
    this VM's speed drifts by tens of per cent over minutes."""
    import numpy as np
    t = time.perf_counter()
    x = 3
    p = (1 << 2048) - 1557
    for _ in range(15):
        x = pow(x, p - 2, p)
    py = time.perf_counter() - t
    a = np.random.default_rng(0).random((1000, 1000))
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    blas = time.perf_counter() - t
    rec.emit({"bench": "calibration", "system": "machine", "params": {"when": when},
              "wall_seconds": py + blas, "python_powmod_seconds": py, "numpy_matmul_seconds": blas})


# ----------------------------------------------------------------------------- benchmarks


def bench_overhead(rec: Recorder, full: bool) -> None:
    """Fixed cost of a job: a count over 1000 rows per party, 3 parties (API and CLI)."""
    reps = 5 if full else 2
    measure_ours(rec, "overhead", "count", n=1000, repeats=reps)
    measure_ours(rec, "overhead", "count", n=1000, repeats=reps, launch="exec")  # a fresh interpreter per party
    measure_ours(rec, "overhead", "headline", n=1000, repeats=3 if full else 1)
    # the command line, as a user types it: includes its own interpreter start and imports
    try:
        import tempfile
        text, _ = specs.build("count")
        files = _files("cohort", 1000, 3, 10, 2)
        walls = []
        with tempfile.TemporaryDirectory(prefix="jsbench-cli-") as tmp:
            spec_path = Path(tmp) / "spec.yaml"
            spec_path.write_text(text)
            for _ in range(2 if full else 1):
                configs = jobs.write_configs(Path(tmp), files)
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "jointstats.cli.commands", "run", str(spec_path),
                                       "--parties", *map(str, configs)], capture_output=True, text=True,
                                      timeout=300)
                walls.append(time.perf_counter() - t)
                if proc.returncode:
                    raise RuntimeError(proc.stderr.strip().splitlines()[-1:])
        rec.emit({"bench": "overhead", "system": "jointstats-cli",
                  "params": {"spec": "count", "rows_per_party": 1000, "parties": 3},
                  "wall_seconds": statistics.median(walls), "walls": walls})
    except Exception as exc:  # noqa: BLE001
        rec.emit({"bench": "overhead", "system": "jointstats-cli", "params": {"spec": "count"},
                  "error": f"{type(exc).__name__}: {exc}"[:300]})


def bench_rows(rec: Recorder, full: bool) -> None:
    """Rows per party: regression d=10 (plot) and the headline job (target), with every baseline."""
    sizes = [10_000, 100_000, 1_000_000] + ([10_000_000] if full else [])
    for n in sizes:
        reps = (5 if n <= 100_000 else 3 if n <= 1_000_000 else 1) if full else 1
        measure_ours(rec, "rows", "regression", n=n, repeats=reps)
        measure_pooled(rec, "rows", "regression", n=n, impl="numpy", repeats=reps)
        if full or n >= 1_000_000:
            measure_pooled(rec, "rows", "regression", n=n, impl="pandas")
    for n in ([100_000, 1_000_000, 10_000_000] if full else [1_000_000]):
        reps = (5 if n <= 1_000_000 else 2) if full else 3  # this VM: +-40% run to run
        measure_ours(rec, "rows", "headline", n=n, repeats=reps)
        measure_pooled(rec, "rows", "headline", n=n, impl="numpy", repeats=reps)
        measure_pooled(rec, "rows", "headline", n=n, impl="pandas", repeats=1 if n > 1_000_000 else 2)
    # the row-sharing baseline: measured up to a cap, extrapolated (and labelled so) beyond it
    # the target's size (1e5 in full mode) is run 3 times, as ours is: this VM varies by +-40%
    measured = [measure_rows(rec, "rows", "regression", n=n, repeats=3 if full and n == 100_000 else 1)
                for n in ([1_000, 10_000, 100_000] if full else [10_000, 30_000])]
    extrapolate(rec, "rows", measured, sizes)


def bench_crosstab(rec: Recorder, full: bool) -> None:
    """Crosstab: k x k from 2x2 to 100x100, and the row-sharing baselines at 2x2."""
    n = 100_000 if full else 10_000
    for k in ([2, 5, 10, 20, 50, 100] if full else [2, 10]):
        measure_ours(rec, "crosstab", "crosstab", n=n, k=k, repeats=(3 if k <= 20 else 1) if full else 1)
        measure_pooled(rec, "crosstab", "crosstab", n=n, k=k, impl="numpy")
        if full:
            measure_pooled(rec, "crosstab", "crosstab", n=n, k=k, impl="pandas")
    if not full:
        measure_ours(rec, "crosstab", "crosstab", n=100_000, k=2)
    compare = [measure_rows(rec, "crosstab", "crosstab", n=x, k=2, variant="compare")
               for x in ([1_000, 10_000] if full else [1_000, 2_000])]
    extrapolate(rec, "crosstab", compare, [100_000])
    onehot = [measure_rows(rec, "crosstab", "crosstab", n=x, k=2, variant="onehot",
                           repeats=3 if full and x == 100_000 else 1)
              for x in ([10_000, 100_000, 1_000_000] if full else [10_000, 100_000])]
    extrapolate(rec, "crosstab", onehot, [100_000])
    if full:
        for k in (10, 20):
            measure_rows(rec, "crosstab", "crosstab", n=1_000, k=k, variant="compare")
            measure_rows(rec, "crosstab", "crosstab", n=10_000, k=k, variant="onehot")


def bench_parties(rec: Recorder, full: bool) -> None:
    """Number of parties: regression d=10 (and the headline job in full mode)."""
    n = 100_000 if full else 10_000
    for m in ([2, 3, 5, 7] if full else [2, 5]):
        measure_ours(rec, "parties", "regression", n=n, m=m)
        if full:
            measure_ours(rec, "parties", "headline", n=n, m=m)
            measure_pooled(rec, "parties", "regression", n=n, m=m, impl="numpy")


def bench_features(rec: Recorder, full: bool) -> None:
    """Regression features: d from 2 to 50 (the exact solve's prime fields grow with d)."""
    n = 100_000 if full else 10_000
    for d in ([2, 5, 10, 20, 30, 50] if full else [2, 20]):
        measure_ours(rec, "features", "regression", n=n, d=d)
        if full:
            measure_pooled(rec, "features", "regression", n=n, d=d, impl="numpy")
    if full:
        for d in (2, 50):
            measure_rows(rec, "features", "regression", n=1_000, d=d)


def _dp_missing() -> str | None:
    try:
        importlib.import_module("jointstats.engine.dp")
    except ImportError as exc:
        return f"jointstats.engine.dp not importable ({exc})"
    return None


def bench_dp(rec: Recorder, full: bool) -> None:
    """DP mode: the headline job and the number of noise samples (crosstab cells)."""
    why = _dp_missing()
    if why:
        rec.emit({"bench": "dp", "system": "jointstats", "params": {"mode": "dp"}, "skipped": why})
        return
    for n in ([10_000, 100_000, 1_000_000] if full else [10_000]):
        measure_ours(rec, "dp", "headline", n=n, dp=DP)
    for k in ([2, 5, 10, 20, 50] if full else [2, 10]):  # k*k noise samples
        measure_ours(rec, "dp", "crosstab", n=10_000, k=k, dp=DP)
    if full:
        measure_ours(rec, "dp", "regression", n=10_000, d=10, dp={"epsilon": 1.0, "delta": 1e-6})
        measure_ours(rec, "dp", "regression", n=10_000, d=10, dp=DP)


def bench_tls(rec: Recorder, full: bool) -> None:
    """TLS on the MPC links, on and off (if this jointstats has ``jointstats.consortium.tls``)."""
    if not jobs.tls_available():
        rec.emit({"bench": "tls", "system": "jointstats", "params": {"tls": True},
                  "skipped": "jointstats.consortium.tls not present in this checkout"})
        return
    for tls in (False, True):
        measure_ours(rec, "tls", "headline", n=10_000, tls=tls, repeats=3 if full else 1)
        if full:
            measure_ours(rec, "tls", "headline", n=1_000_000, tls=tls)


def bench_format(rec: Recorder, full: bool) -> None:
    """Data format: CSV against Parquet for the headline job at 1e6 rows per party."""
    for fmt in ("csv", "parquet"):
        measure_ours(rec, "format", "headline", n=1_000_000, fmt=fmt)
        measure_pooled(rec, "format", "headline", n=1_000_000, fmt=fmt, impl="numpy")
        measure_pooled(rec, "format", "headline", n=1_000_000, fmt=fmt, impl="pandas")


#: Runs of the secure step inside each job of the flat benchmark (see bench/_probe.py).
FLAT_SECURE_REPEATS = 7


def bench_flat(rec: Recorder, full: bool) -> None:
    """The secure step against rows per party (regression d=10): 1e4 to 1e7 rows, same work.

    Each job runs its secure step FLAT_SECURE_REPEATS times on its real partials, in the real
    party processes, and the sizes are visited in an interleaved order (8 jobs per size in
    full mode, 2 in quick), so that the median at each size is not at the mercy of this VM's
    drift.
    """
    sizes = [10_000, 100_000, 1_000_000, 10_000_000] if full else [10_000, 100_000]
    order = sizes[::2] + sizes[1::2]
    rounds = 8 if full else 2  # a slow spell of this VM spans a whole job: more jobs, not repeats
    for n in (order + order[::-1]) * (rounds // 2):
        measure_ours(rec, "flat", "regression", n=n, secure_repeats=FLAT_SECURE_REPEATS)


def bench_dpcost(rec: Recorder, full: bool) -> None:
    """DP job against the same job exact, cold and warm noise-plan cache (bench/dpcost.py)."""
    from .dpcost import bench_dpcost as run_it
    run_it(rec, full)


def bench_dp_utility(rec: Recorder, full: bool) -> None:
    """DP utility against a central curator (bench/dp_utility.py), its quick points in either mode.

    The full sweep (8 kinds x 3 n x 6 budgets x 500 runs, plus real 3-party runs) takes about
    half an hour: ``python -m bench.dp_utility``. One record per point (system ``dp-utility``).
    """
    from . import dp_utility
    out = dp_utility.run(dp_utility.QUICK, quiet=rec.quiet, mode="quick", out_dir=None,
                         real_kinds=dp_utility.QUICK.get("real_kinds"))
    for real, rows in ((False, out["summary"]), (True, out["real"])):
        for s in rows:
            params = {"kind": s["kind"], "n": s["n"], "epsilon": s["epsilon"], "delta": s["delta"], "real": real}
            rec.emit({"bench": "dp_utility", "system": "dp-utility", "params": params,
                      **{k: v for k, v in s.items() if k not in params}})


def bench_wan(rec: Recorder, full: bool) -> None:
    """Every job kind over emulated wide-area links, 0-100 ms RTT, 100 Mbit/s (bench/wan.py)."""
    from .wan import bench_wan as run_it
    run_it(rec, full)


BENCHES = {"overhead": bench_overhead, "rows": bench_rows, "crosstab": bench_crosstab,
           "parties": bench_parties, "features": bench_features, "dp": bench_dp, "tls": bench_tls,
           "flat": bench_flat, "format": bench_format, "dpcost": bench_dpcost,
           "dp_utility": bench_dp_utility, "wan": bench_wan}
QUICK = ["overhead", "rows", "crosstab", "parties", "features", "dp", "tls", "flat"]
FULL = list(BENCHES)


def smallest(rec: Recorder) -> list[dict]:
    """The smallest end-to-end case of each system (for the smoke test)."""
    return [measure_ours(rec, "smoke", "headline", n=200),
            measure_pooled(rec, "smoke", "headline", n=200, impl="numpy")]


def precompile() -> None:
    """Write the bytecode of jointstats and bench once, as a regular (non-editable) install does.

    Without it, an editable install under PYTHONDONTWRITEBYTECODE (set on the development
    machine) recompiles every module in every party process: about 0.07 s each, every job.
    """
    import compileall
    for package in (jobs.REPO / "jointstats", jobs.BENCH):
        compileall.compile_dir(str(package), quiet=1)


def run(rec: Recorder, names: list[str], full: bool) -> None:
    precompile()
    calibrate(rec, "start")
    for name in names:
        t = time.perf_counter()
        try:
            BENCHES[name](rec, full)
        except Exception:  # noqa: BLE001 - one broken benchmark must not stop the others
            rec.emit({"bench": name, "system": "-", "params": {},
                      "error": traceback.format_exc().strip().splitlines()[-1][:300]})
        if not rec.quiet:
            print(f"== {name}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    calibrate(rec, "end")
