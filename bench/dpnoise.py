"""The noise of the dpcost job alone: three party processes on loopback sample all of the job's
noise (``jointstats.engine.dp.sample_noise``, as a party does) and reveal it, repeatedly; per repeat
the slowest party's wall time and the mean CPU per party, and (first party) the AND rounds and
the bytes each party sends in them.

``python -m bench.dpnoise [--mechanism dp-gaussian|dp-laplace] [--repeats 7]``

No data, no plan building, no ledger: what the sampler itself costs, so that its share of a DP
job's extra time (``bench/dpcost.py``) can be read apart from the rest.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _plan(mechanism: str):
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    from jointstats.plan.spec import parse_spec

    from bench.dpcost import MODES, spec
    sp = parse_spec(spec(dict(MODES)[mechanism]))
    return add_noise_plans(sp, make_plan(sp, ["party_1", "party_2", "party_3"]))


async def _party(pid: int, ports: list[int], mechanism: str, repeats: int) -> dict:
    from jointstats.engine import dp as _dp
    from jointstats.mpc import runtime as _mpc
    from jointstats.mpc import speedups as _mpc_speedups
    from jointstats.noise import sampler as _noise
    _mpc_speedups.install()
    plan = _plan(mechanism)
    counted = {"rounds": 0, "bytes": 0}
    and_ = _noise._Ctx.and_

    async def counting(self, x, y):
        counted["rounds"] += 1
        counted["bytes"] += x[0].nbytes  # what this party sends: one word per 64 ANDs
        return await and_(self, x, y)
    _noise._Ctx.and_ = counting
    rt = _mpc.make_runtime(pid, [("127.0.0.1", p) for p in ports])
    await rt.start()
    runs = []
    try:
        for _ in range(repeats):
            await rt.barrier()
            counted.update(rounds=0, bytes=0)
            cpu, t0 = time.process_time(), time.perf_counter()
            noise = _dp.sample_noise(rt, plan)
            for name in noise:
                await rt.output(noise[name])
            runs.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - cpu, **counted})
    finally:
        await rt.shutdown()
    return {"runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dpnoise", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mechanism", choices=["dp-gaussian", "dp-laplace"], default="dp-gaussian")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--party", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ports", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.party is not None:
        ports = [int(p) for p in args.ports.split(",")]
        print(json.dumps(asyncio.run(_party(args.party, ports, args.mechanism, args.repeats))))
        return 0
    sys.path.insert(0, str(ROOT))
    from tests.ports import free_ports
    ports = ",".join(map(str, free_ports(3)))
    cmd = [sys.executable, "-m", "bench.dpnoise", "--mechanism", args.mechanism,
           "--repeats", str(args.repeats), "--ports", ports]
    procs = [subprocess.Popen(cmd + ["--party", str(i)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode:
            print(f"a party failed (exit {p.returncode})", file=sys.stderr)
            return 1
        results.append(json.loads(out.strip().splitlines()[-1])["runs"])
    walls = [max(r[k]["wall"] for r in results) for k in range(args.repeats)]
    cpus = [statistics.mean(r[k]["cpu"] for r in results) for k in range(args.repeats)]
    first = results[0][-1]
    print(f"{args.mechanism}: wall median {statistics.median(walls):.3f} s (min {min(walls):.3f}), "
          f"CPU per party median {statistics.median(cpus):.3f} s, {first['rounds']} AND rounds, "
          f"{first['bytes'] / 1e6:.2f} MB sent per party in them ({args.repeats} repeats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
