"""A party's data source, read in bounded-memory chunks and encoded against the schema.

A party configuration maps a logical dataset to a *source* string:

- ``path/to/file.csv`` -- comma-separated, UTF-8, double quotes for quoting, first
  line is the header, blank lines skipped (as by pandas); a row with the wrong
  number of fields is counted like a wrong-type value (strict reading: reported;
  lenient reading: read as a row whose every value is missing);
- ``path/to/file.parquet`` (or ``.pq``);
- ``sqlite:///path/to.db?table=name`` -- ``sqlite:////abs/path.db?table=t`` for an
  absolute path (one slash more, as in SQLAlchemy URLs).

Relative paths are relative to ``base_dir`` (the party configuration's folder).
:func:`open_source` checks that the file (and the SQLite table) exists and raises
:class:`~jointstats.errors.ConfigError` otherwise.

:meth:`Source.iter_chunks` reads only the schema's columns (extra columns are
ignored), at most ``chunk_rows`` rows at a time, and yields :class:`EncodedChunk`
objects: numeric columns as float64 arrays already clipped to the column's bounds,
categorical columns as level codes. Memory stays bounded by the chunk size (for
Parquet: by the larger of the chunk and the file's row-group size), however large
the source.

Missing values -- never an error; NaN in ``numeric``, -1 in ``codes``:

- CSV: an empty field or one of ``NA``, ``NaN``, ``null``, ``None`` in any letter
  case, surrounding blanks ignored. In a categorical column a declared level wins:
  with ``levels: [NA, EU]`` the text ``NA`` is the level, not a missing value.
- Parquet and SQLite: NULL (and a floating-point NaN); text values follow the CSV
  rules.

Type rules -- a violation is counted per column. Strict reading (``strict=True``,
the default; exact mode): once *every* chunk has been read the iterator raises one
:class:`~jointstats.errors.DataError` that names the party, each offending column
and its number of rows, never a value. (Chunks yielded before that error must be
discarded by the caller: iterate to the end before using any aggregate.)
Lenient reading (``strict=False``; DP mode, where a failure or a count that depends
on the data would bypass the noise): every violation is read as a missing value,
nothing is raised, and the counts go only to this process's own log (WARNING on the
``jointstats.sources`` logger). Lenient reading also reads CSV text that is not
valid UTF-8 as wrong-type values (strict reading fails on it), and both readings
retry a CSV with a larger read block when one row is longer than the block.
Errors that do not depend on the rows (the header lacks a schema column, the file
cannot be read at all) are raised in both modes.

- ``real``: a number. CSV text is parsed as a decimal number (``12``, ``-0.5``,
  ``1e3``, surrounding blanks allowed); integer, floating-point and decimal
  Parquet/SQLite values are taken as they are. Anything else (other text,
  booleans, dates, binary, infinities) is a wrong-type value.
- ``integer``: as ``real``, and the number must be integral (``3`` and ``3.0``
  are fine, ``2.5`` is not).
- ``categorical``: the value must be one of the declared levels, compared as
  text: first exactly (after trimming blanks), then ignoring letter case if that
  singles out one level, then as numbers if both sides are numbers (``1.0``
  matches level ``1``). Non-text source values are compared through their text
  form: integers ``0``/``1`` match levels ``'0'``/``'1'``, floats are written
  shortest (``1.0`` -> ``'1'``), Parquet booleans become ``'true'``/``'false'``
  (so they match levels ``true``/``false`` or ``True``/``False``).

Numeric values outside ``bounds`` are clipped to the nearest bound; the number
of clipped values per column is reported in each chunk (``EncodedChunk.clipped``)
for the owner's log.
"""
from __future__ import annotations

import abc
import contextlib
import csv
import io
import itertools
import logging
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import parse_qs, unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from jointstats.errors import ConfigError, DataError, SpecError
from jointstats.plan.spec import Column

__all__ = [
    "MISSING_TOKENS",
    "MISFIT_RULE_DP",
    "EncodedChunk",
    "Source",
    "CsvSource",
    "ParquetSource",
    "SqliteSource",
    "open_source",
]

log = logging.getLogger("jointstats.sources")

#: Text meaning "missing" (compared case-insensitively, after trimming blanks).
MISSING_TOKENS: tuple[str, ...] = ("", "na", "nan", "null", "none")

