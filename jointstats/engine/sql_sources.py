"""Data that stays where it lives: PostgreSQL, DuckDB (databases and files) and Spark, with the
local step pushed into the engine.

Source kinds (the ``source`` of a dataset entry in the party's own configuration; see
docs/reference.md section 2):

- ``postgresql://host[:port]/db?table=name`` (or ``?table=schema.name``), or
  ``postgresql://host/db`` with a read-only SQL ``query:`` in the dataset entry. The user
  name may be in the URL (``postgresql://reader@host/db``); a password never is: it comes
  from the environment (``PGPASSWORD``, ``PGPASSFILE``/``~/.pgpass``, ``PGUSER``,
  ``PGSSLMODE``... as libpq reads them) or from ``password_file:`` in the dataset entry.
  Every query runs in one ``REPEATABLE READ, READ ONLY`` transaction (one snapshot).
- ``duckdb:///path.duckdb?table=name`` (or ``query:``), opened read-only.
- Files through DuckDB: ``.csv.gz`` files, globs (``data/part-*.parquet``), directories of
  Parquet or CSV files (``data/events/``, Hive partitions ``key=value/`` become columns).
- ``spark:table_name`` or ``spark:/path/to/parquet`` (see :mod:`jointstats.engine.spark_source`),
  read by a SparkSession the party configures in the dataset entry
  (``spark: {master: local[2], conf: {...}}``).

Pushdown. :meth:`SqlSource.aggregate` computes a plan's exact integer partial aggregates in
the engine and brings back only aggregates (:class:`_GroupedQuery`):

1. one scan ``GROUP BY`` every categorical column's own value, every numeric column's state
   (present, clipped, missing, infinite, not a number, not an integer) and every histogram's
   bin, with ``COUNT(*)``: Python maps each distinct value to a level with the very rules of
   the file readers (same code), and every count, crosstab cell, bin, problem count, clipped
   and missing count follows from the groups. Past ``_MAX_GROUPS`` groups (many distinct
   categorical values) the values are first mapped to levels (one ``GROUPING SETS`` scan) and
   the engine groups by ``CASE WHEN col IN (...) THEN code``;
2. the Gram sums, one exact ``SUM`` per distinct numeric grid term and per pair of them
   (however many statistics share them; an indicator term only picks groups): in that same
   grouped scan on PostgreSQL (an aggregate costs about the same grouped or not), in one more,
   ungrouped scan on DuckDB and Spark (per-group sums measured ~3x slower there), where each
   statistic's rows are picked by masking its terms' values to NULL once per row.

Each subquery level computes its values once per row (PostgreSQL: a volatile, parallel-safe
select-list item keeps a level from being merged into its parent without forbidding parallel
workers, as ``OFFSET 0`` would).

Exactness: a numeric term's grid value is computed as the numpy path does it, in IEEE
float64: ``(x - offset) * multiplier`` (two separately rounded operations, as
``np.subtract`` then ``np.multiply``), rounded half to even (DuckDB ``(v + 1.5 * 2**52) -
1.5 * 2**52`` for ``|v| < 2**51``, else ``round_even(v, 0)``; PostgreSQL ``round(float8)``, which
is C ``rint``; Spark ``rint``: numpy's ``rint`` bit for bit, tests/engines check ties),
then in DP mode clipped to the term's grid bounds. Every grid value is an integer of magnitude
at most 2**30 (plan.GRID_BITS; the constant and indicators are 0/1), so a product of two is
below 2**60 and fits a 64-bit integer exactly; the sum over at most 2**31 rows (the plan's row
limit) is below 2**91, which is summed exactly: DuckDB ``SUM(BIGINT)`` is a 128-bit HUGEINT
(below 2**127), PostgreSQL ``SUM(bigint)`` keeps a 128-bit accumulator and returns an
arbitrary-precision NUMERIC (per-row arithmetic stays in ``bigint``), Spark sums
``DECIMAL(38, 0)`` (below 10**38 > 2**126). No limbs are needed.

Missing values, misfits and clipping follow :mod:`jointstats.engine.sources` (strict reading in
exact mode: one DataError naming columns and counts; lenient in DP mode: misfits read as
missing, counted only in this party's log). A numeric column held as text is parsed with the
same number syntax (the SQL regular expression ``_NUMBER_SQL``), blanks ``[ \\t\\n\\r\\f\\v]``
trimmed. Where a column's type is one the pushdown does not handle (dates or nested values in a
categorical column, say), the source streams its rows through the file readers' encoder
instead (:meth:`Source.iter_chunks`): slower, same result.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

from jointstats.engine.sources import (
    MISSING_TOKENS, Source, _CategoricalEncoder, _Tally, _ReadError, _as_text, misfit_problems,
    _check_schema, _py_column, _MISSING, _INVALID,
)
from jointstats.errors import ConfigError, DataError, PolicyError
from jointstats.plan.sealed import Plan, StatPlan, Term
from jointstats.plan.spec import Column

log = logging.getLogger("jointstats.sources")

__all__ = ["SqlSource", "DuckDBSource", "PostgresSource", "open_sql_source", "redact"]

# The number syntax of jointstats.engine.sources._NUMBER_RE, written for RE2 (DuckDB), POSIX ARE
# (PostgreSQL) and java.util.regex (Spark) alike.
_NUMBER_SQL = (r"^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
               r"|[iI][nN][fF]|[iI][nN][fF][iI][nN][iI][tT][yY])$")
_MISSING_SQL = tuple(MISSING_TOKENS) + ("+nan", "-nan")
_GRAM_KINDS = ("sum", "mean", "variance", "correlation", "regression")
# More distinct values than this in one categorical column: stream instead of pushing down.
_MAX_DISTINCT = 200_000
_FETCH_ROWS = 1 << 16


def redact(url: str) -> str:
    """A source URL as it may appear in a message or a log: no password, no query string
    values other than the table."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable source)"
    if parts.password is not None or "@" in parts.netloc:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}@{host}{port}" if user else f"{host}{port}"
        url = parts._replace(netloc=netloc).geturl()
    return url


def _lit_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _quote(name: str, q: str = '"') -> str:
    return q + name.replace(q, q + q) + q


# --------------------------------------------------------------------------- dialects


