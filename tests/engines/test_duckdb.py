"""DuckDB sources: the pushed-down partials equal the numpy path's, bit for bit."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

duckdb = pytest.importorskip("duckdb")

from jointstats.errors import ConfigError, DataError  # noqa: E402

from .common import DP, DP_PURE, EXACT, frame, numpy_partials, pushed_partials  # noqa: E402


def _duckdb_table(path, df, name="cohort"):
    con = duckdb.connect(str(path))
    con.register("df", df)
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM df")
    con.close()


@pytest.mark.parametrize("spec", [EXACT, DP, DP_PURE], ids=["exact", "dp", "dp-pure"])
def test_duckdb_table_matches_numpy(tmp_path, spec):
    df = frame(3000, 1, misfits=spec is not EXACT)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    _duckdb_table(tmp_path / "d.duckdb", df)
    want = numpy_partials("d.parquet", tmp_path, spec)
    assert pushed_partials("duckdb:///d.duckdb?table=cohort", tmp_path, spec) == want
    got = pushed_partials("duckdb:///d.duckdb", tmp_path, spec,
                          {"query": "SELECT * FROM cohort WHERE extra >= 0"})
    assert got == want


@pytest.mark.parametrize("spec", [EXACT, DP], ids=["exact", "dp"])
def test_csv_gz_glob_and_directory_match_numpy(tmp_path, spec):
    df = frame(2000, 2, misfits=spec is not EXACT)
    df = df.astype({"visits": object, "age": object, "big": object})
    if spec is not EXACT:  # text misfits only a text file can hold
        df.loc[df.index[:40:3], "age"] = "abc"
        df.loc[df.index[1:40:4], "visits"] = " NaN "
        df.loc[df.index[2:40:5], "big"] = "1e3"
    df.to_csv(tmp_path / "all.csv", index=False)
    want = numpy_partials("all.csv", tmp_path, spec)
    with open(tmp_path / "all.csv", "rb") as fi, gzip.open(tmp_path / "all.csv.gz", "wb") as fo:
        shutil.copyfileobj(fi, fo)
    assert pushed_partials("all.csv.gz", tmp_path, spec) == want
    (tmp_path / "parts").mkdir()
    for i, start in enumerate(range(0, len(df), 700)):
        df.iloc[start:start + 700].to_csv(tmp_path / "parts" / f"p{i}.csv", index=False)
    assert pushed_partials("parts/p*.csv", tmp_path, spec) == want
    assert pushed_partials("parts", tmp_path, spec) == want


def test_parquet_hive_directory_matches_numpy(tmp_path):
    df = frame(2500, 3, misfits=True)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    want = numpy_partials("d.parquet", tmp_path, DP)
    hive = tmp_path / "lake"
    for i, start in enumerate(range(0, len(df), 700)):
        (hive / f"batch={i}").mkdir(parents=True)
        df.iloc[start:start + 700].to_parquet(hive / f"batch={i}" / "part.parquet", index=False)
    assert pushed_partials("lake/", tmp_path, DP) == want
    assert pushed_partials("lake/*/*.parquet", tmp_path, DP) == want


def test_exact_mode_misfits_fail_as_the_file_reader_does(tmp_path):
    df = frame(1000, 4, misfits=True)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    _duckdb_table(tmp_path / "d.duckdb", df)
    with pytest.raises(DataError) as want:
        numpy_partials("d.parquet", tmp_path, EXACT)
    with pytest.raises(DataError) as got:
        pushed_partials("duckdb:///d.duckdb?table=cohort", tmp_path, EXACT)
    assert str(got.value) == str(want.value)
    assert "non-integral" in str(got.value) and "declared levels" in str(got.value)


def test_grid_rounding_is_numpy_rint(tmp_path):
    """Ties and near-ties of (x - offset) * multiplier round exactly as numpy's rint."""
    from jointstats.engine.sql_sources import _DuckDB
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-1e6, 1e6, 20000), np.arange(-50, 50) + 0.5,
                        np.nextafter(np.arange(-50, 50) + 0.5, 0), [2.0 ** 52 + 0.5, -0.5, 0.5, 1.5]])
    con = duckdb.connect()
    con.register("t", __import__("pandas").DataFrame({"x": x}))
    d = _DuckDB()
    got = np.array([r[0] for r in con.execute(f"SELECT {d.rint('x')} FROM t").fetchall()])
    assert np.array_equal(got, np.rint(x))
    for off, mult in [(0.0, 2.0 ** 23), (59.0, 2.0 ** 30 / 41.0), (-0.1, 1 / 3)]:
        expr = d.rint(f"(x - {d.flt(off)}) * {d.flt(mult)}")
        got = np.array([r[0] for r in con.execute(f"SELECT {expr} FROM t").fetchall()])
        assert np.array_equal(got, np.rint((x - off) * mult))