#: The rule for values that misfit the schema in DP mode (lenient reading), as stated in
#: every DP result's privacy block: fixed text, never a count.
MISFIT_RULE_DP = ("values outside the declared levels or of the wrong type, and rows with the "
                  "wrong number of fields, count as missing (each owner logs how many, locally); "
                  "numeric values outside the bounds are clipped")

_NUMERIC_KINDS = ("real", "integer")
_KINDS = ("real", "integer", "categorical")

# A decimal number as accepted in text (CSV, SQLite/Parquet text values).
# (Infinities parse, then count as "infinite values".)
_NUMBER_RE = r"^[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity))$"
_NUMBER = re.compile(_NUMBER_RE)

# Rows handed to the encoder at a time (the output is re-chunked to chunk_rows).
_SQLITE_FETCH_ROWS = 1 << 16
_PARQUET_BATCH_ROWS = 1 << 18  # = the party's chunk size: no re-chunking copies
_CSV_MIN_BLOCK = 1 << 20  # pyarrow's streaming CSV reader is fastest around 1 MiB
_CSV_MAX_BLOCK = 1 << 28  # a row longer than this cannot be read
# Text standing for a value that is not valid UTF-8: never a number, a level or a missing token.
_NOT_TEXT = "\x00<binary>"

# Sentinel codes used while mapping categorical values.
_MISSING = -1
_INVALID = -2

# Problem kinds, in the order they are reported.
_REASONS = {
    "non_numeric": "non-numeric values",
    "non_finite": "infinite values",
    "non_integral": "non-integral values",
    "levels": "values outside the declared levels",
}


def _case_variants(token: str) -> set[str]:
    return {"".join(p) for p in itertools.product(*[(c.lower(), c.upper()) for c in token])}


# pyarrow's null_values are case-sensitive: spell out every letter-case variant.
_CSV_NULLS = sorted(set().union(*(_case_variants(t) for t in MISSING_TOKENS)))


@dataclass(frozen=True)
class EncodedChunk:
    """Up to ``chunk_rows`` consecutive rows of one source, encoded against the schema.

    - ``numeric[name]``: float64, NaN for missing, clipped to the column's bounds
      (``real`` and ``integer`` columns);
    - ``codes[name]``: level index 0..L-1, -1 for missing (int16, or int32 when a
      column has more than 32,767 levels) for ``categorical`` columns;
    - ``clipped[name]``: how many values of a numeric column were moved to a bound;
    - ``missing[name]``: how many values of each column are missing.
    """

    n_rows: int
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- plumbing


