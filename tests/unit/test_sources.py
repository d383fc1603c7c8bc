"""Reading and encoding a party's data source (jointstats.engine.sources)."""
from __future__ import annotations

import sqlite3
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jointstats.engine.sources import EncodedChunk, open_source
from jointstats.errors import ConfigError, DataError
from jointstats.plan.spec import Column

REGIONS = ("north", "south", "east", "west")
SCHEMA = [
    Column("age", "real", bounds=(18.0, 100.0)),
    Column("visits", "integer", bounds=(0.0, 50.0)),
    Column("region", "categorical", levels=REGIONS),
    Column("smoker", "categorical", levels=("0", "1")),  # numeric-looking levels
]


# --------------------------------------------------------------------------- helpers


def make_frame(n: int = 500, seed: int = 7) -> pd.DataFrame:
    """Random rows with missing values and values outside the bounds."""
    rng = np.random.default_rng(seed)
    age = np.round(rng.uniform(5, 115, n), 1)  # ~ 25 % outside [18, 100]
    age[rng.random(n) < 0.05] = np.nan
    visits = pd.array(rng.integers(-3, 60, n), dtype="Int64")  # some < 0 and > 50
    visits[rng.random(n) < 0.05] = pd.NA
    region = pd.array(rng.choice(REGIONS, n), dtype=object)
    region[rng.random(n) < 0.05] = None
    smoker = pd.array(rng.integers(0, 2, n), dtype="Int64")
    smoker[rng.random(n) < 0.05] = pd.NA
    return pd.DataFrame(
        {
            "note": [f"free text {i}" for i in range(n)],  # not in the schema: ignored
            "age": age,
            "visits": visits,
            "region": region,
            "smoker": smoker,
        }
    )


def expected(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """What the encoder must produce, computed with pandas."""
    out = {
        "age": df["age"].astype(float).clip(18, 100).to_numpy(),
        "visits": df["visits"].astype("float64").clip(0, 50).to_numpy(),
    }
    out["region"] = df["region"].map({r: i for i, r in enumerate(REGIONS)}).fillna(-1).astype(int).to_numpy()
    out["smoker"] = df["smoker"].astype("float64").fillna(-1).astype(int).to_numpy()
    return out


def write_csv(df: pd.DataFrame, path: Path) -> str:
    path = path.with_suffix(".csv")
    df.to_csv(path, index=False, na_rep="")
    return path.name


def write_parquet(df: pd.DataFrame, path: Path) -> str:
    path = path.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=128)
    return path.name


def write_sqlite(df: pd.DataFrame, path: Path, table: str = "patients") -> str:
    path = path.with_suffix(".db")
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table} (note TEXT, age REAL, visits INTEGER, region TEXT, smoker INTEGER)")
    rows = [
        tuple(None if (v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))) else v for v in rec)
        for rec in df.astype(object).itertuples(index=False, name=None)
    ]
    con.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return f"sqlite:///{path.name}?table={table}"


WRITERS = {"csv": write_csv, "parquet": write_parquet, "sqlite": write_sqlite}


def read_all(src, schema=SCHEMA, chunk_rows=1 << 20, party="hospital_a"):
    chunks = list(src.iter_chunks(schema, party, chunk_rows=chunk_rows))
    return chunks, combine(chunks, schema)


def combine(chunks: list[EncodedChunk], schema=SCHEMA) -> dict[str, np.ndarray]:
    out = {}
    for c in schema:
        part = [ch.numeric[c.name] if c.type != "categorical" else ch.codes[c.name] for ch in chunks]
        out[c.name] = np.concatenate(part) if part else np.array([])
    return out