class _Dialect:
    name = "sql"
    # select-list items that keep a subquery from being merged into its parent (where the
    # engine would then compute a value as often as the parent refers to it)
    fence: tuple[str, ...] = ()
    # Gram sums in the grouped scan (PostgreSQL: an aggregate costs the same grouped or not),
    # or in an ungrouped second scan (DuckDB, Spark: per-group sums are several times slower)
    grouped_sums = False
    double = "DOUBLE"
    bigint = "BIGINT"
    ident_quote = '"'

    def q(self, name: str) -> str:
        return _quote(name, self.ident_quote)

    def text(self, value: str) -> str:
        """A string literal of a value read from the data (quotes doubled; see the dialects)."""
        return _lit_str(value)

    def flt(self, v: float) -> str:
        return f"CAST({_lit_str(repr(float(v)))} AS {self.double})"

    def isnan(self, x: str) -> str:
        return f"isnan({x})"

    def isinf(self, x: str) -> str:
        return f"isinf({x})"

    def finite(self, x: str) -> str:
        """``x`` is a number, neither infinite nor NaN (NULL: not true). NaN compares above
        every number in DuckDB, PostgreSQL and Spark, so two comparisons decide it."""
        return f"({x} > CAST('-Infinity' AS {self.double}) AND {x} < CAST('Infinity' AS {self.double}))"

    def rint(self, x: str) -> str:
        raise NotImplementedError

    def matches(self, x: str) -> str:
        raise NotImplementedError

    def trim(self, x: str) -> str:
        return f"trim({x}, E' \\t\\n\\r\\f\\v')"

    def sum_int(self, expr: str) -> str:
        """An exact sum of a BIGINT expression (products below 2**60)."""
        return f"SUM({expr})"

    def as_text(self, x: str) -> str:
        return f"CAST({x} AS VARCHAR)"


class _DuckDB(_Dialect):
    name = "duckdb"

    def rint(self, x: str) -> str:
        # (y + 1.5 * 2**52) - 1.5 * 2**52 is y rounded half to even in IEEE double arithmetic for
        # |y| < 2**51 (the sum's spacing is 1), about 8 times faster than round_even, which
        # takes the larger values (every grid value of a clipped column is below 2**31)
        return (f"(CASE WHEN abs({x}) < CAST(2251799813685248 AS DOUBLE) "
                f"THEN ({x} + CAST(6755399441055744 AS DOUBLE)) - CAST(6755399441055744 AS DOUBLE) "
                f"ELSE round_even({x}, 0) END)")

    def matches(self, x: str) -> str:
        return f"regexp_full_match({x}, {_lit_str(_NUMBER_SQL)})"


class _Postgres(_Dialect):
    name = "postgresql"
    # A subquery whose select list has a volatile function is never pulled up into its parent
    # (PostgreSQL's is_simple_subquery); pg_is_in_recovery() is volatile, parallel safe and
    # cheap (a flag), so unlike OFFSET 0 the scan below it still runs in parallel workers.
    fence = ("pg_is_in_recovery() AS _js_fence",)
    grouped_sums = True
    double = "DOUBLE PRECISION"

    def isnan(self, x: str) -> str:
        return f"({x} = 'NaN'::float8)"

    def isinf(self, x: str) -> str:
        return f"({x} IN ('Infinity'::float8, '-Infinity'::float8))"

    def rint(self, x: str) -> str:
        return f"round({x})"  # float8 round is C rint(): half to even

    def matches(self, x: str) -> str:
        return f"({x} ~ {_lit_str(_NUMBER_SQL)})"

    def trim(self, x: str) -> str:
        return f"btrim({x}, E' \\t\\n\\r\\f\\v')"

    def text(self, value: str) -> str:
        # an E'' literal means the same whatever the server's standard_conforming_strings
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

    def as_text(self, x: str) -> str:
        return f"CAST({x} AS TEXT)"


class _Spark(_Dialect):
    name = "spark"
    ident_quote = "`"

    def rint(self, x: str) -> str:
        return f"rint({x})"  # java.lang.Math.rint: half to even

    def isinf(self, x: str) -> str:
        return f"({x} IN (CAST('Infinity' AS DOUBLE), CAST('-Infinity' AS DOUBLE)))"

    def matches(self, x: str) -> str:
        return f"({x} RLIKE {_lit_str(_NUMBER_SQL.replace(chr(92), chr(92) * 2))})"

    def trim(self, x: str) -> str:
        return f"regexp_replace({x}, '^[ \\\\t\\\\n\\\\r\\\\f\\\\x0B]+|[ \\\\t\\\\n\\\\r\\\\f\\\\x0B]+$', '')"

    def sum_int(self, expr: str) -> str:
        return f"SUM(CAST({expr} AS DECIMAL(38, 0)))"

    def text(self, value: str) -> str:
        # Spark SQL string literals take backslash escapes
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def as_text(self, x: str) -> str:
        return f"CAST({x} AS STRING)"


# --------------------------------------------------------------------------- the pushdown


class _Problems:
    """Per-column problem counts gathered by the pushdown, reported as the file readers do."""

    def __init__(self) -> None:
        self.invalid: dict[str, dict[str, int]] = {}

    def add(self, column: str, reason: str, count: int) -> None:
        if count:
            per = self.invalid.setdefault(column, {})
            per[reason] = per.get(reason, 0) + int(count)