def test_source_errors_name_the_source(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        pushed_partials("duckdb:///nope.duckdb?table=t", tmp_path, DP)
    _duckdb_table(tmp_path / "d.duckdb", frame(10, 1, False))
    with pytest.raises(ConfigError, match=r"duckdb:///d.duckdb\?table=nope.*does not exist"):
        pushed_partials("duckdb:///d.duckdb?table=nope", tmp_path, DP)
    with pytest.raises(ConfigError, match="expected one of"):
        pushed_partials("duckdb:///d.duckdb", tmp_path, DP)
    with pytest.raises(ConfigError, match="no file matches"):
        pushed_partials("nothing/*.parquet", tmp_path, DP)


def test_config_dataset_fields(tmp_path):
    import yaml

    from jointstats.consortium.config import parse_party_config
    base = {"party": "a", "mpc": {"parties": [{"name": "a", "host": "127.0.0.1", "port": 1},
                                              {"name": "b", "host": "127.0.0.1", "port": 2}]}}
    cfg = parse_party_config({**base, "datasets": {
        "pg": {"source": "postgresql://r@h/db", "query": "SELECT 1", "password_file": "pw"},
        "sp": {"source": "spark:t", "spark": {"master": "local[2]", "conf": {"a.b": 1}}},
        "plain": {"source": "d.csv"}}}, tmp_path / "a.yaml")
    assert cfg.dataset_options("pg") == {"query": "SELECT 1", "password_file": "pw"}
    assert cfg.dataset_options("sp") == {"spark": {"master": "local[2]", "conf": {"a.b": 1}}}
    assert cfg.dataset_options("plain") == {}
    hash(cfg)
    with pytest.raises(ConfigError, match=r"datasets.pg.query: expected a string"):
        parse_party_config({**base, "datasets": {"pg": {"source": "postgresql://h/db", "query": 3}}},
                           tmp_path / "a.yaml")
    assert yaml  # noqa


def test_row_limit_exact_refuses_dp_uses_the_limit(tmp_path):
    from jointstats.engine.local_step import compute_partials
    from jointstats.engine.sources import open_source
    from jointstats.errors import PolicyError
    from jointstats.engine.output import add_noise_plans
    from jointstats.plan.sealed import make_plan
    df = frame(500, 5, misfits=False)
    _duckdb_table(tmp_path / "d.duckdb", df)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    for spec in (EXACT, DP):
        plan = add_noise_plans(spec, make_plan(spec, ["a", "b", "c"], max_rows_per_party=300))
        src = open_source("duckdb:///d.duckdb?table=cohort", tmp_path)
        if spec is EXACT:
            with pytest.raises(PolicyError) as got:
                src.aggregate(plan, list(spec.schema), "p", strict=True)
            with pytest.raises(PolicyError) as want:
                compute_partials(plan, open_source("d.parquet", tmp_path).iter_chunks(list(spec.schema), "p"))
            assert str(got.value) == str(want.value)
        else:
            out = src.aggregate(plan, list(spec.schema), "p", strict=False)
            assert out["n"] == [300]
        src.close()


def test_csv_gz_malformed_rows_as_the_file_reader(tmp_path):
    """Rows with the wrong number of fields: reported in exact mode, all-missing rows in DP mode."""
    df = frame(300, 6, misfits=False)
    df.to_csv(tmp_path / "m.csv", index=False)
    lines = (tmp_path / "m.csv").read_text().splitlines()
    lines[5] += ",1,2"
    lines[9] = lines[9].split(",", 1)[0]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with open(tmp_path / "m.csv", "rb") as fi, gzip.open(tmp_path / "m.csv.gz", "wb") as fo:
        shutil.copyfileobj(fi, fo)
    assert pushed_partials("m.csv.gz", tmp_path, DP) == numpy_partials("m.csv", tmp_path, DP)
    with pytest.raises(DataError) as want:
        numpy_partials("m.csv", tmp_path, EXACT)
    with pytest.raises(DataError) as got:
        pushed_partials("m.csv.gz", tmp_path, EXACT)
    assert str(got.value) == str(want.value) and "2 rows have the wrong number of fields" in str(got.value)


def test_unhandled_type_streams_through_the_numpy_path(tmp_path):
    """A categorical column of dates: the pushdown declines, the rows stream through the
    file readers' encoder, with the Parquet reader's result."""
    from jointstats.engine.local_step import compute_partials
    from jointstats.engine.sources import open_source

    from .common import plan_of
    df = frame(400, 8, misfits=False)
    con = duckdb.connect(str(tmp_path / "d.duckdb"))
    con.register("df", df)
    con.execute("CREATE TABLE cohort AS SELECT * REPLACE (DATE '2020-01-01' + CAST(visits AS INTEGER) AS region) FROM df")
    con.execute(f"COPY cohort TO '{tmp_path / 'd.parquet'}' (FORMAT parquet)")
    con.close()
    plan = plan_of(DP)
    src = open_source("duckdb:///d.duckdb?table=cohort", tmp_path)
    assert src.aggregate(plan, list(DP.schema), "p", strict=False) is None
    got = compute_partials(plan, src.iter_chunks(list(DP.schema), "p", strict=False))
    src.close()
    assert got == numpy_partials("d.parquet", tmp_path, DP)
