"""A linked (vertical) job whose holders read a PostgreSQL table and a DuckDB database (real party
processes): the same answers as pandas' merge + statsmodels on the joined data. An engine
promises no row order without ORDER BY, so both passes over an engine source (the key, then
the columns) are ordered by the key (``SqlSource.row_order``)."""
from __future__ import annotations

import pytest
import yaml

from jointstats import run
from tests.multiparty.test_vertical import (ALL_KINDS, check_all_kinds, joined, linked_consortium,
                                            people, split, write_spec)

from .conftest import PASSWORD, load_frame

PARTS = [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]]


def _set_linked_source(path, source, columns, **fields):
    cfg = yaml.safe_load(path.read_text())
    cfg["datasets"]["linked"] = {"source": source, "columns": ["pid", *columns], **fields}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_linked_job_over_postgres_and_duckdb_equals_pandas_merge(pg_server, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    frames = split(people(300, 11), PARTS)
    # at the PostgreSQL holder a repeated and a missing key: all their rows are left out (their
    # order may differ between the two passes, as ties under ORDER BY)
    frames[0].loc[3, "pid"] = frames[0].loc[4, "pid"]
    frames[0].loc[7, "pid"] = None
    cfgs = linked_consortium(tmp_path, frames, PARTS)
    # holder_a: a PostgreSQL table, rows in another order than its CSV (password from a file)
    load_frame(pg_server, "linked_a", frames[0].sample(frac=1.0, random_state=3))
    (cfgs[0].parent / "pg.pass").write_text(PASSWORD + "\n")
    _set_linked_source(cfgs[0], pg_server.url(table="linked_a"), PARTS[0], password_file="pg.pass")
    # holder_b: a DuckDB database table written in a random order
    con = duckdb.connect(str(cfgs[1].parent / "data" / "b.duckdb"))
    con.register("df", frames[1])
    con.execute("CREATE TABLE visits AS SELECT * FROM df ORDER BY random()")
    con.close()
    _set_linked_source(cfgs[1], "duckdb:///data/b.duckdb?table=visits", PARTS[1])
    # holder_c keeps its CSV file
    spec = write_spec(tmp_path, ALL_KINDS)
    j = joined(frames)
    assert 80 < len(j) < 300
    metrics: dict = {}
    res = run(spec, cfgs, metrics=metrics).to_dict()
    check_all_kinds(res, j)
    assert {m["linked_records"] for m in metrics.values()} == {len(j)}
