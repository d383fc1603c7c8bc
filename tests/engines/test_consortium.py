"""A 3-party job (real party processes) whose parties read PostgreSQL, DuckDB and Spark in local
mode (a CSV file only where pyspark or Java is missing), against the same job over CSV files:
identical results."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml

from jointstats import run
from tests.conftest import cohort_frame
from tests.multiparty.test_exact import SPEC

from .conftest import PASSWORD, load_frame


def _set_source(path, source, **fields):
    cfg = yaml.safe_load(path.read_text())
    cfg["datasets"]["cohort"] = {"source": source, **fields}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _statistics(result):
    out = json.loads(result.to_json())
    return {k: v for k, v in out.items() if k not in ("job_id", "timing", "metrics", "audit")}


@pytest.mark.slow
def test_three_parties_postgres_duckdb_and_third(pg_server, consortium, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    frames = [cohort_frame(n, seed) for n, seed in [(900, 1), (700, 2), (500, 3)]]
    paths = consortium(frames)
    (tmp_path / "spec.yaml").write_text(SPEC)
    want = run(tmp_path / "spec.yaml", paths)
    # party a: a PostgreSQL table (password from a file named in its config)
    load_frame(pg_server, "cohort_a", frames[0])
    (paths[0].parent / "pg.pass").write_text(PASSWORD + "\n")
    _set_source(paths[0], pg_server.url(table="cohort_a"), password_file="pg.pass")
    # party b: a DuckDB database, through a query
    con = duckdb.connect(str(paths[1].parent / "data" / "b.duckdb"))
    con.register("df", frames[1])
    con.execute("CREATE TABLE visits AS SELECT * FROM df")
    con.close()
    _set_source(paths[1], "duckdb:///data/b.duckdb", query="SELECT * FROM visits")
    # party c: Spark in local mode when it can run here, else its CSV file (as before)
    if _spark_ok():
        _set_source(paths[2], "spark:csv:data/party_c.csv", spark={"master": "local[1]"})
    got = run(tmp_path / "spec.yaml", paths)
    assert got.results == want.results
    # the parties' local steps were pushed down (the numpy path is not used)
    import jointstats.engine.local_step as local
    from jointstats import load_party_config, load_spec
    from jointstats.engine.party import PartyJob
    spec = load_spec(tmp_path / "spec.yaml")
    numpy_path = local.compute_partials
    partials = [numpy_path(PartyJob(load_party_config(p), spec, "j").plan(),
                           _csv_chunks(p, spec)) for p in paths[:2]]

    def refuse(plan, chunks):
        if chunks == ():
            return numpy_path(plan, chunks)
        raise AssertionError("the numpy path was used")
    local.compute_partials = refuse
    try:
        for path, want_partials in zip(paths[:2], partials):
            job = PartyJob(load_party_config(path), spec, "j")
            assert job.local_step(job.plan()) == want_partials
    finally:
        local.compute_partials = numpy_path


def _csv_chunks(path, spec):
    from jointstats.engine.sources import open_source
    name = path.stem
    return open_source(f"data/{name}.csv", path.parent).iter_chunks(list(spec.schema), name)


def _spark_ok() -> bool:
    """The third party reads through Spark (local mode, one more JVM in its party process, about
    15 s here) wherever pyspark and Java are installed; elsewhere its CSV file."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    return shutil.which("java") is not None
