"""PostgreSQL sources against a real throw-away server: pushed-down partials equal the numpy
path's; connection and permission failures give one line naming the source, never the password."""
from __future__ import annotations

import numpy as np
import pytest

from jointstats.engine.sources import open_source
from jointstats.errors import ConfigError, DataError

from .common import DP, DP_PURE, EXACT, frame, numpy_partials, pushed_partials
from .conftest import PASSWORD, load_frame

pytestmark = pytest.mark.usefixtures("pg_password")


@pytest.fixture
def pg_password(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", PASSWORD)


@pytest.mark.parametrize("spec", [EXACT, DP, DP_PURE], ids=["exact", "dp", "dp-pure"])
def test_postgres_matches_numpy(pg_server, tmp_path, spec):
    df = frame(3000, 11, misfits=spec is not EXACT)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    table = f"typed_{spec.privacy is None}_{id(spec) % 1000}"
    load_frame(pg_server, table, df)
    want = numpy_partials("d.parquet", tmp_path, spec)
    assert pushed_partials(pg_server.url(table=table), tmp_path, spec) == want
    got = pushed_partials(pg_server.url(), tmp_path, spec,
                          {"query": f'SELECT * FROM "{table}" WHERE extra >= 0'})
    assert got == want


def test_postgres_text_columns_match_csv(pg_server, tmp_path):
    df = frame(2000, 12, misfits=True).astype({"age": object, "visits": object, "big": object})
    df.loc[df.index[:40:3], "age"] = "abc"
    df.loc[df.index[1:40:4], "visits"] = " NaN "
    df.loc[df.index[2:40:5], "big"] = "1e3"
    df.to_csv(tmp_path / "d.csv", index=False)
    import pandas as pd
    text = pd.read_csv(tmp_path / "d.csv", dtype=str, keep_default_na=False)
    text = text.replace({"": None})
    load_frame(pg_server, "texty", text)
    assert pushed_partials(pg_server.url(table="texty"), tmp_path, DP) == numpy_partials("d.csv", tmp_path, DP)


def test_postgres_exact_misfits_fail_like_the_file_reader(pg_server, tmp_path):
    df = frame(800, 13, misfits=True)
    df.to_parquet(tmp_path / "d.parquet", index=False)
    load_frame(pg_server, "misfit", df)
    with pytest.raises(DataError) as want:
        numpy_partials("d.parquet", tmp_path, EXACT)
    with pytest.raises(DataError) as got:
        pushed_partials(pg_server.url(table="misfit"), tmp_path, EXACT)
    assert str(got.value) == str(want.value)


def _one_line_without_secret(exc: BaseException, source: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and PASSWORD not in msg
    assert source in msg
    return msg


def test_postgres_failures_are_one_line_naming_the_source(pg_server, tmp_path, monkeypatch):
    load_frame(pg_server, "private", frame(10, 1, False), grant=False)
    src = pg_server.url(table="private")
    with pytest.raises(ConfigError) as exc:
        open_source(src, tmp_path).columns()
    assert "permission denied" in _one_line_without_secret(exc.value, src)
    src = pg_server.url(table="nope")
    with pytest.raises(ConfigError) as exc:
        open_source(src, tmp_path).columns()
    assert "does not exist" in _one_line_without_secret(exc.value, src)
    monkeypatch.setenv("PGPASSWORD", "wrong-" + PASSWORD)
    src = pg_server.url(table="private")
    with pytest.raises(ConfigError) as exc:
        open_source(src, tmp_path).columns()
    assert "refused the credentials" in _one_line_without_secret(exc.value, src)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    load_frame(pg_server, "granted", frame(50, 1, False))
    good = open_source(pg_server.url(table="granted"), tmp_path, {"password_file": "pw"})
    assert "age" in good.columns()
    good.close()
    monkeypatch.delenv("PGPASSWORD")
    port = pg_server.port
    dead = pg_server.url(table="t").replace(f":{port}/", ":1/")
    with pytest.raises(ConfigError) as exc:
        open_source(dead, tmp_path).columns()
    assert "could not be reached" in _one_line_without_secret(exc.value, dead)
    with pytest.raises(ConfigError) as exc:
        open_source(f"postgresql://reader:{PASSWORD}@127.0.0.1/cohort?table=t", tmp_path)
    assert PASSWORD not in str(exc.value) and "password may not be in the source URL" in str(exc.value)


def test_postgres_query_cannot_write(pg_server, tmp_path):
    load_frame(pg_server, "ro", frame(20, 2, False))
    with pytest.raises(ConfigError, match="read-only|not valid"):
        pushed_partials(pg_server.url(), tmp_path, DP,
                        {"query": "SELECT * FROM ro; DELETE FROM ro"})
    with pg_server.connect("cohort") as con:
        assert con.execute("SELECT count(*) FROM ro").fetchone()[0] == 20


def test_party_refusal_names_party_and_source_not_password(pg_server, consortium, tmp_path, monkeypatch):
    """Through the party's own job: the refusal its peers and the analyst see is one line."""
    import yaml

    from jointstats import load_party_config, parse_spec
    from jointstats.engine.party import PartyJob
    from jointstats.errors import JointStatsError
    from tests.conftest import cohort_frame
    from tests.multiparty.test_exact import SPEC
    paths = consortium([cohort_frame(20, 1), cohort_frame(20, 2), cohort_frame(20, 3)])
    load_frame(pg_server, "hidden", cohort_frame(20, 1), grant=False)
    cfg = yaml.safe_load(paths[0].read_text())
    (paths[0].parent / "pw").write_text(PASSWORD)
    cfg["datasets"]["cohort"] = {"source": pg_server.url(table="hidden"), "password_file": "pw"}
    paths[0].write_text(yaml.safe_dump(cfg))
    monkeypatch.delenv("PGPASSWORD")
    for spec_text in (SPEC, SPEC.replace("statistics:", "privacy: {epsilon: 1.0, delta: 0}\nstatistics:", 1)):
        job = PartyJob(load_party_config(paths[0]), parse_spec(spec_text), "j")
        with pytest.raises(JointStatsError) as exc:
            job.local_step(job.plan())
        line = job._refusal(exc.value)
        assert line.startswith("party 'party_a'") and "permission denied" in line
        assert pg_server.url(table="hidden") in line and PASSWORD not in line and "\n" not in line
