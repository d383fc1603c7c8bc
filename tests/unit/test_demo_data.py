"""The synthetic demo data (jointstats.cli.demo_data) and its fit to the demo configs and specs."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from jointstats.cli import demo_data
from jointstats.engine.sources import open_source
from jointstats.cli.demo_data import DEFAULT_ROWS, DEMO_SOURCES, PARTIES, ensure_demo_data, generate, make_party_frame
from jointstats.plan.spec import Column

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = [
    Column("age", "real", bounds=(18.0, 100.0)),
    Column("sex", "categorical", levels=("F", "M")),
    Column("bmi", "real", bounds=(10.0, 60.0)),
    Column("smoker", "categorical", levels=("no", "yes")),
    Column("region", "categorical", levels=("north", "south", "east", "west")),
    Column("sbp", "real", bounds=(80.0, 220.0)),
    Column("visits", "integer", bounds=(0.0, 50.0)),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_back(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        return pd.read_csv(path)
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pandas()
    con = sqlite3.connect(path)
    try:
        return pd.read_sql_query(f"SELECT * FROM {demo_data.SQLITE_TABLE}", con)
    finally:
        con.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    return generate(tmp_path_factory.mktemp("demo"))


def test_writes_the_three_formats(demo):
    assert {p: f.name for p, f in demo.items()} == {
        "hospital_a": "hospital_a.csv",
        "hospital_b": "hospital_b.parquet",
        "registry_c": "registry_c.db",
    }
    for party, path in demo.items():
        df = read_back(path)
        assert len(df) == DEFAULT_ROWS[party]
        assert list(df.columns) == ["patient_id", "age", "sex", "bmi", "smoker", "region", "sbp", "visits"]
        expect = make_party_frame(party, DEFAULT_ROWS[party])
        pd.testing.assert_frame_equal(df, expect, check_dtype=False)


def test_each_demo_source_reads_through_open_source(demo):
    base = next(iter(demo.values())).parent.parent
    for party, spec in DEMO_SOURCES.items():
        src = open_source(spec, base)
        chunks = list(src.iter_chunks(SCHEMA, party, chunk_rows=700))
        assert sum(c.n_rows for c in chunks) == DEFAULT_ROWS[party]
        assert sum(c.clipped.get("sbp", 0) for c in chunks) == 0  # within the public bounds
        missing_bmi = sum(c.missing["bmi"] for c in chunks)
        assert 0 < missing_bmi < 0.03 * DEFAULT_ROWS[party]
        assert sum(c.missing["age"] + c.missing["region"] + c.missing["visits"] for c in chunks) == 0


def test_deterministic_for_a_seed(tmp_path):
    a = generate(tmp_path / "a", seed=11, rows={"hospital_a": 300, "hospital_b": 200, "registry_c": 100})
    b = generate(tmp_path / "b", seed=11, rows={"hospital_a": 300, "hospital_b": 200, "registry_c": 100})
    c = generate(tmp_path / "c", seed=12, rows={"hospital_a": 300, "hospital_b": 200, "registry_c": 100})
    for party in PARTIES:
        pd.testing.assert_frame_equal(read_back(a[party]), read_back(b[party]))
        assert not read_back(a[party]).equals(read_back(c[party]))
    assert digest(a["hospital_a"]) == digest(b["hospital_a"])  # the CSV bytes too
    # a party's rows do not depend on the other parties' row counts
    d = generate(tmp_path / "d", seed=11, rows={"hospital_a": 300, "hospital_b": 5, "registry_c": 7})
    assert digest(d["hospital_a"]) == digest(a["hospital_a"])


@pytest.mark.parametrize("fmt", ["csv", "parquet", "sqlite"])
def test_single_format(tmp_path, fmt):
    out = generate(tmp_path, rows={"hospital_a": 50, "hospital_b": 40, "registry_c": 30}, fmt=fmt)
    suffix = {"csv": ".csv", "parquet": ".parquet", "sqlite": ".db"}[fmt]
    assert all(p.suffix == suffix and p.exists() for p in out.values())
    assert [len(read_back(out[p])) for p in PARTIES] == [50, 40, 30]
    with pytest.raises(ValueError):
        generate(tmp_path, fmt="xlsx")


def test_correlations_have_the_intended_signs():
    df = pd.concat([make_party_frame(p, n) for p, n in DEFAULT_ROWS.items()], ignore_index=True)
    corr = df[["age", "bmi", "sbp", "visits"]].corr()
    assert corr.loc["sbp", "age"] > 0.3
    assert corr.loc["sbp", "bmi"] > 0.2
    assert corr.loc["visits", "age"] > 0.2
    assert corr.loc["visits", "bmi"] > 0.1
    # adjusted effects (OLS): sbp rises with age, bmi and smoking
    x = df.dropna()
    X = np.column_stack(
        [np.ones(len(x)), x["age"], x["bmi"], x["smoker"] == "yes", x["sex"] == "M"]
    ).astype(float)
    coef = np.linalg.lstsq(X, x["sbp"].to_numpy(), rcond=None)[0]
    assert coef[1] > 0.3 and coef[2] > 0.5 and coef[3] > 3
    # bmi differs by sex and region
    by_sex = x.groupby("sex")["bmi"].mean()
    assert by_sex["M"] - by_sex["F"] > 0.5
    by_region = x.groupby("region")["bmi"].mean()
    assert by_region["south"] - by_region["east"] > 1.0


def test_value_ranges_and_rounding():
    for party, n in DEFAULT_ROWS.items():
        df = make_party_frame(party, n)
        assert df["age"].between(18, 100).all()
        assert df["bmi"].dropna().between(10, 60).all()
        assert df["sbp"].dropna().between(80, 220).all()
        assert df["visits"].between(0, 50).all() and df["visits"].dtype == np.int64
        for col in ("age", "bmi", "sbp"):
            v = df[col].dropna().to_numpy()
            np.testing.assert_allclose(v, np.round(v, 1))
        for col in ("bmi", "sbp"):
            share = df[col].isna().mean()
            assert 0.002 < share < 0.025, (party, col, share)
        assert set(df["sex"]) == {"F", "M"} and set(df["smoker"]) == {"no", "yes"}


def test_parties_have_different_regional_mixes():
    mixes = {
        p: make_party_frame(p, n)["region"].value_counts(normalize=True) for p, n in DEFAULT_ROWS.items()
    }
    assert mixes["hospital_a"].idxmax() == "north"
    assert mixes["hospital_b"].idxmax() == "south"
    assert mixes["registry_c"].max() < 0.4  # the registry is the most even
    assert abs(mixes["hospital_a"]["north"] - mixes["hospital_b"]["north"]) > 0.3


def test_ensure_demo_data_writes_only_missing_files(tmp_path):
    first = ensure_demo_data(tmp_path)
    assert all(p.exists() for p in first.values())
    stamp = {p: f.stat().st_mtime_ns for p, f in first.items()}
    before = {p: digest(f) for p, f in first.items()}
    first["hospital_b"].unlink()
    second = ensure_demo_data(tmp_path)
    assert second == first
    assert first["hospital_a"].stat().st_mtime_ns == stamp["hospital_a"]
    assert first["registry_c"].stat().st_mtime_ns == stamp["registry_c"]
    assert digest(second["hospital_b"]) == before["hospital_b"]  # regenerated identically
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]  # no temp files


def test_demo_configs_point_at_the_generated_files():
    import yaml

    for party in PARTIES:
        conf = yaml.safe_load((ROOT / "parties" / "demo" / f"{party}.yaml").read_text())
        assert conf["party"] == party
        assert conf["datasets"]["cohort"]["source"] == DEMO_SOURCES[party]


def test_demo_protocols_fit_the_demo_data():
    """Every schema column of every demo spec exists in the demo data with matching levels and bounds."""
    from jointstats.plan.spec import load_spec

    kinds = set()
    for path in sorted((ROOT / "protocols").glob("*.yaml")):
        spec = load_spec(path)
        for stat in spec.statistics:
            kinds.add(stat.kind)
        cols = spec.schema.values() if isinstance(spec.schema, dict) else spec.schema
        for col in cols:
            match = [c for c in SCHEMA if c.name == col.name]
            assert match, (path.name, col.name)
            assert col.type == match[0].type
            if col.type == "categorical":
                assert tuple(col.levels) == match[0].levels
            else:  # a spec may declare tighter bounds than the data's widest (less DP noise)
                lo, hi = match[0].bounds
                assert lo <= col.bounds[0] < col.bounds[1] <= hi, (path.name, col.name)
    assert kinds == {"count", "sum", "mean", "variance", "correlation", "crosstab", "histogram", "regression"}
