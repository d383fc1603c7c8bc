"""Synthetic party data for the benchmarks, written once per shape and cached on disk.

Two kinds of dataset:

* ``cohort``: numeric features ``x1..xD`` (real, N(0, 1.5^2) clipped to [-6, 6]), a target
  ``y`` linear in them plus a smoker effect and noise, ``visits`` (integer, Poisson) and the
  categoricals ``smoker`` (no/yes) and ``region`` (north/south/east/west);
* ``xtab``: two categorical columns ``r`` and ``c`` with K levels each (``l0``..), with a
  dependence between them so the table is not uniform.

Files are Parquet (row groups of 2**20 rows, strings plain on the Arrow side) or CSV, named
by kind, shape, party index and seed, so the same run always reads the same bytes.
Generation time is never part of a measurement.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

CACHE = Path(os.environ.get("JOINTSTATS_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
SMOKER = ["no", "yes"]
REGION = ["north", "south", "east", "west"]
_GEN_BLOCK = 1 << 20


def xtab_levels(k: int) -> list[str]:
    return [f"l{i}" for i in range(k)]


def _strings(codes: np.ndarray, levels: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                          pa.array(levels)).dictionary_decode()


def _cohort_block(rng: np.random.Generator, n: int, d: int) -> pa.Table:
    x = np.clip(rng.normal(0.0, 1.5, (n, d)), -6.0, 6.0)
    beta = np.array([(-1) ** j * (1.0 + j / d) for j in range(d)])
    smoker = (rng.random(n) < 0.3).astype(np.int8)
    region = rng.integers(0, 4, n)
    y = 1.0 + x @ beta + 2.0 * smoker + 0.5 * (region == 1) + rng.normal(0.0, 3.0, n)
    visits = rng.poisson(2.0, n).astype(np.int64)
    cols = {f"x{j + 1}": x[:, j] for j in range(d)}
    cols.update(y=y, visits=visits)
    table = pa.table(cols)
    table = table.append_column("smoker", _strings(smoker, SMOKER))
    return table.append_column("region", _strings(region, REGION))


def _xtab_block(rng: np.random.Generator, n: int, k: int) -> pa.Table:
    r = rng.integers(0, k, n)
    shift = rng.integers(0, max(k // 2, 2), n)  # c depends on r
    c = (r + shift) % k
    levels = xtab_levels(k)
    return pa.table({"r": _strings(r, levels), "c": _strings(c, levels)})


def path_for(kind: str, rows: int, party: int, *, d: int = 10, k: int = 2, fmt: str = "parquet",
             seed: int = 0) -> Path:
    shape = f"d{d}" if kind == "cohort" else f"k{k}"
    return CACHE / f"{kind}-{shape}-n{rows}-p{party}-s{seed}.{fmt}"


def party_file(kind: str, rows: int, party: int, *, d: int = 10, k: int = 2, fmt: str = "parquet",
               seed: int = 0) -> Path:
    """The (cached) data file of one party; written on first use."""
    path = path_for(kind, rows, party, d=d, k=k, fmt=fmt, seed=seed)
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, party, rows, d, k, 0 if kind == "cohort" else 1])
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.part")
    writer = None
    try:
        for start in range(0, max(rows, 1), _GEN_BLOCK):
            n = min(_GEN_BLOCK, rows - start)
            if n <= 0:
                break
            block = _cohort_block(rng, n, d) if kind == "cohort" else _xtab_block(rng, n, k)
            if fmt == "parquet":
                if writer is None:
                    writer = pq.ParquetWriter(tmp, block.schema)
                writer.write_table(block, row_group_size=_GEN_BLOCK)
            else:
                if writer is None:
                    writer = pacsv.CSVWriter(tmp, block.schema)
                writer.write_table(block)
        if writer is not None:
            writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def party_files(kind: str, rows: int, parties: int, **kw) -> list[Path]:
    """One file per party, each with ``rows`` rows (different seeds per party)."""
    return [party_file(kind, rows, i, **kw) for i in range(parties)]


def gb_on_disk(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e9
