"""Spark sources: a table or files read by a SparkSession that the party configures, with the
local step pushed down as Spark SQL aggregates (see jointstats.engine.sql_sources for the rules).

Forms of ``source`` (the dataset entry may add ``query:`` in Spark SQL over the table, and
``spark: {master: "local[4]" | "spark://host:7077" | "yarn", conf: {key: value}}``):

- ``spark:db.table`` -- a table of the session's catalog (a Hive metastore, Delta, ... as the
  party's ``conf`` sets up);
- ``spark:parquet:path`` or ``spark:csv:path`` -- files (a file, a directory or a glob; a
  relative path is relative to the party configuration). CSV columns are read as text with a
  header line and follow the CSV rules of the file readers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa

from jointstats.engine.sources import _py_column, _ReadError
from jointstats.engine.sql_sources import SqlSource, _Spark, _quote, _engine_error
from jointstats.errors import ConfigError

_VIEW = "_jointstats_source"


def _spark_kind(dtype) -> str:
    name = type(dtype).__name__
    if name in ("ByteType", "ShortType", "IntegerType", "LongType", "FloatType", "DoubleType",
                "DecimalType"):
        return "num"
    if name in ("StringType", "VarcharType", "CharType"):
        return "text"
    if name == "BooleanType":
        return "bool"
    if name == "NullType":
        return "null"
    return "other"


class SparkSource(SqlSource):
    """A Spark table, files read by Spark, or a Spark SQL query over either."""

    dialect = _Spark()

    def __init__(self, spec: str, *, table: str | None = None, files: str | None = None,
                 file_format: str | None = None, query: str | None = None, spark: dict | None = None,
                 path: Path | None = None) -> None:
        super().__init__(spec, path)
        self.table, self.files, self.file_format, self.query = table, files, file_format, query
        self.settings = dict(spark or {})
        self._session = None

    def _connect(self):
        if self._session is None:
            try:
                from pyspark.sql import SparkSession
            except ImportError:
                raise ConfigError(f"data source {self.spec!r} needs the pyspark package "
                                  "(pip install 'jointstats[spark]') and Java") from None
            builder = SparkSession.builder.appName("jointstats")
            builder = builder.master(str(self.settings.get("master", "local[*]")))
            conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
                    "spark.ui.showConsoleProgress": "false"}
            conf.update({str(k): str(v) for k, v in (self.settings.get("conf") or {}).items()})
            for k, v in conf.items():
                builder = builder.config(k, v)
            try:
                self._session = builder.getOrCreate()
                self._session.sparkContext.setLogLevel("ERROR")
                if self.files is not None:
                    reader = self._session.read
                    if self.file_format == "csv":
                        df = reader.option("header", "true").option("inferSchema", "false") \
                            .option("mode", "PERMISSIVE").csv(self.files)
                    else:
                        df = reader.parquet(self.files)
                    df.createOrReplaceTempView(_VIEW)
            except Exception as exc:  # noqa: BLE001 - py4j/JVM errors: one line, no details
                raise ConfigError(f"data source {self.spec!r}: Spark could not start or read it "
                                  f"({type(exc).__name__})") from None
        return self._session

    def _relation(self) -> str:
        if self.query is not None:
            return f"({self.query}) AS src"
        if self.files is not None:
            return _VIEW
        return ".".join(_quote(p, "`") for p in self.table.split("."))

    def _sql(self, sql: str):
        session = self._connect()
        try:
            return session.sql(sql)
        except Exception as exc:  # noqa: BLE001
            raise _engine_error(self.spec, exc) from None

    def _describe(self) -> list[tuple[str, str]]:
        schema = self._sql(f"SELECT * FROM {self._relation()} LIMIT 0").schema
        return [(f.name, _spark_kind(f.dataType)) for f in schema.fields]

    def _query(self, sql: str) -> list[tuple]:
        try:
            return [tuple(r) for r in self._sql(sql).collect()]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _engine_error(self.spec, exc) from None

    def _query_arrow(self, sql: str) -> pa.Table:
        try:
            df = self._sql(sql)
            width = len(df.columns)
            rows = [tuple(r) for r in df.collect()]
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _engine_error(self.spec, exc) from None
        cols = list(zip(*rows)) if rows else [()] * width
        return pa.table({f"c{i}": _py_column(tuple(col)) for i, col in enumerate(cols)})

    def _stream(self, sql: str) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        try:
            df = self._sql(sql)
            names = df.columns
            batch = []
            for row in df.toLocalIterator():
                batch.append(tuple(row))
                if len(batch) >= 1 << 16:
                    yield len(batch), {n: _py_column(c) for n, c in zip(names, zip(*batch))}
                    batch = []
            if batch:
                yield len(batch), {n: _py_column(c) for n, c in zip(names, zip(*batch))}
        except (ConfigError, _ReadError):
            raise
        except Exception:  # noqa: BLE001
            raise _ReadError("its data could not be read by Spark") from None

    def close(self) -> None:
        # the session (its JVM) lives as long as this process: a party process ends after its
        # job; a process that opens Spark sources again reuses it instead of starting another
        if self._session is not None:
            try:
                if self.files is not None:
                    self._session.catalog.dropTempView(_VIEW)
            except Exception:  # noqa: BLE001
                pass
            finally:
                self._session = None


def open_spark_source(source: str, base_dir: Path, options: dict) -> SparkSource:
    rest = source[len("spark:"):]
    query = options.get("query")
    settings = options.get("spark") or {}
    if not isinstance(settings, dict):
        raise ConfigError(f"data source {source!r}: spark: expected {{master, conf}}")
    for kind in ("parquet", "csv"):
        if rest.startswith(kind + ":"):
            raw = Path(rest[len(kind) + 1:]).expanduser()
            raw = raw if raw.is_absolute() else Path(base_dir) / raw
            import glob
            if not glob.glob(str(raw)):
                raise ConfigError(f"data source {source!r} not found (looked for {raw})")
            return SparkSource(source, files=str(raw), file_format=kind, query=None if query is None
                               else query.replace("{source}", _VIEW), spark=settings, path=raw)
    if not rest and query is None:
        raise ConfigError(f"data source {source!r}: expected spark:table, spark:parquet:path, "
                          "spark:csv:path or query: in the dataset entry")
    return SparkSource(source, table=rest or None, query=query, spark=settings)
