"""Benchmark of the in-MPC noise samplers over real party processes on loopback.

    python bench/bench_noise.py                 # 3 parties, default cases, JSON lines
    python bench/bench_noise.py --no-speedups   # without jointstats.mpc.speedups.install()
    python bench/bench_noise.py --parties 5 --case dl:1:10000

Each case is one call of the sampler for n samples, from a barrier to the revealed
values (sampling + conversion into SecInt(64) + one ``rt.output``).  Printed per case:
wall seconds (slowest party), bytes each party sent to each peer during the case
(``rt.parties[i].protocol.nbytes_sent``), and the per-sample TV bound delta.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = ["dl:1:1000", "dl:1:10000", "dg:100:1000", "dg:10000000000:1000"]


def _parse(case: str) -> tuple[str, Fraction, int]:
    kind, param, n = case.split(":")
    if kind not in ("dl", "dg"):
        raise SystemExit(f"unknown sampler {kind!r} in case {case!r} (dl or dg)")
    return kind, Fraction(param), int(n)


async def _party(pid: int, ports: list[int], cases: list[str], speedups: bool) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    from jointstats.mpc import speedups as _mpc_speedups
    from jointstats.noise import sampler as _noise
    from jointstats.mpc.runtime import make_runtime
    if speedups:
        _mpc_speedups.install()
    rt = make_runtime(pid, [("127.0.0.1", p) for p in ports])
    await rt.start()
    out = []
    try:
        secint = rt.SecInt(64)
        # warm-up: plans are cached per parameter; build them before timing
        for case in cases:
            kind, param, _ = _parse(case)
            (_noise.dl_plan if kind == "dl" else _noise.dg_plan)(param)
        await rt.output(_noise.discrete_laplace(rt, secint, Fraction(1), 64))
        for case in cases:
            kind, param, n = _parse(case)
            await rt.barrier()
            sent0 = {p.pid: p.protocol.nbytes_sent for p in rt.parties if p.pid != pid}
            cpu0, t0 = time.process_time(), time.perf_counter()
            if kind == "dl":
                x = _noise.discrete_laplace(rt, secint, param, n)
                delta = _noise.discrete_laplace_delta(param)
                extra = {"scale": str(param)}
            else:
                x = _noise.discrete_gaussian(rt, secint, param, n)
                delta = _noise.discrete_gaussian_delta(param)
                extra = {"sigma2": str(param), "trials": _noise.dg_plan(param).trials}
            values = await rt.output(x)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            sent = {str(i): p.protocol.nbytes_sent - sent0[i] for i, p in enumerate(rt.parties)
                    if p.pid != pid}
            assert len(values) == n
            out.append({"case": case, "wall_seconds": wall, "cpu_seconds": cpu,
                        "bytes_sent_to_peer": sent, "delta": float(delta), **extra})
    finally:
        await rt.shutdown()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parties", type=int, default=3)
    ap.add_argument("--case", action="append", help="sampler:param:n, e.g. dl:1:10000 or dg:100:1000")
    ap.add_argument("--no-speedups", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--party", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cases = args.case or DEFAULT_CASES
    for c in cases:
        _parse(c)
    if args.party is not None:  # child: one party
        res = asyncio.run(_party(args.party, [int(p) for p in args.ports.split(",")], cases,
                                 not args.no_speedups))
        print(json.dumps(res))
        return 0

    sys.path.insert(0, str(ROOT))
    from tests.ports import free_ports
    ports = free_ports(args.parties)
    cmd = [sys.executable, __file__, "--ports", ",".join(map(str, ports))]
    for c in cases:
        cmd += ["--case", c]
    if args.no_speedups:
        cmd.append("--no-speedups")
    procs = [subprocess.Popen(cmd + ["--party", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(args.parties)]
    deadline = time.monotonic() + args.timeout
    results, errors = [], []
    for i, p in enumerate(procs):
        try:
            o, e = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            o, e = p.communicate()
            errors.append(f"party {i}: timeout")
            continue
        if p.returncode:
            errors.append(f"party {i}: exit {p.returncode}: {e[-2000:]}")
        else:
            results.append(json.loads(o.strip().splitlines()[-1]))
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    machine = {"cores": os.cpu_count(), "python": platform.python_version(),
               "platform": platform.platform()}
    for k, case in enumerate(cases):
        per = [r[k] for r in results]
        kind, param, n = _parse(case)
        line = {"bench": "noise", "sampler": "discrete_laplace" if kind == "dl" else "discrete_gaussian",
                "n": n, "parties": args.parties, "speedups": not args.no_speedups,
                "wall_seconds": round(max(r["wall_seconds"] for r in per), 4),
                "cpu_seconds_per_party": [round(r["cpu_seconds"], 4) for r in per],
                "bytes_sent_per_party": [sum(r["bytes_sent_to_peer"].values()) for r in per],
                "bytes_sent_to_peer": [r["bytes_sent_to_peer"] for r in per],
                "delta_per_sample": per[0]["delta"], "machine": machine}
        for key in ("scale", "sigma2", "trials"):
            if key in per[0]:
                line[key] = per[0][key]
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