class SqlSource(Source):
    """A source read by a SQL engine; subclasses give the connection and the relation."""

    dialect: _Dialect = _DuckDB()

    def __init__(self, spec: str, path: Path | None = None) -> None:
        super().__init__(spec, path or Path("."))
        self._types: dict[str, str] | None = None
        #: a column every row read is ordered by (a linked job's key), so that two passes
        #: over the source (the key, then the columns) give the rows in the same order: an
        #: engine promises no order without ORDER BY. Rows whose keys tie (repeated or
        #: missing keys) may come in either order; the linkage leaves all of them out.
        self.row_order: str | None = None

    # -- what subclasses provide
    def _relation(self) -> str:
        """The FROM item: a quoted table, ``(query) AS src`` or a table function."""
        raise NotImplementedError

    def _describe(self) -> list[tuple[str, str]]:
        """(column name, kind) in order; kind is num | text | bool | null | other."""
        raise NotImplementedError

    def _query(self, sql: str) -> list[tuple]:
        """Run one read-only query in this job's snapshot; all rows."""
        raise NotImplementedError

    def _query_arrow(self, sql: str) -> pa.Table:
        """Run one query; the result as an Arrow table (types as the engine gives them)."""
        raise NotImplementedError

    def _stream(self, sql: str) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        raise NotImplementedError

    def close(self) -> None:
        """End this source's connection (and its snapshot)."""

    # -- Source
    def columns(self) -> list[str]:
        return [name for name, _ in self._column_kinds()]

    def _column_kinds(self) -> list[tuple[str, str]]:
        if self._types is None:
            self._types = dict(self._describe())
            self._order = list(self._types)
        return [(n, self._types[n]) for n in self._order]

    def _batches(self, cols: list[Column], tally: _Tally) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        sql = f"SELECT {', '.join(self.dialect.q(c.name) for c in cols)} FROM {self._relation()}"
        if self.row_order is not None:
            sql += f" ORDER BY {self.dialect.q(self.row_order)}"
        yield from self._stream(sql)

    # -- the pushdown
    def aggregate(self, plan: Plan, schema: Sequence[Column], party: str, *,
                  strict: bool = True) -> dict[str, list[int]] | None:
        """Every statistic's exact partial vector, computed by the engine; None if some column's
        type needs the streaming path (the caller then uses :meth:`iter_chunks`)."""
        cols = _check_schema(schema)
        header = self.columns()
        missing = [c.name for c in cols if c.name not in header]
        if missing:
            self.iter_chunks(cols, party)  # the same DataError as the file readers
        used = {name for stat in plan.statistics for name in stat.columns}
        cols = [c for c in cols if c.name in used]
        kinds = dict(self._column_kinds())
        for c in cols:
            k = kinds[c.name]
            if k == "other" and c.type == "categorical":
                return None
        probs = _Problems()
        cats = [c for c in cols if c.type == "categorical"]
        query = _GroupedQuery(self.dialect, plan, cols, kinds)
        limit = plan.max_rows_per_party

        def scan(relation: str, limited: bool = False) -> _Groups | None:
            # first the categorical columns' own values as grouping keys (one scan); if they
            # have too many distinct values, map them to level codes first (one more scan).
            # Where the engine sums much faster without groups (DuckDB, Spark), the grouped
            # scan only counts and a second, ungrouped scan takes the Gram sums (not over a
            # LIMIT: both scans must see the same rows)
            sums = self.dialect.grouped_sums or limited or not query.grams
            rows = self._grouped(query.sql(relation, None, sums), cap=_MAX_GROUPS)
            codes = None
            if rows is not None:
                groups = _Groups(query, rows, self._key_column, probs, sums)
                if groups.unmapped:
                    return None
            else:
                codes = self._level_mappings(cats, probs)
                if codes is None:
                    return None
                groups = _Groups(query, self._grouped(query.sql(relation, codes, sums), cap=None),
                                 None, probs, sums)
            if not sums:
                sql, slots = query.gram_sql(relation, codes if codes is not None else groups.mapping())
                values = self._query(sql)[0]
                groups.gram = {name: [int(values[p] or 0) for p in pos] for name, pos in slots.items()}
            return groups

        groups = scan(self._relation())
        if groups is None:
            return None
        n_rows = groups.total
        if n_rows > limit:
            if plan.mode != "dp":
                raise PolicyError(f"has {n_rows} rows, more than the plan's limit of {limit} per party")
            # DP: use `limit` of the rows, say how many were left out only here
            log.warning("%d rows, more than the plan's limit of %d per party: %d rows are left out",
                        n_rows, limit, n_rows - limit)
            probs = _Problems()
            groups = scan(f"(SELECT * FROM {self._relation()} LIMIT {limit}) AS lim", limited=True)
            if groups is None:
                return None
            n_rows = groups.total
        for i, c in enumerate(query.nums):
            for reason, state in _STATE_REASONS.items():
                probs.add(c.name, reason, groups.count_state(i, state))
        # CSV rows DuckDB could not split into the header's fields (or decode): strict reading
        # reports them; lenient reading counts each as a row whose every value is missing
        malformed, undecodable = self._rejected()
        if undecodable and strict:
            log.warning("party %r: its data is not valid UTF-8 text (source %s)", party, redact(self.spec))
            raise DataError(f"party {party!r}: its data is not valid UTF-8 text (source {redact(self.spec)})")
        blank = 0 if strict else malformed + undecodable
        out = groups.partials(plan)
        for stat in plan.statistics:
            if stat.kind == "count" and not stat.columns:
                out[stat.name][0] += blank
        clipped = {c.name: groups.count_state(i, _CLIPPED) for i, c in enumerate(query.nums)}
        missing = {c.name: groups.count_missing(c.name) + blank for c in cols}
        self._report(cols, probs, party, strict, n_rows + blank, clipped, missing, malformed + undecodable)
        return out

    def _grouped(self, sql: str, cap: int | None) -> list[tuple] | None:
        """The grouped scan's rows; None if there are more than ``cap`` of them."""
        rows = self._query(sql if cap is None else f"{sql} LIMIT {cap + 1}")
        return None if cap is not None and len(rows) > cap else rows

    def _key_column(self, values: tuple) -> pa.Array:
        """A categorical column's distinct values (Python values from the engine) as Arrow."""
        return _py_column(values)

    def _level_mappings(self, cats: list[Column], probs: _Problems) -> dict[str, dict[int, list]] | None:
        """Per categorical column: level code -> the distinct source values that map to it (the
        file readers' rules), from one GROUPING SETS scan; None if a column has too many."""
        if not cats:
            return {}
        d = self.dialect
        k = len(cats)
        inner = ", ".join(f"{d.q(c.name)} AS _js_c{j}" for j, c in enumerate(cats))
        outer = ", ".join([f"_js_c{j}" for j in range(k)] + [f"GROUPING(_js_c{j})" for j in range(k)])
        sets = ", ".join(f"(_js_c{j})" for j in range(k))
        cap = k * (_MAX_DISTINCT + 1)
        table = self._query_arrow(f"SELECT {outer}, COUNT(*) FROM (SELECT {inner} FROM {self._relation()}) AS c "
                                  f"GROUP BY GROUPING SETS ({sets}) LIMIT {cap}")
        if table.num_rows >= cap:
            return None
        out = {}
        for j, c in enumerate(cats):
            mine = pa.compute.equal(table.column(k + j), 0)
            if table.num_rows:
                values = table.column(j).filter(mine).combine_chunks()
                n = table.column(2 * k).filter(mine).to_pylist()
            else:
                values, n = pa.array([], pa.string()), []
            if len(values) > _MAX_DISTINCT:
                return None
            mapping = self._map_levels(c, values, n, probs)
            if mapping is None:
                return None
            out[c.name] = mapping
        return out

    def _map_levels(self, c: Column, values: pa.Array, counts: list, probs: _Problems) -> dict[int, list] | None:
        codes = _level_codes(c, values, counts, probs)
        if codes is None:
            return None
        mapping: dict[int, list] = {}
        for raw, code in zip(values.to_pylist(), codes):
            if code >= 0:
                mapping.setdefault(code, []).append(raw)
        return mapping

    def _rejected(self) -> tuple[int, int]:
        """(rows with the wrong number of fields, rows not valid UTF-8) skipped by the last scan."""
        return 0, 0

    def _report(self, cols, probs: _Problems, party: str, strict: bool, rows: int,
                clipped: dict[str, int], missing: dict[str, int], malformed: int = 0) -> None:
        problems = misfit_problems(cols, probs.invalid, malformed)
        if problems:
            msg = f"party {party!r}: " + "; ".join(problems)
            if strict:
                log.warning("%s (source %s)", msg, redact(self.spec))
                raise DataError(msg)
            log.warning("%s; read as missing values (source %s)", msg, redact(self.spec))
        log.info("party %r: aggregated %d rows in %s (pushed down); clipped to bounds: %s; missing: %s",
                 party, rows, redact(self.spec), {k: v for k, v in clipped.items() if v} or "none",
                 {k: v for k, v in missing.items() if v} or "none")


