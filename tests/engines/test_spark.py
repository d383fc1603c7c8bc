"""Spark (local mode) sources: the pushed-down partials equal the numpy path's.

Starting Spark's JVM and compiling the pushdown's wide aggregate take about 50 s and 30 s on a
busy two-core machine, more than the whole suite's budget: these tests run when
JOINTSTATS_TEST_SPARK=1 (and pyspark and Java are installed)."""
from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (no java on PATH)", allow_module_level=True)
if os.environ.get("JOINTSTATS_TEST_SPARK") != "1":
    pytest.skip("Spark tests take minutes (a JVM start and a wide query plan): set JOINTSTATS_TEST_SPARK=1",
                allow_module_level=True)

from .common import DP, EXACT, frame, numpy_partials, pushed_partials  # noqa: E402

SPARK = {"spark": {"master": "local[1]"}}


def test_spark_parquet_and_csv_match_numpy(tmp_path):
    df = frame(1500, 21, misfits=True).astype({"age": object, "visits": object, "big": object})
    df.loc[df.index[:40:3], "age"] = "abc"
    df.loc[df.index[1:40:4], "visits"] = " NaN "
    df.loc[df.index[2:40:5], "big"] = "1e3"
    df.to_csv(tmp_path / "d.csv", index=False)
    assert pushed_partials("spark:csv:d.csv", tmp_path, DP, SPARK) == numpy_partials("d.csv", tmp_path, DP)
    clean = frame(1500, 22, misfits=False)
    clean.to_parquet(tmp_path / "c.parquet", index=False)
    assert (pushed_partials("spark:parquet:c.parquet", tmp_path, EXACT, SPARK)
            == numpy_partials("c.parquet", tmp_path, EXACT))
