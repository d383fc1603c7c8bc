"""Every shape of the pushed-down query gives the numpy path's partials, bit for bit: grouped by
the categorical columns' own values or (too many of them) by their level codes; the Gram sums in
the grouped scan (PostgreSQL's shape) or in a second, ungrouped scan (DuckDB's and Spark's);
and the DP row limit. On data with missing values, out-of-bounds values, unknown levels, case
variants, non-integral and infinite values, and terms split into limbs by the numpy path."""
from __future__ import annotations

import dataclasses

import pytest

from jointstats.engine import sql_sources as _sql_sources
from jointstats.engine.sql_sources import DuckDBSource, _DuckDB, _Postgres
from jointstats.engine.sources import open_source

from .common import DP, DP_PURE, EXACT, frame, numpy_partials, plan_of, pushed_partials
from .conftest import PASSWORD, load_frame

duckdb = pytest.importorskip("duckdb")

SHAPES = [(cap, grouped) for cap in (None, 0) for grouped in (False, True)]
IDS = [f"{'values' if cap is None else 'codes'}-{'grouped' if g else 'ungrouped'}-sums" for cap, g in SHAPES]


def _shape(monkeypatch, dialect, cap, grouped):
    if cap is not None:  # every scan has more groups than this: level codes first
        monkeypatch.setattr(_sql_sources, "_MAX_GROUPS", cap)
    monkeypatch.setattr(dialect, "grouped_sums", grouped)


@pytest.mark.parametrize("cap,grouped", SHAPES, ids=IDS)
@pytest.mark.parametrize("spec", [EXACT, DP, DP_PURE], ids=["exact", "dp", "dp-pure"])
def test_duckdb_shapes_match_numpy(tmp_path, monkeypatch, spec, cap, grouped):
    df = frame(2500, 31, misfits=spec is not EXACT)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    want = numpy_partials("d.parquet", tmp_path, spec)
    _shape(monkeypatch, _DuckDB, cap, grouped)
    assert pushed_partials("d*.parquet", tmp_path, spec) == want


@pytest.mark.parametrize("cap,grouped", SHAPES, ids=IDS)
def test_duckdb_text_columns_shapes_match_csv(tmp_path, monkeypatch, cap, grouped):
    df = frame(1500, 32, misfits=True).astype({"age": object, "visits": object, "big": object})
    df.loc[df.index[:40:3], "age"] = "abc"
    df.loc[df.index[1:40:4], "visits"] = " NaN "
    df.loc[df.index[2:40:5], "big"] = "1e3"
    df.to_csv(tmp_path / "d.csv", index=False)
    want = numpy_partials("d.csv", tmp_path, DP)
    _shape(monkeypatch, _DuckDB, cap, grouped)
    assert pushed_partials("d*.csv", tmp_path, DP) == want


@pytest.mark.parametrize("cap,grouped", SHAPES, ids=IDS)
def test_postgres_shapes_match_numpy(pg_server, tmp_path, monkeypatch, cap, grouped):
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    df = frame(2000, 33, misfits=True)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    load_frame(pg_server, "shapes", df)
    want = numpy_partials("d.parquet", tmp_path, DP)
    _shape(monkeypatch, _Postgres, cap, grouped)
    assert pushed_partials(pg_server.url(table="shapes"), tmp_path, DP) == want


def test_empty_source_gives_zero_partials(tmp_path):
    df = frame(50, 34, misfits=False).iloc[:0]
    df.to_parquet(tmp_path / "d.parquet", index=False)
    for spec in (EXACT, DP):
        got = pushed_partials("d*.parquet", tmp_path, spec)
        assert got == numpy_partials("d.parquet", tmp_path, spec)
        assert all(v == 0 for values in got.values() for v in values)


def test_dp_row_limit_takes_that_many_rows(tmp_path):
    """Over the plan's row limit, a DP party uses `limit` rows: both scans of one job must see
    the same rows, so the limited scan takes the Gram sums in its grouped scan."""
    df = frame(3000, 35, misfits=False)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    plan = dataclasses.replace(plan_of(DP), max_rows_per_party=1000)
    src = open_source("d*.parquet", tmp_path)
    assert isinstance(src, DuckDBSource)
    try:
        got = src.aggregate(plan, list(DP.schema), "p", strict=False)
    finally:
        src.close()
    assert got["n"] == [1000]
    assert sum(got["x"]) <= 1000 and got["r"][0] <= 1000 and got["nv"][0] <= 1000
