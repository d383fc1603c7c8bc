"""Noise sampled by real party processes over TCP on loopback.

The test spawns ``sys.executable`` on this very file (``__main__`` below is the party
program); each party builds its MPyC runtime with ``make_runtime``, samples noise,
reveals it and writes what it saw to a JSON file.  The test then checks that all
parties agree and runs chi-square tests against the exact laws.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

P_MIN = 1e-4
DL_SCALE = Fraction(3, 2)
DG_SIGMA2 = Fraction(9, 4)


# --------------------------------------------------------------------------- party program


async def _engine_check(rt) -> list[str]:
    """Replicated AND protocol through the adder / negation / squaring circuits."""
    from jointstats.noise import sampler as _noise
    ctx = _noise._ctx(rt)
    w, n = 10, 512
    W = n // 64
    x = ctx.rand(w, W)
    s = await _noise._add_public(ctx, [x[:, i] for i in range(w)], 333, w + 1, W)
    neg = await _noise._conditional_negate(ctx, s, s[:, -1:])
    sq = await _noise._square(ctx, x)
    xv, sv, nv, qv = [(_noise.unpack(await ctx.reveal(v), n).astype(np.int64)
                       * (1 << np.arange(v.shape[1]))[:, None]).sum(0) for v in (x, s, neg, sq)]
    errors = []
    if not np.array_equal(sv, (xv + 333) % (1 << (w + 1))):
        errors.append("adder")
    signed = np.where(sv >= 1 << w, sv - (1 << (w + 1)), sv)
    if not np.array_equal(nv, np.abs(signed)):
        errors.append("conditional negation")
    if not np.array_equal(qv, xv * xv):
        errors.append("squaring")
    if len(set(xv.tolist())) < 340:  # 512 draws of 10 bits: about 403 distinct
        errors.append("random bits not random")
    return errors


async def _party(pid: int, ports: list[int], out: Path, n_dl: int, n_dg: int) -> None:
    from jointstats.mpc import speedups as _mpc_speedups
    from jointstats.noise import sampler as _noise
    from jointstats.mpc.runtime import make_runtime
    _mpc_speedups.install()
    rt = make_runtime(pid, [("127.0.0.1", p) for p in ports])
    await rt.start()
    try:
        st = rt.SecInt(64)
        # both samplers run concurrently (nothing awaited in between), as in jointstats.engine.dp
        x = _noise.discrete_laplace(rt, st, DL_SCALE, n_dl)
        y = _noise.discrete_gaussian(rt, st, DG_SIGMA2, n_dg) if n_dg else None
        # one lock-step batch of two scales and two secure types (as a DP job's noise)
        z = _noise.discrete_gaussian_many(rt, [(rt.SecInt(32), DG_SIGMA2, n_dg // 2),
                                               (st, Fraction(40), n_dg // 2)]) if n_dg else []
        dl = await rt.output(x)
        dg = await rt.output(y) if n_dg else []
        batch = [[int(v) for v in await rt.output(v)] for v in z]
        errors = await _engine_check(rt)
    finally:
        await rt.shutdown()
    out.write_text(json.dumps({"dl": [int(v) for v in dl], "dg": [int(v) for v in dg],
                               "batch": batch, "errors": errors}))


# --------------------------------------------------------------------------- test side


def _run_parties(tmp: Path, m: int, n_dl: int, n_dg: int, timeout: float = 90,
                 party_env: list[dict] | None = None) -> list[dict]:
    from tests.common import run_party_processes
    from tests.ports import free_ports
    ports = free_ports(m)
    outs = [tmp / f"party{i}.json" for i in range(m)]
    run_party_processes(__file__, [[str(i), ",".join(map(str, ports)), str(outs[i]), str(n_dl), str(n_dg)]
                                   for i in range(m)], tmp, timeout, party_env)
    return [json.loads(o.read_text()) for o in outs]


def _chisquare(samples: np.ndarray, pmf) -> float:
    from scipy import stats
    n = len(samples)
    span = int(np.abs(samples).max()) + 30
    ks = np.arange(-span, span + 1)
    p = pmf(ks)
    keep = ks[n * p >= 5]
    a, b = int(keep.min()), int(keep.max())
    obs = [np.count_nonzero(samples < a)] + [np.count_nonzero(samples == k) for k in range(a, b + 1)] \
        + [np.count_nonzero(samples > b)]
    exp = [p[ks < a].sum()] + [p[ks == k].sum() for k in range(a, b + 1)] + [p[ks > b].sum()]
    obs, exp = np.array(obs, float), np.array(exp) * n
    if exp[0] < 5:
        obs[1] += obs[0]; exp[1] += exp[0]; obs, exp = obs[1:], exp[1:]
    if exp[-1] < 5:
        obs[-2] += obs[-1]; exp[-2] += exp[-1]; obs, exp = obs[:-1], exp[:-1]
    exp *= obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


def _dl_pmf(ks):
    a = math.exp(-1 / float(DL_SCALE))
    return (1 - a) / (1 + a) * a ** np.abs(ks)


def _dg_pmf(ks):
    s2 = float(DG_SIGMA2)
    z = sum(math.exp(-k * k / (2 * s2)) for k in range(-60, 61))
    return np.exp(-(ks.astype(float) ** 2) / (2 * s2)) / z


def test_three_parties_discrete_laplace_and_gaussian(tmp_path):
    res = _run_parties(tmp_path, 3, 2000, 2000)
    for r in res:
        assert r["errors"] == []
    assert res[0]["dl"] == res[1]["dl"] == res[2]["dl"]   # all parties see the same output
    assert res[0]["dg"] == res[1]["dg"] == res[2]["dg"]
    dl = np.array(res[0]["dl"])
    dg = np.array(res[0]["dg"])
    assert len(dl) == 2000 and len(dg) == 2000
    assert _chisquare(dl, _dl_pmf) > P_MIN
    assert _chisquare(dg, _dg_pmf) > P_MIN
    assert len(set(dl[:100].tolist())) > 3
    # the batch: every party sees the same values, each draw its own law
    assert res[0]["batch"] == res[1]["batch"] == res[2]["batch"]
    small, wide = (np.array(v) for v in res[0]["batch"])
    assert len(small) == len(wide) == 1000
    assert _chisquare(small, _dg_pmf) > P_MIN
    z40 = sum(math.exp(-k * k / 80) for k in range(-200, 201))
    assert _chisquare(wide, lambda ks: np.exp(-(ks.astype(float) ** 2) / 80) / z40) > P_MIN


def test_three_parties_with_cold_warm_and_no_plan_cache(tmp_path):
    """Noise plans from a warm on-disk cache, a cold one and none at all are the same plans:
    the three parties' samples agree and follow the exact laws."""
    var = "JOINTSTATS_NOISE_PLAN_CACHE"
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    _run_parties(tmp_path, 3, 64, 64, party_env=[{var: str(warm)}, {var: "off"}, {var: "off"}])
    assert len(list(warm.glob("*.json"))) == 3  # one Laplace plan, two Gaussian plans
    res = _run_parties(tmp_path, 3, 1000, 1000,
                       party_env=[{var: str(warm)}, {var: str(cold)}, {var: "off"}])
    assert len(list(cold.glob("*.json"))) == 3
    assert sorted(f.read_bytes() for f in cold.glob("*.json")) == \
        sorted(f.read_bytes() for f in warm.glob("*.json"))
    for r in res:
        assert r["errors"] == []
    assert res[0]["dl"] == res[1]["dl"] == res[2]["dl"]
    assert res[0]["dg"] == res[1]["dg"] == res[2]["dg"]
    assert _chisquare(np.array(res[0]["dl"]), _dl_pmf) > P_MIN
    assert _chisquare(np.array(res[0]["dg"]), _dg_pmf) > P_MIN


def test_five_parties_threshold_two(tmp_path):
    """General replicated sharing: 5 parties, t = 2, 10 components per bit."""
    res = _run_parties(tmp_path, 5, 600, 0)
    for r in res:
        assert r["errors"] == []
    assert all(r["dl"] == res[0]["dl"] for r in res)
    assert _chisquare(np.array(res[0]["dl"]), _dl_pmf) > P_MIN


if __name__ == "__main__":
    _pid, _ports, _out, _n_dl, _n_dg = sys.argv[1:6]
    asyncio.run(_party(int(_pid), [int(p) for p in _ports.split(",")], Path(_out),
                       int(_n_dl), int(_n_dg)))
