"""Running the baselines as their own processes: pooled plaintext and row-sharing MPyC."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .jobs import REPO, free_ports


def run_pooled(spec: str, files: list[Path], *, impl: str, d: int = 10, k: int = 2) -> dict:
    """Baseline (a) in a fresh process; wall time includes interpreter start and imports."""
    cmd = [sys.executable, "-m", "bench.pooled", "--spec", spec, "--impl", impl, "--d", str(d),
           "--k", str(k), *map(str, files)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"pooled baseline failed: {proc.stderr.strip().splitlines()[-1:]}")
    out = json.loads(proc.stdout)
    out["wall_seconds"] = wall
    out["load_compute_seconds"] = out["load_seconds"] + out["compute_seconds"]
    return out


def run_rows(stat: str, files: list[Path], *, d: int = 10, k: int = 2, variant: str = "",
             timeout: float = 3600) -> dict:
    """Baseline (b): bench/mpyc_rows.py, one process per party over loopback."""
    m = len(files)
    ports = free_ports(m)
    addrs = ",".join(f"127.0.0.1:{p}" for p in ports)
    from jointstats.local.runner import party_environment
    env = party_environment(m)  # the same thread limits as our party processes get
    with tempfile.TemporaryDirectory(prefix="jsbench-rows-") as tmp:
        procs = []
        t = time.perf_counter()
        for i, f in enumerate(files):
            out = Path(tmp) / f"{i}.json"
            cmd = [sys.executable, "-m", "bench.mpyc_rows", "--pid", str(i), "--addrs", addrs,
                   "--stat", stat, "--d", str(d), "--k", str(k), "--file", str(f), "--out", str(out)]
            if variant:
                cmd += ["--variant", variant]
            procs.append((subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                           text=True, env=env), out))
        errors = []
        try:
            for proc, _ in procs:
                _, err = proc.communicate(timeout=max(timeout - (time.perf_counter() - t), 1))
                if proc.returncode:
                    errors.append(err.strip().splitlines()[-1:] if err else proc.returncode)
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        wall = time.perf_counter() - t
        if errors:
            raise RuntimeError(f"row-sharing baseline failed: {errors}")
        parties = [json.loads(out.read_text()) for _, out in procs]
    return {"wall_seconds": wall, "parties": parties}