# --------------------------------------------------------------------------- the grouped scan

# per-row state of a numeric column (a grouping key): present (in bounds or clipped), or why not
_PRESENT, _CLIPPED, _MISSING_STATE = 0, 1, 2
_STATE_REASONS = {"non_finite": 3, "non_numeric": 4, "non_integral": 5}
# Groups of the raw-value scan beyond which the categorical values are mapped to codes first.
_MAX_GROUPS = 20_000


class _GroupedQuery:
    """The one aggregate query of a plan: ``GROUP BY`` every categorical column's value, every
    numeric column's state and every histogram's bin, with ``COUNT(*)``, the sums of the
    distinct numeric terms' grid values and the sums of their pairwise products.

    Every partial follows from these groups: a statistic's rows are the groups where all its
    columns are present; an indicator term only picks groups; so a plan needs one exact sum per
    distinct numeric term and per pair of them, however many statistics share them. Each
    subquery level computes its values once per row (PostgreSQL: a volatile, parallel-safe
    column keeps the level from being merged into its parent, see ``_Postgres.fence``).
    """

    def __init__(self, d: _Dialect, plan: Plan, cols: list[Column], kinds: dict[str, str]) -> None:
        self.d, self.kinds = d, kinds
        self.cats = [c for c in cols if c.type == "categorical"]
        self.nums = [c for c in cols if c.type != "categorical"]
        self.terms: list[Term] = []
        index: dict[tuple, int] = {}
        linear: set[int] = set()
        pairs: set[tuple[int, int]] = set()
        self.hists: list[StatPlan] = []
        for stat in plan.statistics:
            if stat.kind == "histogram":
                self.hists.append(stat)
            nums = []
            for t in stat.terms:
                if t.kind == "num":
                    key = _term_key(t)
                    if key not in index:
                        index[key] = len(self.terms)
                        self.terms.append(t)
                    nums.append(index[key])
            if len(nums) < len(stat.terms):  # a constant or an indicator term: the plain sums
                linear.update(nums)
            pairs.update((min(a, b), max(a, b)) for a in nums for b in nums)
        self.term_index = index
        self.grams = [s for s in plan.statistics if s.kind in _GRAM_KINDS]
        self.linear = sorted(linear)
        self.pairs = sorted(pairs)

    def sql(self, relation: str, codes: dict[str, dict[int, list]] | None, sums: bool = True) -> str:
        """The query; categorical keys are the columns' values, or their level codes (``codes``);
        without ``sums``, only the counts."""
        level_g, keys = self._levels(relation, codes)
        aggs = ["COUNT(*)"]
        if sums:
            aggs += [self.d.sum_int(f"_js_g{t}") for t in self.linear]
            aggs += [self.d.sum_int(f"_js_g{t} * _js_g{u}") for t, u in self.pairs]
        group = f" GROUP BY {', '.join(keys)}" if keys else ""
        return f"SELECT {', '.join(keys + aggs)} FROM {level_g}{group}"

    def gram_sql(self, relation: str, codes: dict[str, dict[int, list]]) -> tuple[str, dict[str, list[int]]]:
        """One ungrouped query of every Gram statistic's entries. For each distinct set of
        columns that must be present, each term's value is computed once per row as NULL where
        the row does not count (``_js_m``); an entry is then the plain exact sum of a product
        (NULL: left out), asked once however many statistics need it. Returns the query and
        each statistic's slots."""
        d = self.d
        level_g, _ = self._levels(relation, codes)
        pos = {c.name: i for i, c in enumerate(self.nums)}
        cpos = {c.name: j for j, c in enumerate(self.cats)}
        keep = [f"_js_g{t}" for t in range(len(self.terms))] + [f"_js_k{j}" for j in range(len(self.cats))]
        filters: dict[str, int] = {}
        masked: dict[tuple[int, tuple], str] = {}
        aggs: dict[str, int] = {}
        slots: dict[str, list[int]] = {}
        for stat in self.grams:
            cond = " AND ".join(f"_js_s{pos[n]} <= {_CLIPPED}" if n in pos else f"_js_k{cpos[n]} IS NOT NULL"
                                for n in stat.columns) or "TRUE"
            f = filters.setdefault(cond, len(filters))

            def value(t: Term) -> str:
                key = (f, (t.kind, t.column, t.level) if t.kind != "num" else _term_key(t))
                if key not in masked:
                    if t.kind == "one":
                        v = "1"
                    elif t.kind == "ind":
                        v = f"CASE WHEN _js_k{cpos[t.column]} = {int(t.level)} THEN 1 ELSE 0 END"
                    else:
                        v = f"_js_g{self.term_index[_term_key(t)]}"
                    masked[key] = f"CAST(CASE WHEN {cond} THEN {v} END AS {d.bigint}) AS _js_m{len(masked)}"
                return masked[key].rsplit(" AS ", 1)[1]

            k = len(stat.terms)
            slots[stat.name] = []
            for a in range(k):
                for b in range(a, k):
                    ta, tb = stat.terms[a], stat.terms[b]
                    if ta.kind == "one" or tb.kind == "one":
                        expr = value(tb if ta.kind == "one" else ta)
                    else:
                        expr = f"{value(ta)} * {value(tb)}"
                    slots[stat.name].append(aggs.setdefault(d.sum_int(expr), len(aggs)))
        keep += [f"_js_s{i}" for i in range(len(self.nums))]
        level_m = (f"(SELECT {', '.join(list(masked.values()) + list(d.fence))} "
                   f"FROM (SELECT {', '.join(keep)} FROM {level_g}) AS gk) AS m")
        return f"SELECT {', '.join(aggs)} FROM {level_m}", slots

    def _levels(self, relation: str, codes: dict[str, dict[int, list]] | None) -> tuple[str, list[str]]:
        """The per-row subqueries (FROM item ``g``) and the grouping keys."""
        d, f = self.d, list(self.d.fence)
        cats = [f"{d.q(c.name) if codes is None else _case_codes(d.q(c.name), codes[c.name], d)} AS _js_k{j}"
                for j, c in enumerate(self.cats)]
        kcols = [f"_js_k{j}" for j in range(len(self.cats))]
        # level a (only with text columns): trimmed text, whether it is a number, then its value
        xs: dict[int, str] = {}  # how level c reads each numeric column's value
        a, b = list(cats), list(kcols)
        for i, c in enumerate(self.nums):
            col, kind = d.q(c.name), self.kinds[c.name]
            if kind == "text":
                a += [f"{d.trim(col)} AS _js_t{i}", f"{d.matches(d.trim(col))} AS _js_m{i}"]
                b += [f"_js_t{i}", f"CASE WHEN _js_m{i} THEN CAST(_js_t{i} AS {d.double}) END AS _js_x{i}"]
                xs[i] = f"_js_x{i}"
            elif kind == "num":
                a.append(f"{col} AS _js_c{i}")
                b.append(f"_js_c{i}")
                xs[i] = f"CAST({col} AS {d.double})"
            elif kind != "null":  # booleans, dates...: every present value has the wrong type
                a.append(f"{col} AS _js_c{i}")
                b.append(f"_js_c{i}")
                xs[i] = col
        if any(self.kinds[c.name] == "text" for c in self.nums):
            source = f"(SELECT {', '.join(b + f)} FROM (SELECT {', '.join(a + f)} FROM {relation}) AS a) AS b"
            xs = {i: (x if x.startswith("_js_x") else x.replace(d.q(self.nums[i].name), f"_js_c{i}", 1))
                  for i, x in xs.items()}
            kref = kcols
        else:
            source, kref = relation, cats
        # level c: each numeric column's state and its value (missing or misfit: NULL; clipped)
        cc = list(kref)
        for i, c in enumerate(self.nums):
            state, v = self._state(i, c, xs.get(i))
            cc += [f"{state} AS _js_s{i}", f"{v} AS _js_v{i}"]
        level_c = f"(SELECT {', '.join(cc + f)} FROM {source}) AS c"
        # level g: grid values and histogram bins
        pos = {c.name: i for i, c in enumerate(self.nums)}
        scols = [f"_js_s{i}" for i in range(len(self.nums))]
        gg = kcols + scols
        for n, t in enumerate(self.terms):
            gg.append(f"{_grid_sql(d, t, f'_js_v{pos[t.column]}')} AS _js_g{n}")
        for h, stat in enumerate(self.hists):
            v = f"_js_v{pos[stat.columns[0]]}"
            edges = [d.flt(e) for e in stat.edges]
            nb = len(edges) - 1
            case = " ".join(f"WHEN {v} < {edges[k + 1]} THEN {k}" for k in range(nb - 1))
            gg.append(f"CASE WHEN {v} IS NULL OR {v} < {edges[0]} OR {v} > {edges[-1]} "
                      f"THEN NULL {case} ELSE {nb - 1} END AS _js_b{h}")
        level_g = f"(SELECT {', '.join(gg + f)} FROM {level_c}) AS g"
        return level_g, kcols + scols + [f"_js_b{h}" for h in range(len(self.hists))]

    def _state(self, i: int, c: Column, x: str | None) -> tuple[str, str]:
        """(SQL of the column's state, SQL of its value: NULL unless present, then clipped)."""
        d, kind = self.d, self.kinds[c.name]
        null = f"CAST(NULL AS {d.double})"
        if kind == "null":
            return str(_MISSING_STATE), null
        if kind not in ("num", "text"):
            return (f"(CASE WHEN {x} IS NULL THEN {_MISSING_STATE} "
                    f"ELSE {_STATE_REASONS['non_numeric']} END)"), null
        # a present value: finite, integral for an integer column; clipped if out of bounds
        ok, inner = d.finite(x), []
        if c.type == "integer":
            inner.append(f"WHEN {x} <> {d.rint(x)} THEN {_STATE_REASONS['non_integral']}")
            ok = f"({ok} AND {x} = {d.rint(x)})"
        value = x
        if c.bounds is not None:
            lo, hi = d.flt(c.bounds[0]), d.flt(c.bounds[1])
            inner.append(f"WHEN {x} < {lo} OR {x} > {hi} THEN {_CLIPPED}")
            value = f"(CASE WHEN {x} < {lo} THEN {lo} WHEN {x} > {hi} THEN {hi} ELSE {x} END)"
        present = f"(CASE {' '.join(inner)} ELSE {_PRESENT} END)" if inner else str(_PRESENT)
        if kind == "num":
            absent = f"WHEN {x} IS NULL OR {d.isnan(x)} THEN {_MISSING_STATE}"
        else:  # text: not a number, or a missing-value token
            missing = ", ".join(_lit_str(m) for m in _MISSING_SQL)
            absent = (f"WHEN {x} IS NULL THEN (CASE WHEN _js_t{i} IS NULL OR lower(_js_t{i}) IN ({missing}) "
                      f"THEN {_MISSING_STATE} ELSE {_STATE_REASONS['non_numeric']} END)")
        state = (f"(CASE WHEN {d.finite(x)} THEN {present} {absent} "
                 f"ELSE {_STATE_REASONS['non_finite']} END)")
        return state, f"(CASE WHEN {ok} THEN {value} END)"