class _Tally:
    """Problems found while reading, accumulated over every chunk; ``strict`` says how
    the reader treats them (see the module docstring)."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.invalid: dict[str, dict[str, int]] = {}
        self.malformed_rows = 0
        self.rows = 0
        self.clipped: dict[str, int] = {}
        self.missing: dict[str, int] = {}

    def add(self, column: str, reason: str, count: int) -> None:
        if count:
            per = self.invalid.setdefault(column, {})
            per[reason] = per.get(reason, 0) + int(count)


@dataclass
class _Piece:
    """An encoded slice of rows, before re-chunking."""

    n: int
    numeric: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    clip_masks: dict[str, np.ndarray]

    def slice(self, start: int, stop: int) -> "_Piece":
        return _Piece(
            stop - start,
            {k: v[start:stop] for k, v in self.numeric.items()},
            {k: v[start:stop] for k, v in self.codes.items()},
            {k: v[start:stop] for k, v in self.clip_masks.items()},
        )

    @staticmethod
    def concat(pieces: list["_Piece"]) -> "_Piece":
        if len(pieces) == 1:
            return pieces[0]
        first = pieces[0]
        return _Piece(
            sum(p.n for p in pieces),
            {k: np.concatenate([p.numeric[k] for p in pieces]) for k in first.numeric},
            {k: np.concatenate([p.codes[k] for p in pieces]) for k in first.codes},
            {k: np.concatenate([p.clip_masks[k] for p in pieces]) for k in first.clip_masks},
        )

    def to_chunk(self) -> EncodedChunk:
        missing = {k: int(np.count_nonzero(np.isnan(v))) for k, v in self.numeric.items()}
        missing.update({k: int(np.count_nonzero(v < 0)) for k, v in self.codes.items()})
        return EncodedChunk(
            n_rows=self.n,
            numeric=self.numeric,
            codes=self.codes,
            clipped={k: int(np.count_nonzero(m)) for k, m in self.clip_masks.items()},
            missing=missing,
        )


def _rechunk(pieces: Iterator[_Piece], chunk_rows: int) -> Iterator[EncodedChunk]:
    """Cut a stream of encoded pieces into chunks of exactly ``chunk_rows`` rows
    (the last one may be shorter)."""
    buf: list[_Piece] = []
    buffered = 0
    for piece in pieces:
        if piece.n == 0:
            continue
        buf.append(piece)
        buffered += piece.n
        while buffered >= chunk_rows:
            take: list[_Piece] = []
            need = chunk_rows
            while need:
                head = buf[0]
                if head.n <= need:
                    take.append(buf.pop(0))
                    need -= head.n
                else:
                    take.append(head.slice(0, need))
                    buf[0] = head.slice(need, head.n)
                    need = 0
            buffered -= chunk_rows
            yield _Piece.concat(take).to_chunk()
    if buffered:
        yield _Piece.concat(buf).to_chunk()


# --------------------------------------------------------------------------- encoding


def _parse_numeric_text(arr: pa.Array) -> tuple[np.ndarray, int]:
    """Text -> float64 under the CSV rules; returns (values, number of non-numeric)."""
    arr = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
    s = pc.utf8_trim_whitespace(arr)
    low = pc.utf8_lower(s)
    missing = pc.or_(
        pc.is_in(low, value_set=pa.array(list(MISSING_TOKENS) + ["+nan", "-nan"])),
        pc.is_null(s),
    )
    numeric = pc.match_substring_regex(s, _NUMBER_RE)
    numeric = pc.fill_null(numeric, False)
    bad = pc.and_(pc.invert(numeric), pc.invert(pc.fill_null(missing, True)))
    n_bad = pc.sum(bad).as_py() or 0
    values = pc.cast(pc.if_else(numeric, s, pa.scalar(None, pa.string())), pa.float64())
    return _float64_numpy(values), int(n_bad)


def _float64_numpy(arr: pa.Array) -> np.ndarray:
    """A float64 Arrow array as numpy, NaN where null: a read-only view of the Arrow buffer
    when there are no nulls (no copy), a filled copy otherwise.

    Read straight from the Arrow buffers: pyarrow's ``to_numpy(zero_copy_only=False)`` and
    ``fill_null`` import pandas (about 0.25 s per party process), which a party never needs.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n, offset = len(arr), arr.offset
    validity, data = arr.buffers()[:2]
    if data is None or n == 0:
        return np.full(n, np.nan)
    values = np.frombuffer(data, dtype=np.float64, count=offset + n)[offset:]
    if arr.null_count:
        values = values.copy()
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
        values[bits[offset:offset + n] == 0] = np.nan
    return values


def _int_numpy(arr: pa.Array) -> np.ndarray:
    """A null-free integer Arrow array as a numpy view of its buffer (no pandas, as above)."""
    kind = "int" if pa.types.is_signed_integer(arr.type) else "uint"
    dtype = np.dtype(f"{kind}{arr.type.bit_width}")
    if len(arr) == 0 or arr.buffers()[1] is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=arr.offset + len(arr))[arr.offset:]


