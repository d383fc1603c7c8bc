"""Spark (local mode) sources: the pushed-down partials equal the numpy path's.

One Spark session (a JVM) serves both sources: about 35 s on an idle two-core machine, minutes
on a busy one. Skipped only where pyspark or Java is missing. The 3-party job with a Spark
party (tests/engines/test_consortium.py) starts one more JVM in its party process."""
from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (no java on PATH)", allow_module_level=True)

from .common import DP, EXACT, frame, numpy_partials, pushed_partials  # noqa: E402

SPARK = {"spark": {"master": "local[1]"}}


@pytest.mark.slow
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