def full_message(exc: BaseException) -> str:
    """Everything a traceback would print, causes and contexts included."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_reads_and_encodes_like_pandas(tmp_path, kind):
    df = make_frame()
    spec = WRITERS[kind](df, tmp_path / "data")
    src = open_source(spec, tmp_path)
    assert src.columns() == ["note", "age", "visits", "region", "smoker"]
    chunks, got = read_all(src)
    want = expected(df)
    assert sum(ch.n_rows for ch in chunks) == len(df)
    np.testing.assert_array_equal(got["age"], want["age"])  # NaN == NaN here
    np.testing.assert_array_equal(got["visits"], want["visits"])
    np.testing.assert_array_equal(got["region"], want["region"])
    np.testing.assert_array_equal(got["smoker"], want["smoker"])
    ch = chunks[0]
    assert ch.numeric["age"].dtype == np.float64
    assert ch.codes["region"].dtype == np.int16
    assert set(ch.numeric) == {"age", "visits"} and set(ch.codes) == {"region", "smoker"}
    # clipping counts and missing counts per column, summed over chunks
    age = df["age"].to_numpy(dtype=float)
    vis = df["visits"].astype("float64").to_numpy()
    assert sum(c.clipped["age"] for c in chunks) == int(np.sum((age < 18) | (age > 100)))
    assert sum(c.clipped["visits"] for c in chunks) == int(np.sum((vis < 0) | (vis > 50)))
    assert sum(c.missing["age"] for c in chunks) == int(np.isnan(age).sum())
    assert sum(c.missing["region"] for c in chunks) == int(df["region"].isna().sum())
    assert sum(c.missing["smoker"] for c in chunks) == int(df["smoker"].isna().sum())


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("chunk_rows", [1, 7, 128, 499, 500, 501])
def test_chunking_gives_the_same_rows(tmp_path, kind, chunk_rows):
    df = make_frame(500)
    src = open_source(WRITERS[kind](df, tmp_path / "data"), tmp_path)
    one, whole = read_all(src)
    assert len(one) == 1
    chunks, got = read_all(src, chunk_rows=chunk_rows)
    sizes = [c.n_rows for c in chunks]
    assert sum(sizes) == 500
    assert all(s == chunk_rows for s in sizes[:-1]) and 0 < sizes[-1] <= chunk_rows
    for name in whole:
        np.testing.assert_array_equal(got[name], whole[name])
        assert all(len(c.numeric.get(name, c.codes.get(name))) == c.n_rows for c in chunks)
    for name in ("age", "visits"):
        assert sum(c.clipped[name] for c in chunks) == one[0].clipped[name]


def test_large_csv_streams_in_blocks(tmp_path):
    """More than one pyarrow block (>= 1 MiB) and chunk boundaries inside blocks."""
    n = 150_000
    rng = np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "age": np.round(rng.uniform(0, 120, n), 1),
            "visits": rng.integers(0, 80, n),
            "region": rng.choice(REGIONS, n),
            "smoker": rng.integers(0, 2, n),
        }
    )
    df.to_csv(tmp_path / "big.csv", index=False)
    assert (tmp_path / "big.csv").stat().st_size > 2 << 20
    src = open_source("big.csv", tmp_path)
    chunks, got = read_all(src, chunk_rows=50_000)
    assert [c.n_rows for c in chunks] == [50_000, 50_000, 50_000]
    want = expected(df)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_clipping_to_bounds(tmp_path):
    write_text(tmp_path / "d.csv", "age,visits\n10,-5\n18,0\n55.5,20\n100,50\n250.5,51\n,\n")
    chunks, got = read_all(open_source("d.csv", tmp_path), SCHEMA[:2])
    np.testing.assert_array_equal(got["age"], [18, 18, 55.5, 100, 100, np.nan])
    np.testing.assert_array_equal(got["visits"], [0, 0, 20, 50, 50, np.nan])
    assert chunks[0].clipped == {"age": 2, "visits": 2}
    assert chunks[0].missing == {"age": 1, "visits": 1}


def test_missing_value_tokens_in_csv(tmp_path):
    tokens = ["", "NA", "na", "NaN", "nan", "NAN", "null", "NULL", "Null", "None", "none", "NONE", " NA ", '""']
    lines = ["age,visits,region"] + [f"{t},{t},{t}" for t in tokens] + ["40,3,west"]
    write_text(tmp_path / "m.csv", "\n".join(lines) + "\n")
    schema = SCHEMA[:3]
    chunks, got = read_all(open_source("m.csv", tmp_path), schema)
    k = len(tokens)
    assert np.isnan(got["age"][:k]).all() and got["age"][k] == 40
    assert np.isnan(got["visits"][:k]).all() and got["visits"][k] == 3
    assert (got["region"][:k] == -1).all() and got["region"][k] == 3
    assert chunks[0].missing == {"age": k, "visits": k, "region": k}


def test_declared_level_wins_over_missing_token(tmp_path):
    # (a blank line is skipped, as by pandas; a quoted empty field is a missing value)
    write_text(tmp_path / "c.csv", 'continent\nNA\nEU\n""\n\nna\nnull\n')
    col = Column("continent", "categorical", levels=("NA", "EU"))
    _, got = read_all(open_source("c.csv", tmp_path), [col])
    # 'na' matches the level NA ignoring case; the empty field and 'null' are missing
    np.testing.assert_array_equal(got["continent"], [0, 1, -1, 0, -1])


def test_level_matching_rules(tmp_path):
    write_text(tmp_path / "l.csv", "flag,grade,yn\n1,A, yes\n1.0,a,Yes\n0,b,NO \n0.00,B,no\n")
    schema = [
        Column("flag", "categorical", levels=("0", "1")),
        Column("grade", "categorical", levels=("A", "a", "B")),  # 'A'/'a' distinct, 'b' -> 'B'
        Column("yn", "categorical", levels=("no", "yes")),
    ]
    _, got = read_all(open_source("l.csv", tmp_path), schema)
    np.testing.assert_array_equal(got["flag"], [1, 1, 0, 0])
    np.testing.assert_array_equal(got["grade"], [0, 1, 2, 2])
    np.testing.assert_array_equal(got["yn"], [1, 1, 0, 0])


def test_parquet_booleans_and_floats_as_levels(tmp_path):
    table = pa.table(
        {
            "ok": pa.array([True, False, None, True]),
            "code": pa.array([1.0, 0.0, float("nan"), 2.0]),
        }
    )
    pq.write_table(table, tmp_path / "b.parquet")
    schema = [
        Column("ok", "categorical", levels=("false", "true")),
        Column("code", "categorical", levels=("0", "1", "2")),
    ]
    _, got = read_all(open_source("b.parquet", tmp_path), schema)
    np.testing.assert_array_equal(got["ok"], [1, 0, -1, 1])
    np.testing.assert_array_equal(got["code"], [1, 0, -1, 2])


def test_extra_columns_ignored_and_bom_header(tmp_path):
    (tmp_path / "x.csv").write_bytes("\ufeffid,age,junk\n1,30,whatever\n2,40,\"a,b\"\n".encode("utf-8"))
    src = open_source("x.csv", tmp_path)
    assert src.columns() == ["id", "age", "junk"]
    chunks, got = read_all(src, [SCHEMA[0]])
    np.testing.assert_array_equal(got["age"], [30, 40])
    assert set(chunks[0].numeric) == {"age"} and chunks[0].codes == {}


def test_sqlite_mixed_storage_classes(tmp_path):
    """SQLite is dynamically typed: text numbers, ints and floats in one column."""
    con = sqlite3.connect(tmp_path / "m.db")
    con.execute("CREATE TABLE t (age, region, smoker)")
    con.executemany(
        "INSERT INTO t VALUES (?, ?, ?)",
        [(30, "north", 1), ("41.5", "east", "0"), (None, None, None), (" 50 ", "NA", 1.0), (17.0, "West", "1")],
    )
    con.commit()
    con.close()
    schema = [SCHEMA[0], SCHEMA[2], SCHEMA[3]]
    _, got = read_all(open_source("sqlite:///m.db?table=t", tmp_path), schema)
    np.testing.assert_array_equal(got["age"], [30, 41.5, np.nan, 50, 18])
    np.testing.assert_array_equal(got["region"], [0, 2, -1, -1, 3])
    np.testing.assert_array_equal(got["smoker"], [1, 0, -1, 1, 1])


def test_sqlite_absolute_path(tmp_path):
    write_sqlite(make_frame(20), tmp_path / "abs")
    db = (tmp_path / "abs.db").resolve()
    src = open_source(f"sqlite:///{db}?table=patients", Path("/nonexistent-base"))
    assert str(db).startswith("/")
    chunks, _ = read_all(src)
    assert sum(c.n_rows for c in chunks) == 20


def test_relative_paths_resolve_against_base_dir(tmp_path):
    (tmp_path / "sub").mkdir()
    write_csv(make_frame(10), tmp_path / "sub" / "d.csv")
    src = open_source("sub/d.csv", tmp_path)
    assert src.path == tmp_path / "sub" / "d.csv"
    src2 = open_source(str(tmp_path / "sub" / "d.csv"), Path("/elsewhere"))
    assert sum(c.n_rows for c in src2.iter_chunks(SCHEMA, "p")) == 10


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_zero_rows(tmp_path, kind):
    df = make_frame(0)
    if kind == "csv":
        write_text(tmp_path / "data.csv", "note,age,visits,region,smoker\n")
        spec = "data.csv"
    else:
        spec = WRITERS[kind](df, tmp_path / "data")
    src = open_source(spec, tmp_path)
    assert src.columns() == ["note", "age", "visits", "region", "smoker"]
    chunks, got = read_all(src)
    assert chunks == []
    assert all(len(v) == 0 for v in got.values())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_missing_column(tmp_path, kind):
    df = make_frame(30).drop(columns=["visits"])
    if kind == "sqlite":
        con = sqlite3.connect(tmp_path / "data.db")
        con.execute("CREATE TABLE patients (note, age, region, smoker)")
        con.commit()
        con.close()
        spec = "sqlite:///data.db?table=patients"
    else:
        spec = WRITERS[kind](df, tmp_path / "data.csv")
    src = open_source(spec, tmp_path)
    with pytest.raises(DataError) as info:
        src.iter_chunks(SCHEMA, "hospital_a")  # raised at once, before any chunk
    assert str(info.value) == (
        f"party 'hospital_a': column 'visits' is missing from its data (source {spec})"
    )


def test_several_missing_columns(tmp_path):
    write_text(tmp_path / "a.csv", "age\n1\n")
    with pytest.raises(DataError, match=r"columns 'visits', 'region', 'smoker' are missing"):
        open_source("a.csv", tmp_path).iter_chunks(SCHEMA, "p")


def _big_csv_with(tmp_path: Path, bad: dict[int, tuple[str, str]], n: int = 100_000) -> Path:
    """A CSV larger than one read block, with given (column, text) values at given rows."""
    rng = np.random.default_rng(3)
    age = [f"{v:.1f}" for v in rng.uniform(18, 100, n)]
    visits = [str(v) for v in rng.integers(0, 50, n)]
    region = list(rng.choice(REGIONS, n))
    cols = {"age": age, "visits": visits, "region": region}
    for row, (col, text) in bad.items():
        cols[col][row] = text
    lines = ["age,visits,region"] + [f"{a},{v},{r}" for a, v, r in zip(age, visits, region)]
    path = tmp_path / "big.csv"
    write_text(path, "\n".join(lines) + "\n")
    assert path.stat().st_size > 1 << 20
    return path


def test_wrong_type_in_real_column_counts_rows_after_all_chunks(tmp_path):
    secret = "SECRET-4711"
    bad = {95_000: ("age", secret), 95_001: ("age", "abc"), 99_999: ("age", "\"12,5\"")}
    _big_csv_with(tmp_path, bad)
    src = open_source("big.csv", tmp_path)
    schema = SCHEMA[:3]
    seen = 0
    ages = []
    with pytest.raises(DataError) as info:
        for chunk in src.iter_chunks(schema, "hospital_a", chunk_rows=10_000):
            seen += chunk.n_rows
            ages.append(chunk.numeric["age"])
    # every row was delivered exactly once before the error (the fast reader had
    # already handed out chunks when it met the bad values and switched readers)
    assert seen == 100_000
    ages = np.concatenate(ages)
    assert np.isnan(ages[[95_000, 95_001, 99_999]]).all()
    assert np.isfinite(ages[:95_000]).all()
    msg = str(info.value)
    assert msg == "party 'hospital_a': column 'age' has 3 rows with non-numeric values"
    text = full_message(info.value)
    for value in (secret, "abc", "12,5"):
        assert value not in text


def test_non_integral_in_integer_column(tmp_path):
    write_text(tmp_path / "d.csv", "visits\n1\n2.0\n7.25\n1e1\n3.5\n\n")
    src = open_source("d.csv", tmp_path)
    with pytest.raises(DataError) as info:
        list(src.iter_chunks([SCHEMA[1]], "hospital_b"))
    assert str(info.value) == "party 'hospital_b': column 'visits' has 2 rows with non-integral values"
    assert "7.25" not in full_message(info.value) and "3.5" not in full_message(info.value)


def test_non_integral_in_parquet_integer_column(tmp_path):
    pq.write_table(pa.table({"visits": pa.array([1.0, 2.5, None, 4.0])}), tmp_path / "v.parquet")
    with pytest.raises(DataError, match="column 'visits' has 1 rows with non-integral values") as info:
        list(open_source("v.parquet", tmp_path).iter_chunks([SCHEMA[1]], "p"))
    assert "2.5" not in full_message(info.value)


def test_unknown_level(tmp_path):
    bad = {10: ("region", "Atlantis"), 99_000: ("region", "Atlantis"), 99_500: ("region", "Mordor")}
    _big_csv_with(tmp_path, bad)
    with pytest.raises(DataError) as info:
        list(open_source("big.csv", tmp_path).iter_chunks(SCHEMA[:3], "hospital_a", chunk_rows=4096))
    assert str(info.value) == (
        "party 'hospital_a': column 'region' has 3 rows with values outside the declared levels"
    )
    text = full_message(info.value)
    assert "Atlantis" not in text and "Mordor" not in text


def test_several_problems_in_one_message(tmp_path):
    write_text(tmp_path / "d.csv", "age,visits,region\nold,1.5,Narnia\n30,2,north\ninf,3,Gondor\n")
    with pytest.raises(DataError) as info:
        list(open_source("d.csv", tmp_path).iter_chunks(SCHEMA[:3], "registry_c"))
    assert str(info.value) == (
        "party 'registry_c': column 'age' has 1 rows with non-numeric values; "
        "column 'age' has 1 rows with infinite values; "
        "column 'visits' has 1 rows with non-integral values; "
        "column 'region' has 2 rows with values outside the declared levels"
    )
    text = full_message(info.value)
    for value in ("old", "Narnia", "Gondor", "1.5"):
        assert value not in text


def test_wrong_type_in_sqlite_and_parquet(tmp_path):
    con = sqlite3.connect(tmp_path / "w.db")
    con.execute("CREATE TABLE t (age REAL)")
    con.executemany("INSERT INTO t VALUES (?)", [(30.0,), ("forty-two",), (b"\x00\xff",), (None,)])
    con.commit()
    con.close()
    with pytest.raises(DataError) as info:
        list(open_source("sqlite:///w.db?table=t", tmp_path).iter_chunks([SCHEMA[0]], "p"))
    assert str(info.value) == "party 'p': column 'age' has 2 rows with non-numeric values"
    assert "forty-two" not in full_message(info.value)

    pq.write_table(pa.table({"age": pa.array(["31", "thirty-two", None, "NA"])}), tmp_path / "w.parquet")
    with pytest.raises(DataError) as info:
        list(open_source("w.parquet", tmp_path).iter_chunks([SCHEMA[0]], "p"))
    assert str(info.value) == "party 'p': column 'age' has 1 rows with non-numeric values"
    assert "thirty-two" not in full_message(info.value)


def test_malformed_csv_rows(tmp_path):
    write_text(tmp_path / "d.csv", "age,visits\n30,1\n31,2,SECRET-EXTRA\n32\n33,3\n")
    with pytest.raises(DataError) as info:
        list(open_source("d.csv", tmp_path).iter_chunks(SCHEMA[:2], "p"))
    assert str(info.value) == "party 'p': 2 rows have the wrong number of fields"
    assert "SECRET" not in full_message(info.value)


def test_invalid_utf8(tmp_path):
    (tmp_path / "u.csv").write_bytes(b"age,region\n30,north\n31,SECRET\xffVALUE\n")
    with pytest.raises(DataError) as info:
        list(open_source("u.csv", tmp_path).iter_chunks([SCHEMA[0], SCHEMA[2]], "p"))
    assert str(info.value) == "party 'p': its data is not valid UTF-8 text (source u.csv)"
    assert "SECRET" not in full_message(info.value)


def test_missing_file(tmp_path):
    for spec in ("nope.csv", "nope.parquet", "sqlite:///nope.db?table=t"):
        with pytest.raises(ConfigError) as info:
            open_source(spec, tmp_path)
        msg = str(info.value)
        assert spec in msg and "not found" in msg and "\n" not in msg


def test_unknown_extension(tmp_path):
    write_text(tmp_path / "d.xlsx", "x")
    with pytest.raises(ConfigError) as info:
        open_source("d.xlsx", tmp_path)
    assert "'d.xlsx'" in str(info.value) and "unknown kind .xlsx" in str(info.value)


def test_missing_sqlite_table(tmp_path):
    write_sqlite(make_frame(5), tmp_path / "d")
    with pytest.raises(ConfigError) as info:
        open_source("sqlite:///d.db?table=visits", tmp_path)
    assert str(info.value) == "data source 'sqlite:///d.db?table=visits': table 'visits' not found in the database"
    with pytest.raises(ConfigError, match="expected one \\?table=name"):
        open_source("sqlite:///d.db", tmp_path)


def test_not_a_parquet_or_sqlite_file(tmp_path):
    write_text(tmp_path / "fake.parquet", "age\n1\n")
    with pytest.raises(ConfigError, match="not a readable Parquet file"):
        open_source("fake.parquet", tmp_path)
    write_text(tmp_path / "fake.db", "age\n1\n" * 200)
    with pytest.raises(ConfigError, match="not a readable SQLite database"):
        open_source("sqlite:///fake.db?table=t", tmp_path)


def test_chunk_rows_must_be_positive(tmp_path):
    write_text(tmp_path / "d.csv", "age\n1\n")
    with pytest.raises(ValueError):
        open_source("d.csv", tmp_path).iter_chunks([SCHEMA[0]], "p", chunk_rows=0)


def test_reading_does_not_import_pandas(tmp_path):
    # pyarrow's pandas-backed conversions cost a party about 0.25 s of start-up
    import subprocess
    import sys
    csv = tmp_path / "d.csv"
    csv.write_text("x,k\n1.5,a\n,b\n3,a\n")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from jointstats.engine.sources import open_source\n"
        "from jointstats.plan.spec import Column\n"
        f"src = open_source('d.csv', Path({str(tmp_path)!r}))\n"
        "cols = [Column('x', 'real', (0.0, 10.0)), Column('k', 'categorical', levels=('a', 'b'))]\n"
        "chunks = list(src.iter_chunks(cols, 'p'))\n"
        "assert chunks[0].n_rows == 3\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- lenient reading (DP mode)


def test_lenient_reading_makes_every_misfit_missing_and_logs_the_counts(tmp_path, caplog):
    (tmp_path / "d.csv").write_bytes(
        b"age,visits,region\n"
        b"30,1,north\n"
        b"old,2,south\n"           # non-numeric real
        b"inf,3,east\n"            # infinite
        b"31,2.5,west\n"           # non-integral integer
        b"32,4,Narnia\n"           # unknown level
        b"33,5,north,EXTRA\n"      # too many fields
        b"34\n"                    # too few fields
        b"35,6,SECRET\xffVALUE\n"  # not UTF-8 (categorical)
        b"3\xff6,7,south\n"        # not UTF-8 (real)
        b"37,8,east\n"
    )
    schema = SCHEMA[:3]
    with caplog.at_level("INFO", logger="jointstats.sources"):
        chunks = list(open_source("d.csv", tmp_path).iter_chunks(schema, "p", chunk_rows=4, strict=False))
    got = combine(chunks, schema)
    assert sum(c.n_rows for c in chunks) == 10  # the 2 malformed rows are rows with every value missing
    nan = np.nan
    np.testing.assert_array_equal(got["age"], [30, nan, nan, 31, 32, 35, nan, 37, nan, nan])
    np.testing.assert_array_equal(got["visits"], [1, 2, 3, nan, 4, 6, 7, 8, nan, nan])
    np.testing.assert_array_equal(got["region"], [0, 1, 2, 3, -1, -1, 1, 2, -1, -1])
    # the counts go to this process's own log, never into an exception
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == ["party 'p': 2 rows have the wrong number of fields; "
                       "column 'age' has 2 rows with non-numeric values; "
                       "column 'age' has 1 rows with infinite values; "
                       "column 'visits' has 1 rows with non-integral values; "
                       "column 'region' has 2 rows with values outside the declared levels; "
                       "read as missing values (source d.csv)"]
    assert "read 10 rows" in caplog.text
    assert "SECRET" not in caplog.text and "Narnia" not in caplog.text
    # strict reading of the same file fails (exact mode)
    with pytest.raises(DataError):
        list(open_source("d.csv", tmp_path).iter_chunks(schema, "p"))


def test_lenient_reading_of_a_big_csv_switching_readers(tmp_path):
    bad = {10: ("region", "Atlantis"), 95_000: ("age", "SECRET"), 99_999: ("visits", "1.5")}
    _big_csv_with(tmp_path, bad)
    chunks = list(open_source("big.csv", tmp_path).iter_chunks(SCHEMA[:3], "p", chunk_rows=10_000,
                                                                strict=False))
    got = combine(chunks, SCHEMA[:3])
    assert len(got["age"]) == 100_000
    assert got["region"][10] == -1 and np.isnan(got["age"][95_000]) and np.isnan(got["visits"][99_999])
    assert np.isfinite(got["age"][:95_000]).all()


def test_lenient_reading_of_parquet_and_sqlite(tmp_path, caplog):
    pq.write_table(pa.table({"age": pa.array(["31", "thirty-two", None, "1e400"]),
                             "visits": pa.array([True, False, None, True]),
                             "region": pa.array([["north"], ["south"], None, []])}), tmp_path / "w.parquet")
    with caplog.at_level("WARNING", logger="jointstats.sources"):
        got = combine(list(open_source("w.parquet", tmp_path).iter_chunks(SCHEMA[:3], "p", strict=False)),
                      SCHEMA[:3])
    np.testing.assert_array_equal(got["age"], [31, np.nan, np.nan, np.nan])
    assert np.isnan(got["visits"]).all() and (got["region"] == -1).all()
    assert "column 'visits' has 3 rows with non-numeric values" in caplog.text
    con = sqlite3.connect(tmp_path / "w.db")
    con.execute("CREATE TABLE t (age REAL, region TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(30.0, "north"), ("forty-two", b"\xff"), (b"\x00", "mars")])
    con.commit()
    con.close()
    got = combine(list(open_source("sqlite:///w.db?table=t", tmp_path).iter_chunks(
        [SCHEMA[0], SCHEMA[2]], "p", strict=False)), [SCHEMA[0], SCHEMA[2]])
    np.testing.assert_array_equal(got["age"], [30, np.nan, np.nan])
    np.testing.assert_array_equal(got["region"], [0, -1, -1])


def test_a_row_longer_than_the_read_block_is_read(tmp_path):
    lines = ["age,visits,region"] + [f"{20 + i % 50},{i % 10},north" for i in range(2000)]
    lines[1000] = "40,3," + "x" * (3 << 20)  # one 3 MiB field, read as an unknown level
    write_text(tmp_path / "long.csv", "\n".join(lines) + "\n")
    got = combine(list(open_source("long.csv", tmp_path).iter_chunks(SCHEMA[:3], "p", strict=False)),
                  SCHEMA[:3])
    assert len(got["age"]) == 2000 and got["region"][999] == -1 and got["age"][999] == 40
    with pytest.raises(DataError, match="column 'region' has 1 rows with values outside"):
        list(open_source("long.csv", tmp_path).iter_chunks(SCHEMA[:3], "p"))


def test_misfit_rule_is_fixed_text():
    from jointstats.engine.sources import MISFIT_RULE_DP
    assert "missing" in MISFIT_RULE_DP and not any(ch.isdigit() for ch in MISFIT_RULE_DP)