def _to_float(arr: pa.Array) -> tuple[np.ndarray, int]:
    """Any Arrow array -> float64 with NaN for missing; returns (values, non-numeric count)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        if t != pa.float64():
            arr = pc.cast(arr, pa.float64(), safe=False)
        return _float64_numpy(arr), 0
    if pa.types.is_null(t):
        return np.full(len(arr), np.nan), 0
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _parse_numeric_text(arr)
    # booleans, dates, binary, nested...: every present value has the wrong type
    return np.full(len(arr), np.nan), len(arr) - arr.null_count


def _encode_numeric(arr: pa.Array, col: Column, tally: _Tally) -> tuple[np.ndarray, np.ndarray | None]:
    """Float64 values of a numeric column (NaN for missing or invalid), clipped to its bounds.

    The values may be a read-only view of the Arrow buffer; they are copied only when
    something has to change (infinities, non-integral integers, values to clip)."""
    vals, n_text = _to_float(arr)
    tally.add(col.name, "non_numeric", n_text)

    def writable(v: np.ndarray) -> np.ndarray:
        return v if v.flags.writeable else v.copy()

    inf = np.isinf(vals)
    if inf.any():
        tally.add(col.name, "non_finite", int(np.count_nonzero(inf)))
        vals = writable(vals)
        vals[inf] = np.nan
    if col.type == "integer":
        frac = np.isfinite(vals)
        np.not_equal(vals, np.round(vals), out=frac, where=frac)
        if frac.any():
            tally.add(col.name, "non_integral", int(np.count_nonzero(frac)))
            vals = writable(vals)
            vals[frac] = np.nan
    mask = None
    if col.bounds is not None:
        lo, hi = float(col.bounds[0]), float(col.bounds[1])
        mask = (vals < lo) | (vals > hi)
        if mask.any():
            vals = np.clip(vals, lo, hi, out=vals if vals.flags.writeable else None)
    return vals, mask


def _level_matcher(levels: Sequence[str]) -> Callable[[str | None], int]:
    """value text -> level index, or _MISSING / _INVALID (see the module docstring)."""
    exact = {lv: i for i, lv in enumerate(levels)}
    folded: dict[str, int | None] = {}
    numbers: dict[float, int | None] = {}
    for i, lv in enumerate(levels):
        key = lv.strip().lower()
        folded[key] = None if key in folded else i  # None: ambiguous
        if _NUMBER.match(lv.strip()):
            num = float(lv)
            numbers[num] = None if num in numbers else i

    def match(value: str | None) -> int:
        if value is None:
            return _MISSING
        i = exact.get(value)
        if i is not None:
            return i
        s = value.strip()
        i = exact.get(s)
        if i is not None:
            return i
        i = folded.get(s.lower())
        if i is not None:
            return i
        if numbers and _NUMBER.match(s):
            i = numbers.get(float(s))
            if i is not None:
                return i
        if s.lower() in MISSING_TOKENS:
            return _MISSING
        return _INVALID

    return match


def _as_text(arr: pa.Array) -> pa.Array | None:
    """A categorical source column as text (dictionary or string); None if impossible."""
    t = arr.type
    if pa.types.is_dictionary(t):
        if pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type):
            return arr
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return arr
    if pa.types.is_floating(t):
        # NaN is missing, not a level
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, t), arr)
    try:
        return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            # some value is not UTF-8: only that value misfits, not the whole batch
            return _utf8_or_not_text(pc.dictionary_encode(arr))
        return None


class _CategoricalEncoder:
    """Maps text to level codes, remembering each distinct value seen."""

    def __init__(self, col: Column) -> None:
        self.col = col
        self.match = _level_matcher(col.levels or ())
        self.cache: dict[str, int] = {}
        self.dtype = np.int16 if len(col.levels or ()) <= np.iinfo(np.int16).max else np.int32

    def _code(self, value: str) -> int:
        code = self.cache.get(value)
        if code is None:
            code = self.match(value)
            if len(self.cache) < 100_000:
                self.cache[value] = code
        return code

    def encode(self, arr: pa.Array, tally: _Tally) -> np.ndarray:
        n = len(arr)
        text = _as_text(arr)
        if text is None:  # e.g. nested values: every present value is invalid
            tally.add(self.col.name, "levels", n - arr.null_count)
            return np.full(n, _MISSING, dtype=self.dtype)
        if pa.types.is_null(text.type):
            return np.full(n, _MISSING, dtype=self.dtype)
        if not pa.types.is_dictionary(text.type):
            text = pc.dictionary_encode(text)
        dictionary = text.dictionary.to_pylist()
        # lookup table with one extra slot (at the end) for null indices
        lut = np.fromiter(
            (self._code(v) if v is not None else _MISSING for v in dictionary),
            dtype=np.int32,
            count=len(dictionary),
        )
        lut = np.append(lut, np.int32(_MISSING))
        idx = text.indices
        if idx.null_count:
            idx = pc.fill_null(idx, len(dictionary))
        codes = lut[_int_numpy(idx)]
        if (lut == _INVALID).any():
            bad = codes == _INVALID
            tally.add(self.col.name, "levels", int(np.count_nonzero(bad)))
            codes[bad] = _MISSING
        return codes.astype(self.dtype, copy=False)


# --------------------------------------------------------------------------- sources


class Source(abc.ABC):
    """One party's data source; see the module docstring for the rules."""

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec  # the source string as configured (used in messages)
        self.path = path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    @abc.abstractmethod
    def columns(self) -> list[str]:
        """The source's column names (its header), in order."""

    @abc.abstractmethod
    def _batches(self, schema: list[Column], tally: _Tally) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        """Raw Arrow arrays of the schema's columns, a bounded number of rows at a time."""

    def iter_chunks(
        self, schema: Sequence[Column], party: str, chunk_rows: int = 1 << 20, *,
        strict: bool = True, exclude=None,
    ) -> Iterator[EncodedChunk]:
        """Encoded chunks of at most ``chunk_rows`` rows (all but the last exactly).

        The header is checked at once (DataError if a schema column is missing).
        Wrong-type values, unknown levels and malformed CSV rows are counted while
        reading; with ``strict`` they raise one DataError after the last chunk,
        otherwise they are read as missing values and only logged here (WARNING).
        An empty source yields no chunk.

        ``exclude`` (a ``jointstats.ledger.consent.Exclusion``): rows whose subject identifier
        column, read as text, is one of its ids are left out before anything is encoded
        (consent withdrawal); how many only this party's log says.
        """
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError("chunk_rows must be a positive integer")
        cols = _check_schema(schema)
        header = self.columns()
        if exclude is not None and exclude.column not in header:
            raise DataError(f"party {party!r}: column {exclude.column!r} (its subject_id for "
                            f"consent withdrawal) is missing from its data (source {self.spec})")
        missing = [c.name for c in cols if c.name not in header]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            what = f"column {names} is" if len(missing) == 1 else f"columns {names} are"
            raise DataError(f"party {party!r}: {what} missing from its data (source {self.spec})")
        for c in cols:
            if header.count(c.name) > 1:
                raise DataError(
                    f"party {party!r}: column {c.name!r} appears {header.count(c.name)} times "
                    f"in its data (source {self.spec})"
                )
        return self._iter(cols, party, chunk_rows, strict, exclude)

    def _iter(self, cols: list[Column], party: str, chunk_rows: int,
              strict: bool = True, exclude=None) -> Iterator[EncodedChunk]:
        tally = _Tally(strict)
        cat = {c.name: _CategoricalEncoder(c) for c in cols if c.type == "categorical"}
        read = cols
        if exclude is not None and exclude.ids:
            # the identifier column is read as text beside the schema's (never encoded)
            if exclude.column not in [c.name for c in cols]:
                read = cols + [Column(exclude.column, "categorical", None, ("",))]
            withdrawn = pa.array(sorted(exclude.ids), pa.string())
        excluded = 0

        def pieces() -> Iterator[_Piece]:
            nonlocal excluded
            try:
                for n, arrays in self._batches(read, tally):
                    if exclude is not None and exclude.ids:
                        ids = _as_text(arrays[exclude.column])
                        if ids is None:
                            raise _ReadError(f"its subject_id column {exclude.column!r} cannot be "
                                             "read as text")
                        if pa.types.is_dictionary(ids.type):
                            ids = ids.cast(ids.type.value_type)
                        keep = pc.invert(pc.fill_null(pc.is_in(ids, value_set=withdrawn), False))
                        kept = pc.sum(keep).as_py() or 0
                        if kept != n:
                            excluded += n - kept
                            arrays = {k: pc.filter(v, keep) for k, v in arrays.items()}
                            n = kept
                        if not n:
                            continue
                    numeric: dict[str, np.ndarray] = {}
                    codes: dict[str, np.ndarray] = {}
                    masks: dict[str, np.ndarray] = {}
                    for c in cols:
                        if c.type == "categorical":
                            codes[c.name] = cat[c.name].encode(arrays[c.name], tally)
                        else:
                            vals, mask = _encode_numeric(arrays[c.name], c, tally)
                            numeric[c.name] = vals
                            if mask is not None:
                                masks[c.name] = mask
                    yield _Piece(n, numeric, codes, masks)
            except _ReadError as exc:
                # the underlying message may quote a row: never pass it on
                raise DataError(f"party {party!r}: {exc.reason} (source {self.spec})") from None

        for chunk in _rechunk(pieces(), chunk_rows):
            tally.rows += chunk.n_rows
            for k, v in chunk.clipped.items():
                tally.clipped[k] = tally.clipped.get(k, 0) + v
            for k, v in chunk.missing.items():
                tally.missing[k] = tally.missing.get(k, 0) + v
            yield chunk

        problems = misfit_problems(cols, tally.invalid, tally.malformed_rows)
        if problems:
            msg = f"party {party!r}: " + "; ".join(problems)
            if strict:
                log.warning("%s (source %s)", msg, self.spec)
                raise DataError(msg)
            # the owner's own log only: never raised, never sent to a peer or the analyst
            log.warning("%s; read as missing values (source %s)", msg, self.spec)
        if exclude is not None:  # the owner's own log only
            log.info("party %r: %d withdrawal(s) in force; %d row(s) left out (source %s)",
                     party, len(exclude.ids), excluded, self.spec)
        clipped = {k: v for k, v in tally.clipped.items() if v}
        log.info(
            "party %r: read %d rows from %s; clipped to bounds: %s; missing: %s",
            party, tally.rows, self.spec, clipped or "none",
            {k: v for k, v in tally.missing.items() if v} or "none",
        )