class _Groups:
    """The rows of a grouped scan, decoded: level codes, states, bins, counts and exact sums."""

    def __init__(self, query: _GroupedQuery, rows: list[tuple], key_column, probs: _Problems,
                 sums: bool = True) -> None:
        self.q = query
        self.gram: dict[str, list[int]] = {}  # Gram partials from the ungrouped scan, if any
        self.raw = [tuple(r[j] for r in rows) for j in range(len(query.cats))]
        nc, ns, nh = len(query.cats), len(query.nums), len(query.hists)
        self.counts = [int(r[nc + ns + nh]) for r in rows]
        self.total = sum(self.counts)
        start = nc + ns + nh + 1
        nl = len(query.linear) if sums else 0
        self.linear = [[int(v or 0) for v in r[start:start + nl]] for r in rows]
        self.pairs = [[int(v or 0) for v in r[start + nl:]] for r in rows]
        self.codes: dict[str, list[int]] = {}
        self.unmapped = False  # some categorical column's values have no text form
        for j, c in enumerate(query.cats):
            col = tuple(r[j] for r in rows)
            if key_column is None:  # the scan grouped by level codes already
                self.codes[c.name] = [-1 if v is None else int(v) for v in col]
                continue
            codes = _level_codes(c, key_column(col), self.counts, probs)
            if codes is None:
                self.unmapped = True
                return
            self.codes[c.name] = codes
        self.states = {c.name: [int(r[nc + i]) for r in rows] for i, c in enumerate(query.nums)}
        self.bins = [[r[nc + ns + h] for r in rows] for h in range(nh)]

    def mapping(self) -> dict[str, dict[int, list]]:
        """Per categorical column: level code -> the source values that map to it."""
        out: dict[str, dict[int, list]] = {}
        for j, c in enumerate(self.q.cats):
            m = out.setdefault(c.name, {})
            seen = set()
            for raw, code in zip(self.raw[j], self.codes[c.name]):
                key = (type(raw), raw)
                if code >= 0 and key not in seen:
                    seen.add(key)
                    m.setdefault(code, []).append(raw)
        return out

    def _present(self, names: Sequence[str]) -> list[int]:
        """Indices of the groups whose rows have every one of ``names`` present."""
        rows = range(len(self.counts))
        for n in names:
            if n in self.states:
                st = self.states[n]
                rows = [g for g in rows if st[g] <= _CLIPPED]
            else:
                k = self.codes[n]
                rows = [g for g in rows if k[g] >= 0]
        return list(rows)

    def count_state(self, i: int, state: int) -> int:
        st = self.states[self.q.nums[i].name]
        return sum(n for n, s in zip(self.counts, st) if s == state)

    def count_missing(self, name: str) -> int:
        if name in self.states:
            return sum(n for n, s in zip(self.counts, self.states[name]) if s > _CLIPPED)
        return sum(n for n, k in zip(self.counts, self.codes[name]) if k < 0)

    def partials(self, plan: Plan) -> dict[str, list[int]]:
        q = self.q
        out: dict[str, list[int]] = {}
        for stat in plan.statistics:
            rows = self._present(stat.columns)
            if stat.kind == "count":
                out[stat.name] = [sum(self.counts[g] for g in rows)]
            elif stat.kind == "crosstab":
                cells = [0] * stat.partial_size
                kr, kc = self.codes[stat.columns[0]], self.codes[stat.columns[1]]
                for g in rows:
                    cells[kr[g] * stat.shape[1] + kc[g]] += self.counts[g]
                out[stat.name] = cells
            elif stat.kind == "histogram":
                bins = [0] * stat.partial_size
                b = self.bins[q.hists.index(stat)]
                for g in rows:
                    if b[g] is not None:
                        bins[int(b[g])] += self.counts[g]
                out[stat.name] = bins
            elif stat.name in self.gram:
                out[stat.name] = self.gram[stat.name]
            else:
                out[stat.name] = self._gram(stat, rows)
        return out

    def _gram(self, stat: StatPlan, rows: list[int]) -> list[int]:
        q = self.q
        lin = {t: n for n, t in enumerate(q.linear)}
        pair = {p: n for n, p in enumerate(q.pairs)}

        def entry(a: Term, b: Term) -> int:
            if a.kind == "num" and b.kind != "num":
                a, b = b, a
            # a is the constant or an indicator (or both are numeric)
            picked = rows
            for t in (a, b):
                if t.kind == "ind":
                    k = self.codes[t.column]
                    picked = [g for g in picked if k[g] == t.level]
            if b.kind != "num":
                return sum(self.counts[g] for g in picked)
            tb = q.term_index[_term_key(b)]
            if a.kind != "num":
                n = lin[tb]
                return sum(self.linear[g][n] for g in picked)
            ta = q.term_index[_term_key(a)]
            n = pair[(min(ta, tb), max(ta, tb))]
            return sum(self.pairs[g][n] for g in picked)

        k = len(stat.terms)
        return [entry(stat.terms[a], stat.terms[b]) for a in range(k) for b in range(a, k)]

