"""Baseline (b): the same statistics written the straightforward MPyC way, sharing every row.

This is what a user of MPyC's array API would write without our architecture: each party
secret-shares its rows (``secfxp.array`` / ``secint.array`` inputs), and the statistic is
computed on the shared arrays. One OS process per party, over loopback TCP, with the
runtime built by ``jointstats.mpc.runtime.make_party_runtime`` (so MPyC sees no argv)::

    python -m bench.mpyc_rows --pid I --addrs h:p,h:p,... --stat regression --d 10 --file F --out OUT

Statistics:

* ``regression``: OLS of y on [1, x1..xd]. Rows shared as ``SecFxp(64, 32)`` (MPyC 0.11 fixed-point division fails above l=64); ``X^T X`` and
  ``X^T y`` with ``@`` on the shared arrays; both scaled by a public power of two near the total
  row count; then secure Gauss-Jordan elimination (d+1 secure reciprocals) and the
  coefficients revealed. (No standard errors or R^2: they would only add fixed cost.)
* ``crosstab``, variant ``compare`` (default): the two categorical codes shared as ``SecInt``;
  one-hot encodings by secure equality against each level (vectorized ``==``), cell counts
  as ``onehot_r^T @ onehot_c``, small cells suppressed by a vectorized secure ``>=``.
* ``crosstab``, variant ``onehot``: each party one-hot encodes its own rows locally and shares
  the indicator matrices (no comparisons on rows); then the same ``@`` and suppression.

Prints nothing; writes a JSON object with phase timings, bytes sent and peak memory.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

T0 = time.perf_counter()


def load(path: str, stat: str, d: int, k: int):
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow as pa
    import pyarrow.parquet as pq
    if stat == "regression":
        cols = [f"x{j}" for j in range(1, d + 1)] + ["y"]
        t = pq.read_table(path, columns=cols)
        X = np.empty((t.num_rows, d + 1))
        X[:, 0] = 1.0
        for j in range(d):
            X[:, j + 1] = t.column(f"x{j + 1}").to_numpy()
        return X, t.column("y").to_numpy()
    levels = pa.array([f"l{i}" for i in range(k)])
    t = pq.read_table(path, columns=["r", "c"])
    r = pc.index_in(t.column("r"), value_set=levels).to_numpy(zero_copy_only=False).astype(np.int64)
    c = pc.index_in(t.column("c"), value_set=levels).to_numpy(zero_copy_only=False).astype(np.int64)
    return r, c


def share_rows(rt, sectype, local, counts, pid, width):
    """Every party inputs its own rows; returns the shared rows of all parties stacked."""
    import numpy as np
    parts = []
    for sender, n in enumerate(counts):
        shape = (n, width) if width else (n,)
        values = local if sender == pid else np.zeros(shape, dtype=local.dtype)
        parts.append(rt.input(sectype.array(values), senders=sender))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


async def regression(rt, X, y, counts, pid, phases):
    import numpy as np
    secfxp = rt.SecFxp(64, 32)
    d1 = X.shape[1]
    t = time.perf_counter()
    sx = share_rows(rt, secfxp, X, counts, pid, d1)
    sy = share_rows(rt, secfxp, y, counts, pid, 0)
    await rt.barrier("shared")
    phases["share_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    gram = sx.T @ sx
    xty = sx.T @ sy
    scale = 2.0 ** -max(sum(counts).bit_length() - 1, 0)
    gram = gram * scale
    xty = xty * scale
    await rt.barrier("gram")
    phases["gram_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    # Gauss-Jordan on [A | b] (A = X^T X is positive definite: no pivoting needed)
    aug = np.concatenate((gram, xty.reshape(d1, 1)), axis=1)
    for i in range(d1):
        inv = 1 / aug[i, i]
        row = aug[i, :] * inv
        col = aug[:, i]
        aug = aug - np.outer(col, row)
        aug = np.concatenate((aug[:i], row.reshape(1, d1 + 1), aug[i + 1:]), axis=0)
    beta = await rt.output(aug[:, d1])
    phases["solve_seconds"] = time.perf_counter() - t
    return {"coefficients": [float(b) for b in beta]}


async def crosstab(rt, r, c, counts, pid, k, variant, phases, min_count=5):
    import numpy as np
    bits = max(sum(counts).bit_length() + 2, 16)
    secint = rt.SecInt(bits)
    t = time.perf_counter()
    if variant == "onehot":
        levels = np.arange(k)
        hr = (r[:, None] == levels[None, :]).astype(np.int64)
        hc = (c[:, None] == levels[None, :]).astype(np.int64)
        oh_r = share_rows(rt, secint, hr, counts, pid, k)
        oh_c = share_rows(rt, secint, hc, counts, pid, k)
        await rt.barrier("shared")
        phases["share_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
    else:
        sr = share_rows(rt, secint, r, counts, pid, 0)
        sc = share_rows(rt, secint, c, counts, pid, 0)
        await rt.barrier("shared")
        phases["share_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        levels = np.arange(k).reshape(1, k)
        oh_r = sr.reshape(-1, 1) == levels
        oh_c = sc.reshape(-1, 1) == levels
    cells = oh_r.T @ oh_c
    await rt.barrier("cells")
    phases["cells_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    keep = cells >= min_count
    shown = await rt.output(cells * keep)
    phases["suppress_seconds"] = time.perf_counter() - t
    table = [[int(v) if int(v) else None for v in row] for row in np.asarray(shown).reshape(k, k).tolist()]
    return {"table": table}


async def party(args, phases):
    from jointstats.mpc import runtime as _mpc
    addrs = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in args.addrs.split(","))]
    t = time.perf_counter()
    data = load(args.file, args.stat, args.d, args.k)
    phases["load_seconds"] = time.perf_counter() - t
    names = [f"party_{i + 1}" for i in range(len(addrs))]
    rt = _mpc.make_party_runtime(args.pid, names, addrs)
    t = time.perf_counter()
    await rt.start(120.0)
    counts = await rt.transfer(len(data[0]))
    phases["connect_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    if args.stat == "regression":
        out = await regression(rt, data[0], data[1], counts, args.pid, phases)
    else:
        out = await crosstab(rt, data[0], data[1], counts, args.pid, args.k, args.variant, phases)
    phases["secure_seconds"] = time.perf_counter() - t
    phases["bytes_sent"] = rt.bytes_sent()
    await rt.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.mpyc_rows")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--addrs", required=True)
    ap.add_argument("--stat", choices=["regression", "crosstab"], required=True)
    ap.add_argument("--variant", choices=["compare", "onehot"], default="compare")
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--file", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    phases = {"import_seconds": 0.0}
    t = time.perf_counter()
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    from jointstats.mpc import runtime as _mpc  # noqa: F401
    phases["import_seconds"] = time.perf_counter() - t
    out = asyncio.run(party(args, phases))
    phases.update(process_seconds=time.perf_counter() - T0, cpu_seconds=time.process_time())
    from jointstats.engine.party import _peak_rss_kb  # the parties' own VmHWM reader
    phases.update(peak_rss_kb=_peak_rss_kb(), result=out)
    with open(args.out, "w") as fh:
        json.dump(phases, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