def misfit_problems(cols: Sequence[Column], invalid: dict[str, dict[str, int]], malformed: int) -> list[str]:
    """What misfits a read found, one phrase each, naming columns and counts (never values).

    Exact mode fails with them; DP mode only logs them, locally."""
    problems = []
    if malformed:
        problems.append(f"{malformed} rows have the wrong number of fields")
    for c in cols:
        per = invalid.get(c.name, {})
        for reason, text in _REASONS.items():
            if per.get(reason):
                problems.append(f"column {c.name!r} has {per[reason]} rows with {text}")
    return problems


class _ReadError(Exception):
    """A source could not be read; ``reason`` is safe to show (no row values)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_schema(schema: Sequence[Column]) -> list[Column]:
    cols: list[Column] = []
    seen: set[str] = set()
    for c in schema:
        if c.type not in _KINDS:
            raise SpecError(f"schema.{c.name}.type: expected one of {', '.join(_KINDS)}, got {c.type!r}")
        if c.type == "categorical" and not c.levels:
            raise SpecError(f"schema.{c.name}.levels: a categorical column needs its levels")
        if c.type != "categorical" and c.bounds is not None:
            lo, hi = c.bounds
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise SpecError(f"schema.{c.name}.bounds: expected finite [low, high] with low <= high")
        if c.name not in seen:
            seen.add(c.name)
            cols.append(c)
    return cols


class _QuoteFence(io.RawIOBase):
    """A CSV file whose quotes cannot reach past the end of their line (lenient reading).

    In a line with an odd number of double quotes every quote becomes a blank, so an
    unclosed quote is one malformed row instead of a value that swallows every row up to the
    end of the read block: in DP mode one person's row must never change how many rows the
    others count as. (Strict reading fails on such a file anyway.) Lines without quotes, most
    files, cost one comparison per byte.
    """

    _CHUNK = 1 << 22

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fh = open(path, "rb")
        self._out = b""
        self._rest = b""  # the unfinished last line of the previous chunk
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        while not self._out and not self._eof:
            chunk = self._fh.read(self._CHUNK)
            if not chunk:
                self._eof, self._out, self._rest = True, _fence_quotes(self._rest), b""
                return
            data = self._rest + chunk
            cut = data.rfind(b"\n") + 1
            self._rest, self._out = data[cut:], _fence_quotes(data[:cut])

    def readinto(self, buffer) -> int:
        self._fill()
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _fence_quotes(data: bytes) -> bytes:
    """``data`` (whole lines) with the quotes of every line holding an odd number of them blanked."""
    if b'"' not in data:
        return data
    buf = np.frombuffer(data, dtype=np.uint8).copy()
    quote = buf == 34
    newline = buf == 10
    line = np.cumsum(newline) - newline  # a newline belongs to the line it ends
    odd = np.bincount(line, weights=quote).astype(np.int64) % 2 == 1
    buf[quote & odd[line]] = 32
    return buf.tobytes()


class CsvSource(Source):
    """A comma-separated UTF-8 file with a header line, read with pyarrow's streaming reader."""

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec, path)
        self._header: list[str] | None = None
        self._block = _CSV_MIN_BLOCK

    def columns(self) -> list[str]:
        if self._header is None:
            try:
                with open(self.path, "rb") as fh:
                    first = fh.readline(16 << 20)
                    sample = fh.readlines(1 << 16)
                header = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]), [])
            except OSError:
                raise ConfigError(f"data source {self.spec!r} could not be read") from None
            except (UnicodeDecodeError, csv.Error):
                raise DataError(f"data source {self.spec!r}: its header is not UTF-8 CSV text") from None
            self._header = list(header)
            longest = max((len(x) for x in [first, *sample]), default=0)
            # a block must hold whole rows: keep plenty of room
            self._block = max(_CSV_MIN_BLOCK, 64 * longest)
        return list(self._header)

    def _open(self, cols: list[Column], numeric_as_text: bool, tally: _Tally, as_bytes: bool = False):
        def on_bad_row(row) -> str:
            tally.malformed_rows += 1
            return "skip"

        text = pa.dictionary(pa.int32(), pa.binary() if as_bytes else pa.string())
        types = {
            c.name: (text if (c.type == "categorical" or numeric_as_text or as_bytes) else pa.float64())
            for c in cols
        }
        return pacsv.open_csv(
            self.path if tally.strict else _QuoteFence(self.path),
            read_options=pacsv.ReadOptions(block_size=self._block, use_threads=True),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_bad_row),
            convert_options=pacsv.ConvertOptions(
                include_columns=[c.name for c in cols],
                column_types=types,
                null_values=_CSV_NULLS,
                strings_can_be_null=False,
                quoted_strings_can_be_null=True,
            ),
        )

    def _batches(self, cols: list[Column], tally: _Tally) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        self.columns()
        emitted = 0
        blank_rows = 0  # lenient reading: all-missing rows handed out for malformed rows
        numeric_as_text = False
        as_bytes = False

        def malformed_as_missing() -> Iterator[tuple[int, dict[str, pa.Array]]]:
            nonlocal blank_rows
            extra = tally.malformed_rows - blank_rows
            if not tally.strict and extra > 0:
                blank_rows += extra
                yield extra, {c.name: pa.nulls(extra, pa.string()) for c in cols}

        while True:
            skip = emitted  # rows already handed out by a previous pass
            tally.malformed_rows = 0  # counted anew by every pass (over the whole file)
            try:
                reader = self._open(cols, numeric_as_text, tally, as_bytes)
                for batch in reader:
                    n = batch.num_rows
                    if skip >= n:
                        skip -= n
                        continue
                    if skip:
                        batch = batch.slice(skip)
                        n -= skip
                        skip = 0
                    emitted += n
                    arrays = {c.name: batch.column(c.name) for c in cols}
                    if as_bytes:
                        arrays = {k: _utf8_or_not_text(v) for k, v in arrays.items()}
                    yield n, arrays
                    yield from malformed_as_missing()
                yield from malformed_as_missing()
                return
            except pa.ArrowInvalid as exc:
                msg = str(exc)
                if not numeric_as_text and "conversion error" in msg and any(
                    c.type != "categorical" for c in cols
                ):
                    # some numeric field is not a number: re-read numeric columns as
                    # text from the row where we stopped, counting the bad values
                    numeric_as_text = True
                    continue
                if "straddl" in msg:
                    if self._block < _CSV_MAX_BLOCK:
                        self._block = min(8 * self._block, _CSV_MAX_BLOCK)
                        continue
                    raise _ReadError("a row of its data is longer than the read block") from None
                if "UTF8" in msg or "utf8" in msg.lower():
                    if not tally.strict and not as_bytes:
                        # some field is not UTF-8 text: re-read as bytes from where we
                        # stopped; such a value is then a wrong-type value like any other
                        as_bytes = True
                        continue
                    raise _ReadError("its data is not valid UTF-8 text") from None
                raise _ReadError("its data could not be parsed as CSV") from None
            except OSError:
                raise _ReadError("its data could not be read") from None