def _level_codes(c: Column, values: pa.Array, counts: Sequence[int], probs: _Problems) -> list[int] | None:
    """Each value's level code by the file readers' rules (negative: missing or not a level;
    values that are no level are counted, with their ``counts``); None if the column's type
    has no text form."""
    if isinstance(values, pa.DictionaryArray):
        values = values.cast(values.type.value_type)
    encoder = _CategoricalEncoder(c)
    text = _as_text(values)
    if text is None:
        return None
    if pa.types.is_dictionary(text.type):
        text = text.cast(text.type.value_type)
    codes = []
    for word, n in zip(text.to_pylist(), counts):
        code = _MISSING if word is None else encoder._code(word)
        if code == _INVALID:
            probs.add(c.name, "levels", int(n))
        codes.append(code if code >= 0 else -1)
    return codes


def _term_key(t: Term) -> tuple:
    return (t.column, t.offset, t.multiplier, t.mult != 0, t.grid_lo, t.grid_hi)


def _grid_sql(d: _Dialect, t: Term, v: str) -> str:
    """``round((v - offset) * multiplier)`` as numpy computes it (see the module docstring)."""
    x = f"({v} - {d.flt(t.offset)})" if t.offset else v
    g = f"CAST({d.rint(f'{x} * {d.flt(t.multiplier)}')} AS {d.bigint})"
    if t.mult:  # DP mode: clipped to the grid, as _local._grid_values (g computed once;
        # LEAST and GREATEST skip NULLs, so a missing value stays NULL through the CASE)
        g = f"(CASE WHEN {v} IS NOT NULL THEN LEAST(GREATEST({g}, {int(t.grid_lo)}), {int(t.grid_hi)}) END)"
    return g


def _sql_value(v, d: _Dialect) -> str:
    """A distinct value fetched from the engine, as a literal compared with its column."""
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return d.text(repr(v))
    return d.text(str(v))


def _case_codes(col: str, mapping: dict[int, list], d: _Dialect) -> str:
    if not mapping:
        return "CAST(NULL AS INTEGER)"
    whens = " ".join(f"WHEN {col} IN ({', '.join(_sql_value(v, d) for v in vals)}) THEN {code}"
                     for code, vals in sorted(mapping.items()))
    return f"(CASE {whens} END)"


# --------------------------------------------------------------------------- DuckDB


