"""Shared fixtures: throw-away consortia of real party processes on free loopback ports."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

# free_ports: ports no outgoing connection takes before the parties bind them; a test whose run
# failed on a port clash runs once more with fresh ports (tests/ports.py)
from tests.ports import free_ports, pytest_runtest_protocol, pytest_terminal_summary  # noqa: F401


def mpc_peers(holders, compute=()) -> list[dict]:
    """The ``mpc.parties`` list of a loopback consortium: the data holders, then the compute-only
    parties (``role: compute``), each on a fresh port (tests/ports.py)."""
    ports = free_ports(len(holders) + len(compute))
    peers = [{"name": n, "host": "127.0.0.1", "port": p} for n, p in zip(holders, ports)]
    return peers + [{"name": n, "host": "127.0.0.1", "port": p, "role": "compute"}
                    for n, p in zip(compute, ports[len(holders):])]


def write_consortium(root: Path, frames: list[pd.DataFrame], *, allow_exact: bool = True,
                     policy: dict | None = None, fmt: str = "csv", names: list[str] | None = None,
                     compute: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Write one data file and one party config per frame; return the config paths.

    ``compute`` names compute-only parties (``role: compute``) listed after the data
    holders: their configs have no datasets and no data directory."""
    names = names or [f"party_{chr(97 + i)}" for i in range(len(frames))]
    peers = mpc_peers(names[:len(frames)], compute)
    paths = []
    for name, frame in zip(names, frames):
        d = root / name
        (d / "data").mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            source = f"data/{name}.parquet"
            frame.to_parquet(d / source, index=False)
        else:
            source = f"data/{name}.csv"
            frame.to_csv(d / source, index=False)
        pol = {"budget": {"epsilon": 100.0, "delta": 1.0e-4}, "max_epsilon_per_job": 10.0,
               "min_count": 0, "allow_exact": allow_exact, "analysts": {}}
        pol.update(policy or {})
        cfg = {"party": name, "mpc": {"parties": peers}, "api": {"host": "127.0.0.1", "port": 0},
               "datasets": {"cohort": {"source": source}}, "policy": pol, "state": f"state/{name}.sqlite"}
        path = d / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        paths.append(path)
    for name in compute:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        pol = {"budget": {"epsilon": 0, "delta": 0}, "max_epsilon_per_job": 10.0,
               "min_count": 0, "allow_exact": allow_exact, "analysts": {}}
        pol.update(policy or {})
        cfg = {"party": name, "mpc": {"parties": peers}, "api": {"host": "127.0.0.1", "port": 0},
               "policy": pol, "state": f"state/{name}.sqlite"}
        path = d / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        paths.append(path)
    return paths


def cohort_frame(n: int, seed: int) -> pd.DataFrame:
    """Synthetic patients with real correlations (age, bmi, sbp, visits, smoker, region)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(18, 95, n).round(1)
    smoker = rng.choice(["no", "yes"], n, p=[0.7, 0.3])
    region = rng.choice(["north", "south", "east", "west"], n)
    bmi = (18 + 0.08 * age + rng.normal(0, 4, n) + (region == "south") * 1.5).round(1)
    sbp = (90 + 0.5 * age + 0.9 * bmi + (smoker == "yes") * 6 + rng.normal(0, 10, n)).round(1)
    visits = rng.poisson(1 + age / 30)
    return pd.DataFrame({"age": age, "bmi": bmi, "sbp": sbp, "visits": visits,
                         "smoker": smoker, "region": region})


@pytest.fixture
def consortium(tmp_path):
    """Factory: ``consortium(frames, **kw)`` -> list of party config paths in tmp_path."""
    def make(frames, **kw):
        return write_consortium(tmp_path, frames, **kw)
    return make


def pytest_collection_modifyitems(config, items):
    """Mark tests by folder (``multiparty``, ``engines``); with the ``slow`` marks on single
    tests this gives the fast loop ``pytest -m "not multiparty and not slow"``."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "multiparty" in parts:
            item.add_marker(pytest.mark.multiparty)
        elif "engines" in parts:
            item.add_marker(pytest.mark.engines)