def _utf8_or_not_text(arr: pa.Array) -> pa.Array:
    """A dictionary<binary> CSV column as dictionary<string>: each distinct value decoded,
    one that is not UTF-8 replaced by a text that matches no number, level or missing token."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    words = []
    for value in arr.dictionary.to_pylist():
        try:
            words.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            words.append(_NOT_TEXT)
    return pa.DictionaryArray.from_arrays(arr.indices, pa.array(words, pa.string()))


class ParquetSource(Source):
    """A Parquet file, read batch by batch with ``ParquetFile.iter_batches``."""

    def __init__(self, spec: str, path: Path) -> None:
        super().__init__(spec, path)
        try:
            self._names = list(pq.ParquetFile(self.path).schema_arrow.names)
        except (pa.ArrowException, OSError):
            raise ConfigError(f"data source {spec!r} is not a readable Parquet file") from None

    def columns(self) -> list[str]:
        return list(self._names)

    def _batches(self, cols: list[Column], tally: _Tally) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        try:
            pf = pq.ParquetFile(self.path)
            names = [c.name for c in cols]
            # One row group at a time: a single iter_batches over the file keeps every row
            # group it has read, so memory would grow with the file.
            # Arrow's thread pool only when it has more than one thread (co-located parties get
            # one each, see runner.party_environment): handing a single thread the work costs more
            threads = pa.cpu_count() > 1
            for group in range(pf.num_row_groups):
                for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=names,
                                             row_groups=[group], use_threads=threads):
                    yield batch.num_rows, {c.name: batch.column(c.name) for c in cols}
        except (pa.ArrowException, OSError):
            raise _ReadError("its data could not be read as Parquet") from None


def _py_column(values: tuple) -> pa.Array:
    """A column of SQLite values (None, int, float, str, bytes) as one Arrow array."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass

    def text(v):
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, bytes):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return _NOT_TEXT
        return "\x00<other>"

    return pa.array([text(v) for v in values], type=pa.string())