def _duckdb_kind(type_name: str) -> str:
    t = type_name.upper()
    if t.startswith(("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                     "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")):
        return "num"
    if t.startswith("VARCHAR"):
        return "text"
    if t == "BOOLEAN":
        return "bool"
    if t == '"NULL"' or t == "NULL":
        return "null"
    return "other"


class DuckDBSource(SqlSource):
    """A DuckDB database table or query (read-only), or files read by DuckDB."""

    dialect = _DuckDB()

    def __init__(self, spec: str, *, database: Path | None = None, table: str | None = None,
                 query: str | None = None, files: str | None = None, file_format: str | None = None,
                 path: Path | None = None) -> None:
        super().__init__(spec, path or database)
        self.database, self.table, self.query, self.files, self.file_format = (
            database, table, query, files, file_format)
        self._con = None
        self.same_headers = False

    def _connect(self):
        if self._con is None:
            try:
                import duckdb
            except ImportError:
                raise ConfigError(f"data source {self.spec!r} needs the duckdb package "
                                  "(pip install duckdb)") from None
            try:
                if self.database is not None:
                    self._con = duckdb.connect(str(self.database), read_only=True)
                else:
                    self._con = duckdb.connect()
                threads = os.environ.get("JOINTSTATS_THREADS")
                if threads and threads.isdigit() and int(threads) > 0:
                    self._con.execute(f"SET threads = {int(threads)}")
            except duckdb.Error:
                raise ConfigError(f"data source {self.spec!r} could not be opened by DuckDB") from None
        return self._con

    def _relation(self) -> str:
        if self.query is not None:
            return f"({self.query}) AS src"
        if self.table is not None:
            return ".".join(_quote(p) for p in self.table.split("."))
        files = _lit_str(self.files)
        if self.file_format == "parquet":
            return f"read_parquet({files}, hive_partitioning = true, union_by_name = true)"
        per_file = "store_rejects = true" if self.same_headers else "union_by_name = true"
        return (f"read_csv({files}, header = true, all_varchar = true, hive_partitioning = true, "
                f"{per_file})")

    def _rejected(self) -> tuple[int, int]:
        if self.files is None or self.file_format != "csv" or not self.same_headers:
            return 0, 0
        rows = self._query(
            "SELECT error_type, COUNT(DISTINCT (file_id, line)) FROM reject_errors WHERE scan_id = "
            "(SELECT MAX(scan_id) FROM reject_scans) GROUP BY error_type")
        bad = {str(kind).upper(): int(n) for kind, n in rows}
        undecodable = sum(n for kind, n in bad.items() if "ENCODING" in kind or "UNICODE" in kind)
        return sum(bad.values()) - undecodable, undecodable

    def _run(self, sql: str):
        import duckdb
        try:
            return self._connect().execute(sql)
        except duckdb.Error as exc:
            raise _engine_error(self.spec, exc) from None

    def _describe(self) -> list[tuple[str, str]]:
        rows = self._run(f"DESCRIBE SELECT * FROM {self._relation()}").fetchall()
        return [(r[0], _duckdb_kind(r[1])) for r in rows]

    def _query(self, sql: str) -> list[tuple]:
        return self._run(sql).fetchall()

    def _query_arrow(self, sql: str) -> pa.Table:
        import duckdb
        try:
            rel = self._connect().sql(sql)
            # duckdb 2 calls it to_arrow_table; 1.x arrow
            return (getattr(rel, "to_arrow_table", None) or rel.arrow)()
        except duckdb.Error as exc:
            raise _engine_error(self.spec, exc) from None

    def _stream(self, sql: str) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        import duckdb
        try:
            rel = self._connect().sql(sql)
            fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
            reader = fetch(_FETCH_ROWS)
            for batch in reader:
                yield batch.num_rows, {name: batch.column(name) for name in batch.schema.names}
        except duckdb.Error:
            raise _ReadError("its data could not be read by DuckDB") from None

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _variants(token: str) -> set[str]:
    from jointstats.engine.sources import _case_variants
    return _case_variants(token)


def _engine_error(spec: str, exc: Exception) -> ConfigError:
    """One line naming the source (never credentials), and the kind of failure."""
    name = type(exc).__name__
    text = str(exc).lower()
    if "permission" in name.lower() or "privilege" in name.lower() or "permission denied" in text:
        what = "permission denied"
    elif "catalog" in name.lower() or "does not exist" in text or "undefinedtable" in name.lower():
        what = "a table, view or column it names does not exist"
    elif "io" in name.lower() and "error" in name.lower():
        what = "its files could not be read"
    elif "syntax" in name.lower() or "parser" in name.lower():
        what = "its query is not valid SQL"
    elif "operational" in name.lower() or "connection" in name.lower():
        what = "the server could not be reached or refused the connection"
    else:
        what = f"the engine failed ({name})"
    return ConfigError(f"data source {redact(spec)!r}: {what}")


# --------------------------------------------------------------------------- PostgreSQL

_PG_NUM = {20, 21, 23, 700, 701, 1700, 26}
_PG_TEXT = {25, 1043, 1042, 19, 18}


class PostgresSource(SqlSource):
    """A PostgreSQL table or read-only query, through psycopg (libpq), one snapshot per job."""

    dialect = _Postgres()

    def __init__(self, spec: str, *, conninfo: dict, table: str | None, query: str | None) -> None:
        super().__init__(spec)
        self._conninfo = conninfo
        self.table, self.query = table, query
        self._con = None

    def _connect(self):
        if self._con is None:
            try:
                import psycopg
            except ImportError:
                raise ConfigError(f"data source {redact(self.spec)!r} needs the psycopg package "
                                  "(pip install 'psycopg[binary]')") from None
            try:
                con = psycopg.connect(**self._conninfo, connect_timeout=10,
                                      application_name="jointstats")
                con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                con.read_only = True
                self._con = con
            except psycopg.Error as exc:
                raise _pg_error(self.spec, exc) from None
        return self._con

    def _relation(self) -> str:
        if self.query is not None:
            return f"({self.query}) AS src"
        return ".".join(_quote(p) for p in self.table.split("."))

    def _cursor_run(self, sql: str):
        import psycopg
        cur = self._connect().cursor()
        try:
            cur.execute(sql)
        except psycopg.Error as exc:
            raise _pg_error(self.spec, exc) from None
        return cur

    def _describe(self) -> list[tuple[str, str]]:
        cur = self._cursor_run(f"SELECT * FROM {self._relation()} LIMIT 0")
        out = []
        for col in cur.description:
            oid = col.type_code
            kind = ("num" if oid in _PG_NUM else "text" if oid in _PG_TEXT
                    else "bool" if oid == 16 else "other")
            out.append((col.name, kind))
        return out

    def _query(self, sql: str) -> list[tuple]:
        return self._cursor_run(sql).fetchall()

    def _grouped(self, sql: str, cap: int | None) -> list[tuple] | None:
        # the planner cannot know how few groups there are (a handful of level codes and
        # states): without this it sorts the rows instead of hashing them
        self._cursor_run("SET LOCAL enable_sort = off")
        return super()._grouped(sql, cap)

    def _key_column(self, values: tuple) -> pa.Array:
        return _py_column(tuple(_pg_py(v) for v in values))

    def _query_arrow(self, sql: str) -> pa.Table:
        cur = self._cursor_run(sql)
        rows = cur.fetchall()
        width = len(cur.description)
        cols = list(zip(*rows)) if rows else [()] * width
        return pa.table({f"c{i}": _py_column(tuple(_pg_py(v) for v in col)) for i, col in enumerate(cols)})

    def _stream(self, sql: str) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        import psycopg
        con = self._connect()
        try:
            with con.cursor(name="jointstats_rows") as cur:
                cur.execute(sql)
                names = [c.name for c in cur.description]
                while True:
                    rows = cur.fetchmany(_FETCH_ROWS)
                    if not rows:
                        break
                    columns = list(zip(*rows))
                    yield len(rows), {n: _py_column(tuple(_pg_py(v) for v in col))
                                      for n, col in zip(names, columns)}
        except psycopg.Error:
            raise _ReadError("its database table could not be read") from None

    def close(self) -> None:
        if self._con is not None:
            try:
                self._con.rollback()
                self._con.close()
            finally:
                self._con = None


def _pg_py(v):
    """A PostgreSQL value as the SQLite reader would see it (Decimal -> float, as Arrow's cast)."""
    from decimal import Decimal
    if isinstance(v, Decimal):
        return float(v)
    return v


def _pg_error(spec: str, exc: Exception) -> ConfigError:
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate == "42501":
        what = "permission denied"
    elif sqlstate in ("42P01", "42703", "3F000"):
        what = "a table, view or column it names does not exist"
    elif sqlstate.startswith("42"):
        what = "its query is not valid SQL for this server"
    elif sqlstate == "28P01" or sqlstate == "28000":
        what = "the server refused the credentials"
    elif sqlstate == "3D000":
        what = "the database does not exist"
    elif sqlstate == "25006":
        what = "its query tried to write (the connection is read-only)"
    elif "authentication failed" in str(exc) or "no password supplied" in str(exc):
        what = "the server refused the credentials"
    elif type(exc).__name__ == "OperationalError":
        what = "the server could not be reached or refused the connection"
    else:
        what = f"the server failed ({type(exc).__name__})"
    return ConfigError(f"data source {redact(spec)!r}: {what}")


# --------------------------------------------------------------------------- opening

_OPTION_KEYS = ("query", "password_file", "spark", "format")


def _postgres(source: str, base_dir: Path, options: dict) -> PostgresSource:
    parts = urlsplit(source)
    if parts.password is not None:
        raise ConfigError(f"data source {redact(source)!r}: a password may not be in the source URL; "
                          "use PGPASSWORD, ~/.pgpass or password_file in the dataset entry")
    params = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(params) - {"table", "sslmode", "options"}
    if unknown:
        raise ConfigError(f"data source {redact(source)!r}: unknown parameter "
                          f"{', '.join(sorted(unknown))}; expected table (and sslmode)")
    table = (params.get("table") or [None])[0]
    query = options.get("query")
    if (table is None) == (query is None):
        raise ConfigError(f"data source {redact(source)!r}: expected one of ?table=name in the URL "
                          "or query: in the dataset entry")
    db = unquote(parts.path.lstrip("/"))
    if not db:
        raise ConfigError(f"data source {redact(source)!r}: no database name (postgresql://host/db)")
    info: dict = {"dbname": db}
    if parts.hostname:
        info["host"] = parts.hostname
    if parts.port:
        info["port"] = parts.port
    if parts.username:
        info["user"] = unquote(parts.username)
    if params.get("sslmode"):
        info["sslmode"] = params["sslmode"][0]
    pw_file = options.get("password_file")
    if pw_file is not None:
        p = Path(str(pw_file)).expanduser()
        p = p if p.is_absolute() else base_dir / p
        try:
            info["password"] = p.read_text().strip("\r\n")
        except OSError:
            raise ConfigError(f"data source {redact(source)!r}: its password_file could not be read") from None
    src = PostgresSource(source, conninfo=info, table=table, query=query)
    # connect and read the header now: a failure here (unreachable, credentials, permissions,
    # no such table) does not depend on the rows and is reported precisely in both modes
    src.columns()
    return src


def _duckdb(source: str, base_dir: Path, options: dict) -> DuckDBSource:
    rest = source[len("duckdb:///"):]
    raw_path, _, qs = rest.partition("?")
    params = parse_qs(qs)
    table = (params.get("table") or [None])[0]
    query = options.get("query")
    if not raw_path:
        raise ConfigError(f"data source {source!r}: no database path")
    if (table is None) == (query is None):
        raise ConfigError(f"data source {source!r}: expected one of ?table=name or query: in the dataset entry")
    path = Path(unquote(raw_path)).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"data source {source!r} not found (looked for {path})")
    src = DuckDBSource(source, database=path, table=table, query=query)
    src.columns()
    return src


def is_duckdb_files(source: str) -> bool:
    """True for file sources that DuckDB reads: .csv.gz, globs and directories."""
    low = source.lower()
    return (low.endswith((".csv.gz", ".csv.zst", ".tsv.gz")) or any(ch in source for ch in "*?[")
            or source.endswith("/"))


def _files(source: str, base_dir: Path, options: dict) -> DuckDBSource:
    raw = Path(source).expanduser()
    raw = raw if raw.is_absolute() else base_dir / raw
    fmt = options.get("format")
    if raw.is_dir():
        found = {p.suffix.lower() for p in raw.rglob("*") if p.is_file()}
        if fmt is None:
            fmt = "parquet" if {".parquet", ".pq"} & found else "csv"
        pattern = str(raw / "**" / ("*.parquet" if fmt == "parquet" else "*.csv*"))
    else:
        pattern = str(raw)
        low = pattern.lower()
        if fmt is None:
            fmt = "parquet" if low.endswith((".parquet", ".pq")) else "csv"
        import glob
        if not glob.glob(pattern, recursive=True):
            raise ConfigError(f"data source {source!r} not found (no file matches {pattern})")
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"data source {source!r}: format: expected parquet or csv, found {fmt!r}")
    src = DuckDBSource(source, files=pattern, file_format=fmt, path=raw)
    if fmt == "csv":
        # DuckDB counts rows it cannot split (store_rejects) only without union_by_name: use it
        # when every file has the same header line, else match columns by name
        src.same_headers = _same_csv_headers(pattern)
    src.columns()
    return src


