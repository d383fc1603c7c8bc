"""Linked (vertical) jobs: secure linkage and statistics over the linked rows, timed apart.

Three data holders on loopback, each holding some of 10 numeric columns and the target of
the same people (``--rows`` linked records; every holder also has 10% more people that
link with nobody), one job with an exact regression on all 10 columns and a correlation
of 5: the parties' own metrics split the time into the linkage (keys to pseudonyms, the
shuffles of the secret-shared rows, the grouping), the statistics over the linked rows
(secure inner products and the conversion to the secure step's input) and the rest of the
secure step (the exact solve inside the MPC); bytes sent and peak memory per party.

With ``--baseline`` it also runs, in the same invocation, the straightforward MPyC program
on data whose linkage is assumed done in the clear (``bench.mpyc_rows``: every row of the
10 columns and y secret-shared as fixed-point numbers, X^T X and X^T y on shared arrays,
Gauss-Jordan elimination; the same rows count, split over the 3 parties), and prints the
ratios. Published reference: Gascon et al. (PETS 2017), a 1e6 x 100 vertically partitioned
regression in under an hour (two-server setting).

    python -m bench.linkage [--rows 100000] [--baseline] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SPLIT = [["x1", "x2", "x3", "x4"], ["x5", "x6", "x7", "y"], ["x8", "x9", "x10"]]


def spec_text(rows: int, left: bool = False) -> str:
    cols = "\n".join(f"  x{j}: {{type: real, bounds: [-6, 6]}}" for j in range(1, 11))
    feats = ", ".join(f"x{j}" for j in range(1, 11))
    return f"""name: linkage-bench
dataset: linked
partition: vertical
link: {{key: pid, rows: {rows}{", join: left, base: hospital" if left else ""}}}
schema:
{cols}
  y: {{type: real, bounds: [-100, 100]}}
statistics:
  ols:  {{kind: regression, target: y, features: [{feats}]}}
  corr: {{kind: correlation, columns: [x1, x4, x5, x8, x10]}}