class SqliteSource(Source):
    """A table (or view) of a SQLite database, read with ``fetchmany``."""

    def __init__(self, spec: str, path: Path, table: str) -> None:
        super().__init__(spec, path)
        self.table = table
        try:
            with contextlib.closing(self._connect()) as con:
                rows = con.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
        except sqlite3.Error:
            raise ConfigError(f"data source {spec!r} is not a readable SQLite database") from None
        if not rows:
            raise ConfigError(f"data source {spec!r}: table {table!r} not found in the database")
        self._names = [r[1] for r in rows]

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        return con

    def columns(self) -> list[str]:
        return list(self._names)

    def _batches(self, cols: list[Column], tally: _Tally) -> Iterator[tuple[int, dict[str, pa.Array]]]:
        query = f"SELECT {', '.join(_quote(c.name) for c in cols)} FROM {_quote(self.table)}"
        try:
            con = self._connect()
        except sqlite3.Error:
            raise _ReadError("its database could not be opened") from None
        try:
            cur = con.execute(query)
            while True:
                rows = cur.fetchmany(_SQLITE_FETCH_ROWS)
                if not rows:
                    break
                columns = list(zip(*rows))
                del rows
                yield len(columns[0]), {c.name: _py_column(v) for c, v in zip(cols, columns)}
        except sqlite3.Error:
            raise _ReadError("its database table could not be read") from None
        finally:
            con.close()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def open_source(source: str, base_dir: Path, options: dict | None = None) -> Source:
    """Open a party's data source (see the module docstring for the forms).

    ``options`` are the dataset entry's other fields (``query``, ``password_file``, ``spark``,
    ``format``): PostgreSQL, DuckDB, Spark and DuckDB-read files (``.csv.gz``, globs,
    directories) are opened by :mod:`jointstats.engine.sql_sources`.

    Raises ConfigError, naming the source, for a missing file, an unknown
    extension, an unreadable file or a missing SQLite table.
    """
    if not isinstance(source, str) or not source.strip():
        raise ConfigError("data source: expected a path or a sqlite:/// URL")
    base_dir = Path(base_dir)
    from jointstats.engine.sql_sources import open_sql_source
    engine = open_sql_source(source, base_dir, options)
    if engine is not None:
        return engine
    if source.startswith("sqlite:"):
        if not source.startswith("sqlite:///"):
            raise ConfigError(
                f"data source {source!r}: expected sqlite:///relative/path.db?table=name "
                "or sqlite:////absolute/path.db?table=name"
            )
        rest = source[len("sqlite:///"):]
        raw_path, _, query = rest.partition("?")
        tables = parse_qs(query).get("table", [])
        if not raw_path:
            raise ConfigError(f"data source {source!r}: no database path")
        if len(tables) != 1 or not tables[0]:
            raise ConfigError(f"data source {source!r}: expected one ?table=name")
        path = _resolve(unquote(raw_path), base_dir)
        _check_file(source, path)
        return SqliteSource(source, path, tables[0])
    path = _resolve(source, base_dir)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ConfigError(
            f"data source {source!r}: unknown kind {suffix or '(no extension)'}; "
            "expected .csv, .csv.gz, .parquet, a glob or directory of them, sqlite:///path.db?table=name, "
            "postgresql://host/db?table=name, duckdb:///path.duckdb?table=name or spark:table"
        )
    _check_file(source, path)
    if suffix == ".csv":
        src = CsvSource(source, path)
        src.columns()
        return src
    return ParquetSource(source, path)


def _resolve(raw: str, base_dir: Path) -> Path:
    p = Path(raw).expanduser()
    return p if p.is_absolute() else base_dir / p


def _check_file(source: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"data source {source!r} not found (looked for {path})")
    if not path.is_file():
        raise ConfigError(f"data source {source!r} is not a file ({path})")