def _same_csv_headers(pattern: str) -> bool:
    import glob
    import gzip
    headers = set()
    for name in glob.glob(pattern, recursive=True):
        try:
            opener = gzip.open if name.lower().endswith(".gz") else open if name.lower().endswith(".csv") else None
            if opener is None:
                return False
            with opener(name, "rb") as fh:
                headers.add(fh.readline(1 << 20).rstrip(b"\r\n"))
        except OSError:
            return False
        if len(headers) > 1:
            return False
    return True


def open_sql_source(source: str, base_dir: Path, options: dict | None = None) -> Source | None:
    """The source for an engine-backed kind, or None if ``source`` is a plain file or SQLite."""
    options = dict(options or {})
    unknown = set(options) - set(_OPTION_KEYS)
    if unknown:
        raise ConfigError(f"data source {redact(source)!r}: unknown dataset field "
                          f"{', '.join(sorted(unknown))}; expected {', '.join(_OPTION_KEYS)}")
    if source.startswith("sqlite:"):
        if options.get("query") is not None:
            raise ConfigError(f"data source {source!r}: query: is for postgresql://, duckdb: and spark: sources")
        return None
    if re.match(r"^postgres(ql)?://", source):
        return _postgres(source, base_dir, options)
    if source.startswith("duckdb:"):
        if not source.startswith("duckdb:///"):
            raise ConfigError(f"data source {source!r}: expected duckdb:///relative/path.duckdb?table=name "
                              "or duckdb:////absolute/path.duckdb?table=name")
        return _duckdb(source, base_dir, options)
    if source.startswith("spark:"):
        from jointstats.engine.spark_source import open_spark_source
        return open_spark_source(source, base_dir, options)
    if is_duckdb_files(source) or (Path(source).expanduser() if Path(source).is_absolute()
                                   else base_dir / source).is_dir():
        return _files(source, base_dir, options)
    if options.get("query") is not None:
        raise ConfigError(f"data source {source!r}: query: is for postgresql://, duckdb: and spark: sources")
    return None