"""


def make_consortium(root: Path, rows: int, seed: int = 0, left: bool = False) -> tuple[Path, list[Path]]:
    """Data, configs and spec of the benchmark in ``root``."""
    from tests.conftest import free_ports
    rng = np.random.default_rng(seed)
    extra = rows // 10
    total = rows + 3 * extra
    x = np.clip(rng.normal(0.0, 1.5, (total, 10)), -6, 6)
    y = 1.0 + x @ np.array([(-1) ** j * (1 + j / 10) for j in range(10)]) + rng.normal(0, 3, total)
    df = pd.DataFrame(x, columns=[f"x{j}" for j in range(1, 11)]).assign(y=y)
    df["pid"] = [f"ID{i:08d}" for i in range(total)]
    ports = free_ports(3)
    names = ["hospital", "registry", "insurer"]
    peers = [{"name": n, "host": "127.0.0.1", "port": p} for n, p in zip(names, ports)]
    cfgs = []
    for i, (name, cols) in enumerate(zip(names, SPLIT)):
        mine = np.r_[np.arange(rows), rows + i * extra + np.arange(extra)]
        part = df.iloc[rng.permutation(mine)][["pid", *cols]]
        d = root / name
        (d / "data").mkdir(parents=True, exist_ok=True)
        part.to_parquet(d / "data" / "linked.parquet", index=False)
        cfg = {"party": name, "mpc": {"parties": peers}, "api": {"host": "127.0.0.1", "port": 0},
               "datasets": {"linked": {"source": "data/linked.parquet", "columns": cols}},
               "policy": {"budget": {"epsilon": 1, "delta": 0}, "allow_exact": True, "analysts": {}},
               "state": f"state/{name}.sqlite"}
        cfgs.append(d / f"{name}.yaml")
        cfgs[-1].write_text(yaml.safe_dump(cfg, sort_keys=False))
    spec = root / "spec.yaml"
    spec.write_text(spec_text(rows + extra, left))
    return spec, cfgs


def run_ours(rows: int, left: bool = False) -> dict:
    from jointstats import run
    with tempfile.TemporaryDirectory(prefix="jsbench-link-") as tmp:
        spec, cfgs = make_consortium(Path(tmp), rows, left=left)
        metrics: dict = {}
        started = time.perf_counter()
        result = run(spec, cfgs, metrics=metrics).to_dict()
        wall = time.perf_counter() - started
    per = {}
    for name, m in metrics.items():
        per[name] = {"linkage_seconds": round(m["linkage_seconds"], 2),
                     "linked_statistics_seconds": round(m["linked_statistics_seconds"], 2),
                     "solve_seconds": round(m["secure_seconds"] - m["linkage_seconds"]
                                            - m["linked_statistics_seconds"], 2),
                     "local_seconds": round(m["local_seconds"], 2),
                     "queries_seconds": round(m.get("queries_seconds", 0.0), 2),
                     "opprf_seconds": round(m.get("opprf_seconds", 0.0), 2),
                     "shuffle_seconds": round(m.get("shuffle_seconds", 0.0), 2),
                     "cpu_seconds": round(m["cpu_seconds"], 2), "bytes_sent": m["bytes_sent"], "peak_rss_mb": round(m["peak_rss_kb"] / 1024),
                     "linked_records": m["linked_records"],
                     "join": "left" if left else "inner",
                     "cpu_marks": {k[4:]: round(v, 2) for k, v in m.items() if k.startswith("cpu_") and k != "cpu_seconds"}}
    return {"rows": rows, "wall_seconds": round(wall, 2), "parties": per,
            "n": result["results"]["ols"]["n"]}


def run_baseline(rows: int) -> dict:
    """bench.mpyc_rows' regression over the same number of rows (split over 3 parties)."""
    from .baselines import run_rows
    from .data import party_files
    files = party_files("cohort", -(-rows // 3), 3, d=10)
    out = run_rows("regression", files, d=10)
    return {"wall_seconds": round(out["wall_seconds"], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.linkage")
    ap.add_argument("--rows", type=int, default=100_000, help="linked records")
    ap.add_argument("--baseline", action="store_true", help="also run the row-sharing MPyC program")
    ap.add_argument("--left", action="store_true", help="a left join on the first holder instead")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args(argv)
    ours = run_ours(args.rows, args.left)
    report = {"ours": ours}
    print(f"{args.rows} linked records, 3 parties, exact regression (10 features) + correlation (5)")
    print(f"  end to end {ours['wall_seconds']} s (linked records found: {ours['n']})")
    for name, p in ours["parties"].items():
        print(f"  {name}: linkage {p['linkage_seconds']} s (queries answered at {p['queries_seconds']} s, "
              f"tables decoded at {p['opprf_seconds']} s, shuffle and opening {p['shuffle_seconds']} s), "
              f"statistics over linked rows {p['linked_statistics_seconds']} s, solve "
              f"{p['solve_seconds']} s, local {p['local_seconds']} s, CPU {p['cpu_seconds']} s, sent {p['bytes_sent'] / 1e6:.1f} MB, "
              f"peak {p['peak_rss_mb']} MB; CPU at {p['cpu_marks']}")
    if args.baseline:
        base = run_baseline(args.rows)
        report["baseline"] = base
        stats = max(p["linked_statistics_seconds"] + p["solve_seconds"] for p in ours["parties"].values())
        print(f"  row-sharing MPyC (linkage in the clear), regression only: {base['wall_seconds']} s; "
              f"ours end to end / it = {ours['wall_seconds'] / base['wall_seconds']:.2f}, "
              f"its time / our statistics step = {base['wall_seconds'] / stats:.2f}")
    print("  reference: Gascon et al., PETS 2017: 1e6 x 100 vertical regression in under an hour")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
