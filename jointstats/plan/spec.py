"""Protocol spec: the analyst's YAML, parsed and validated into frozen objects.

Every error is a :class:`SpecError` whose message starts with the path of the
offending field, e.g. ``statistics.bmi_model.features[2]: unknown column 'regoin'``.
"""
from __future__ import annotations

import collections.abc
import hashlib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from jointstats.errors import SpecError

COLUMN_TYPES = ("real", "integer", "categorical")
STATISTIC_KINDS = ("count", "sum", "mean", "variance", "correlation", "crosstab",
                   "histogram", "regression")
#: Column and statistic names (matched in full: ``fullmatch``, so no trailing newline).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")

# Limits on what an analyst (or anyone who can reach a node) may send: generous for real
# use, and each refused with one line naming the field and the limit (docs/node.md, Limits).
#: Largest spec or party config, in characters.
MAX_YAML_CHARS = 512 * 1024
#: Deepest nesting of YAML mappings and sequences (a spec needs 4).
MAX_YAML_DEPTH = 32
#: Columns in a schema.
MAX_COLUMNS = 1000
#: Levels of one categorical column.
MAX_LEVELS = 10_000
#: Characters of one level.
MAX_LEVEL_CHARS = 256
#: Characters of the spec's name and dataset.
MAX_NAME_CHARS = 128
#: Statistics in a spec.
MAX_STATISTICS = 100
#: Bins of one histogram (edges - 1).
MAX_BINS = 10_000
#: Cells of one crosstab (levels of rows x levels of cols).
MAX_CROSSTAB_CELLS = 100_000
#: Crosstab cells and histogram bins over the whole spec.
MAX_CELLS = 200_000
#: Terms of one regression (intercept, numeric features, one per non-reference level).
MAX_TERMS = 100
#: Columns of one correlation.
MAX_CORRELATION_COLUMNS = 100
#: Largest magnitude of a bound, a bin edge, a ridge or a weight.
MAX_MAGNITUDE = 10 ** 15
#: Largest epsilon of a job (the noise samplers' exact arithmetic overflows far above it).
MAX_EPSILON = 1000
#: Longest error message (values in it are shortened first: no input is ever echoed whole).
MAX_ERROR_CHARS = 300


# libyaml's parser when PyYAML has it (about 10x faster: the pure-Python one was a fifth
# of a party's CPU time for a small job); the tags are resolved in Python either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlInputError(yaml.YAMLError):
    """YAML this project refuses (duplicate keys, aliases, too deep, too large, unreadable
    values); ``problem`` is one line, ``problem_mark`` where it is (or None)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def shorten(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters (the middle elided): errors never echo a large
    input. A large container is not even rendered whole."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 8:
        text = f"<{type(value).__name__} of {len(value)} items>"
    elif isinstance(value, str) and len(value) > 4 * limit:
        text = repr(value[:limit])
    else:
        try:
            text = repr(value)
        except ValueError:  # an int too long for repr
            text = f"<{type(value).__name__}>"
    if len(text) > limit:
        keep = limit - 3
        text = text[:keep - keep // 3] + "..." + text[len(text) - keep // 3:]
    return text


def did_you_mean(name: Any, choices) -> str:
    """`` (did you mean 'region'?)`` for the closest of ``choices`` to a misspelt ``name``
    (difflib), or "" when none is close.

    Bounded, since names come from outsiders: names of at most 64 characters, compared with
    at most 50 choices of similar length (difflib is quadratic in the length), those sharing
    the most pairs of adjacent characters with it first."""
    import difflib
    if not isinstance(name, str) or not name or len(name) > 64:
        return ""
    slack = max(2, len(name) // 3)
    candidates = [c for c in map(str, choices) if c and abs(len(c) - len(name)) <= slack]
    pairs = {name[i:i + 2] for i in range(len(name) - 1)}
    candidates.sort(key=lambda c: -len(pairs.intersection(c[i:i + 2] for i in range(len(c) - 1))))
    candidates = candidates[:50]
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def clip_error(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[:limit - 3] + "..."


class _SpecLoader(_SafeLoader):
    """YAML 1.2-style booleans: only true/false, so levels like ``[no, yes]`` stay strings.

    Checked as the document is composed and constructed (so libyaml's parser keeps its
    speed: no extra pass): at most MAX_YAML_DEPTH levels of nesting (libyaml's composer
    recurses in C, and 100,000 levels crash the process), no aliases (``*name``: an alias
    bomb expands a few hundred bytes into gigabytes; specs and configs have no use for
    them), no merge keys (``<<``) and no duplicate keys (PyYAML keeps the last silently)."""

    _depth = 0

    def descend_resolver(self, parent, index):  # called on entering every node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise YamlInputError(f"nested more than {MAX_YAML_DEPTH} levels deep",
                                 getattr(parent, "start_mark", None))
        # (no path resolvers are registered, so the base class has nothing to do here)

    def ascend_resolver(self):
        self._depth -= 1

    def construct_object(self, node, deep=False):
        if node in self.constructed_objects or node in self.recursive_objects:
            raise YamlInputError("aliases (*name) are not allowed", node.start_mark)
        return super().construct_object(node, deep)

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise YamlInputError(f"expected a mapping, found a {node.id}", node.start_mark)
        mapping = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlInputError("merge keys (<<) are not allowed", key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise YamlInputError("a mapping key must be a scalar", key_node.start_mark)
            if key in mapping:
                raise YamlInputError(f"duplicate key {shorten(key)}", key_node.start_mark)
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


_SpecLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first in "tTfF":
    _SpecLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")))


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _first in "-+0123456789.":
    _SpecLoader.yaml_implicit_resolvers.setdefault(_first, []).insert(
        0, ("tag:yaml.org,2002:float", _FLOAT))  # 1e6 and 1.0e6 are numbers, as in YAML 1.2


def yaml_load(text: str):
    """Load a spec or party config: only true/false as booleans; at most MAX_YAML_CHARS
    characters and MAX_YAML_DEPTH levels; no anchors, aliases, merge keys or duplicate keys.
    Anything refused or unreadable raises a :class:`yaml.YAMLError` with a one-line
    ``problem`` (never the whole input)."""
    if not isinstance(text, str):
        raise YamlInputError(f"expected text, found {type(text).__name__}")
    if len(text) > MAX_YAML_CHARS:
        raise YamlInputError(f"larger than the limit of {MAX_YAML_CHARS} characters "
                             f"({len(text)})")
    try:
        return yaml.load(text, Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        if isinstance(exc, YamlInputError):
            raise
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlInputError(clip_error(f"not valid YAML ({problem})", 200),
                             getattr(exc, "problem_mark", None)) from None
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:
        # a scalar its tag cannot read: a 5000-digit integer, a date like 2001-13-45, text
        # that is not UTF-8 (lone surrogates)
        raise YamlInputError(f"a value cannot be read ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Column:
    """Public metadata of one column: its type, bounds (numeric) or levels (categorical)."""

    name: str
    type: str  # 'real' | 'integer' | 'categorical'
    bounds: tuple[float, float] | None = None
    levels: tuple[str, ...] | None = None

    @property
    def numeric(self) -> bool:
        """True for real and integer columns."""
        return self.type != "categorical"


@dataclass(frozen=True)
class Privacy:
    """The privacy request of a job: total epsilon and delta, and how noise is made."""

    epsilon: Fraction
    delta: Fraction
    noise: str = "joint"  # 'joint' | 'distributed'

    @property
    def mechanism(self) -> str:
        """discrete_laplace for pure DP (delta 0), discrete_gaussian otherwise."""
        return "discrete_laplace" if self.delta == 0 else "discrete_gaussian"

    @property
    def budget(self) -> "PrivacyBudget":
        """The job's (epsilon, delta) as a typed :class:`~jointstats.PrivacyBudget`."""
        from jointstats.plan.accounting import PrivacyBudget
        return PrivacyBudget(self.epsilon, self.delta)


@dataclass(frozen=True)
class Statistic:
    """One requested statistic; which fields are set depends on ``kind``."""

    name: str
    kind: str
    column: str | None = None
    columns: tuple[str, ...] = ()
    rows: str | None = None
    cols: str | None = None
    min_count: int | None = None
    bins: tuple[float, ...] = ()
    target: str | None = None
    features: tuple[str, ...] = ()
    ridge: Fraction = Fraction(0)
    intercept: bool = True
    weight: Fraction = Fraction(1)

    def used_columns(self) -> tuple[str, ...]:
        """The schema columns this statistic reads (rows missing any of them are left out)."""
        if self.kind in ("count", "sum", "mean", "variance", "histogram"):
            return (self.column,) if self.column else ()
        if self.kind == "correlation":
            return self.columns
        if self.kind == "crosstab":
            return (self.rows, self.cols)
        return (self.target,) + self.features


#: Most rows per party a linked (vertical) job's ``link.rows`` may declare (the linkage moves
#: every row as secret shares: its messages and memory grow with it).
MAX_LINK_ROWS = 1 << 22
#: Join kinds of a linked job.
JOIN_KINDS = ("inner", "left")


@dataclass(frozen=True)
class Link:
    """How a linked (``partition: vertical``) job links the parties' rows.

    ``key`` is the identifier column every data holder has (never a schema column, never
    revealed); ``case`` ``fold`` (default) compares keys case-insensitively, ``exact`` keeps
    case (both trim surrounding whitespace and apply Unicode NFKC: docs/linkage.md);
    ``rows`` is the public number of rows every holder pads (or, in DP mode, cuts) its key
    list to, so that the parties' sizes stay hidden (required in DP mode); ``join`` is
    ``inner`` (records every data holder has) or ``left`` (every record of the holder
    named ``base``, with or without partners elsewhere).
    """

    key: str
    case: str = "fold"
    rows: int | None = None
    join: str = "inner"
    base: str | None = None


@dataclass(frozen=True)
class Spec:
    """A validated protocol spec. ``text`` is the YAML as submitted; ``sha256`` hashes it."""

    name: str
    dataset: str
    partition: str
    schema: tuple[Column, ...]
    privacy: Privacy | None
    statistics: tuple[Statistic, ...]
    text: str = field(repr=False, compare=False, default="")
    sha256: str = ""
    #: the purpose the job serves (``purpose:``), matched against data-use agreements
    purpose: str | None = None
    link: Link | None = None  # set exactly when partition is vertical
    #: the data-use agreement id every party must run the job under (``agreement:``, optional)
    agreement: str | None = None

    @property
    def vertical(self) -> bool:
        """True for a linked job: each party holds some columns, rows linked by ``link.key``."""
        return self.partition == "vertical"

    def column(self, name: str) -> Column:
        """The schema entry of ``name``."""
        for col in self.schema:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def exact(self) -> bool:
        """True when the spec asks for exact (non-DP) results."""
        return self.privacy is None

    def regression_terms(self, stat: Statistic) -> list[str]:
        """Names of a regression's terms: intercept, numeric features, then indicators."""
        terms = ["intercept"] if stat.intercept else []
        for name in stat.features:
            col = self.column(name)
            if col.numeric:
                terms.append(name)
            else:
                terms.extend(f"{name}[{level}]" for level in col.levels[1:])
        return terms


# ----------------------------------------------------------------------------- parsing


def _fail(path: str, message: str) -> SpecError:
    return SpecError(clip_error(f"{path}: {message}"))


def _key(name: Any) -> str:
    """A mapping key as it appears in a field path (shortened: keys are analyst input)."""
    text = name if isinstance(name, str) else shorten(name)
    return text if len(text) <= 40 else shorten(text)


def _number(value: Any, path: str) -> Fraction:
    """A finite YAML number of magnitude at most MAX_MAGNITUDE as an exact Fraction (floats
    via their decimal text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, found {type(value).__name__} {shorten(value)}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path, f"expected a finite number, found {value!r}")
        if abs(value) > MAX_MAGNITUDE:
            raise _fail(path, f"magnitude above the limit of 1e15 (found {value!r})")
        return Fraction(repr(value))
    if abs(value) > MAX_MAGNITUDE:
        raise _fail(path, f"magnitude above the limit of 1e15 (found {shorten(value)})")
    return Fraction(value)


def _string(value: Any, path: str, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"expected a non-empty string, found {shorten(value)}")
    if len(value) > limit:
        raise _fail(path, f"longer than the limit of {limit} characters ({len(value)})")
    return value


def _limit(path: str, what: str, count: int, limit: int) -> None:
    if count > limit:
        raise _fail(path, f"{count} {what}, above the limit of {limit}")


def _mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"expected a mapping, found {type(value).__name__}")
    return value


def _check_keys(entry: dict, allowed: set[str], path: str) -> None:
    for key in entry:
        if key not in allowed:
            raise _fail(f"{path}.{_key(key)}", f"unknown field{did_you_mean(key, allowed)}; expected one "
                                               f"of {', '.join(sorted(allowed))}")


def _parse_column(name: str, entry: Any, path: str) -> Column:
    entry = _mapping(entry, path)
    _check_keys(entry, {"type", "bounds", "levels"}, path)
    ctype = entry.get("type")
    if not isinstance(ctype, str) or ctype not in COLUMN_TYPES:
        raise _fail(f"{path}.type", f"expected one of {', '.join(COLUMN_TYPES)}, found "
                                    f"{shorten(ctype)}{did_you_mean(ctype, COLUMN_TYPES)}")
    if ctype == "categorical":
        levels = entry.get("levels")
        if "bounds" in entry:
            raise _fail(f"{path}.bounds", "a categorical column has levels, not bounds")
        if not isinstance(levels, list) or not levels:
            raise _fail(f"{path}.levels", "expected a non-empty list of levels")
        _limit(f"{path}.levels", "levels", len(levels), MAX_LEVELS)
        texts: dict[str, None] = {}  # a dict, not a list: 10,000 levels are checked in linear time
        for i, level in enumerate(levels):
            if isinstance(level, (dict, list, set, bytes)) or level is None:
                raise _fail(f"{path}.levels[{i}]", f"expected a scalar level, found {shorten(level)}")
            if isinstance(level, int) and not isinstance(level, bool) and abs(level) > MAX_MAGNITUDE:
                raise _fail(f"{path}.levels[{i}]", f"longer than the limit of {MAX_LEVEL_CHARS} characters")
            text = str(level).lower() if isinstance(level, bool) else str(level)
            if len(text) > MAX_LEVEL_CHARS:
                raise _fail(f"{path}.levels[{i}]", f"longer than the limit of {MAX_LEVEL_CHARS} "
                                                   f"characters ({len(text)})")
            if text in texts:
                raise _fail(f"{path}.levels[{i}]", f"duplicate level {shorten(text)}")
            texts[text] = None
        return Column(name, ctype, levels=tuple(texts))
    if "levels" in entry:
        raise _fail(f"{path}.levels", f"a {ctype} column has bounds, not levels")
    bounds = entry.get("bounds")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise _fail(f"{path}.bounds", "expected [lower, upper]")
    lo = _number(bounds[0], f"{path}.bounds[0]")
    hi = _number(bounds[1], f"{path}.bounds[1]")
    if not lo < hi:
        raise _fail(f"{path}.bounds", f"expected lower < upper, found [{bounds[0]!r}, {bounds[1]!r}]")
    if ctype == "integer" and (lo.denominator != 1 or hi.denominator != 1):
        raise _fail(f"{path}.bounds", "an integer column needs integer bounds")
    return Column(name, ctype, bounds=(float(lo), float(hi)))


_KIND_FIELDS = {
    "count": {"column"},
    "sum": {"column"},
    "mean": {"column"},
    "variance": {"column"},
    "correlation": {"columns"},
    "crosstab": {"rows", "cols", "min_count"},
    "histogram": {"column", "bins"},
    "regression": {"target", "features", "ridge", "intercept"},
}


def _column_ref(schema: dict[str, Column], value: Any, path: str, want: str | None) -> str:
    name = _string(value, path)
    if name not in schema:
        raise _fail(path, f"unknown column {shorten(name)}{did_you_mean(name, schema)}")
    col = schema[name]
    if want == "numeric" and not col.numeric:
        raise _fail(path, f"column {name!r} is categorical; expected a real or integer column")
    if want == "categorical" and col.numeric:
        raise _fail(path, f"column {name!r} is {col.type}; expected a categorical column")
    return name


def _parse_statistic(name: Any, entry: Any, schema: dict[str, Column], path: str) -> Statistic:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail(path, "statistic names must start with a letter and use letters, digits, "
                          "_ . - (at most 128 characters)")
    entry = _mapping(entry, path)
    kind = entry.get("kind")
    if not isinstance(kind, str) or kind not in STATISTIC_KINDS:
        raise _fail(f"{path}.kind", f"expected one of {', '.join(STATISTIC_KINDS)}, found "
                                    f"{shorten(kind)}{did_you_mean(kind, STATISTIC_KINDS)}")
    _check_keys(entry, _KIND_FIELDS[kind] | {"kind", "weight"}, path)
    weight = Fraction(1)
    if "weight" in entry:
        weight = _number(entry["weight"], f"{path}.weight")
        if weight <= 0:
            raise _fail(f"{path}.weight", f"expected a positive number, found {entry['weight']!r}")
    args: dict[str, Any] = {"name": str(name), "kind": kind, "weight": weight}

    def need(key: str) -> Any:
        if key not in entry:
            raise _fail(f"{path}.{key}", f"required for kind {kind}")
        return entry[key]

    if kind == "count":
        if "column" in entry:
            args["column"] = _column_ref(schema, entry["column"], f"{path}.column", None)
    elif kind in ("sum", "mean", "variance", "histogram"):
        args["column"] = _column_ref(schema, need("column"), f"{path}.column", "numeric")
        if kind == "histogram":
            bins = need("bins")
            if not isinstance(bins, list) or len(bins) < 2:
                raise _fail(f"{path}.bins", "expected a list of at least two bin edges")
            _limit(f"{path}.bins", "bins", len(bins) - 1, MAX_BINS)
            edges = [_number(b, f"{path}.bins[{i}]") for i, b in enumerate(bins)]
            for i in range(1, len(edges)):
                if not edges[i - 1] < edges[i]:
                    raise _fail(f"{path}.bins[{i}]", "bin edges must be strictly increasing")
            args["bins"] = tuple(float(e) for e in edges)
    elif kind == "correlation":
        cols = need("columns")
        if not isinstance(cols, list) or len(cols) < 2:
            raise _fail(f"{path}.columns", "expected a list of at least two numeric columns")
        _limit(f"{path}.columns", "columns", len(cols), MAX_CORRELATION_COLUMNS)
        names = [_column_ref(schema, c, f"{path}.columns[{i}]", "numeric") for i, c in enumerate(cols)]
        for i, c in enumerate(names):
            if c in names[:i]:
                raise _fail(f"{path}.columns[{i}]", f"duplicate column {c!r}")
        args["columns"] = tuple(names)
    elif kind == "crosstab":
        args["rows"] = _column_ref(schema, need("rows"), f"{path}.rows", "categorical")
        args["cols"] = _column_ref(schema, need("cols"), f"{path}.cols", "categorical")
        if args["rows"] == args["cols"]:
            raise _fail(f"{path}.cols", "rows and cols must be different columns")
        cells = len(schema[args["rows"]].levels) * len(schema[args["cols"]].levels)
        _limit(path, "cells", cells, MAX_CROSSTAB_CELLS)
        if "min_count" in entry:
            mc = entry["min_count"]
            if isinstance(mc, bool) or not isinstance(mc, int) or not 0 <= mc <= MAX_MAGNITUDE:
                raise _fail(f"{path}.min_count", f"expected an integer from 0 to 1e15, found {shorten(mc)}")
            args["min_count"] = mc
    elif kind == "regression":
        args["target"] = _column_ref(schema, need("target"), f"{path}.target", "numeric")
        feats = need("features")
        if not isinstance(feats, list) or not feats:
            raise _fail(f"{path}.features", "expected a non-empty list of columns")
        _limit(f"{path}.features", "features", len(feats), MAX_TERMS)
        names = [_column_ref(schema, f, f"{path}.features[{i}]", None) for i, f in enumerate(feats)]
        for i, f in enumerate(names):
            if f in names[:i]:
                raise _fail(f"{path}.features[{i}]", f"duplicate feature {f!r}")
            if f == args["target"]:
                raise _fail(f"{path}.features[{i}]", f"the target {f!r} cannot also be a feature")
        args["features"] = tuple(names)
        if "ridge" in entry:
            ridge = _number(entry["ridge"], f"{path}.ridge")
            if ridge < 0:
                raise _fail(f"{path}.ridge", f"expected a number >= 0, found {entry['ridge']!r}")
            args["ridge"] = ridge
        if "intercept" in entry:
            if not isinstance(entry["intercept"], bool):
                raise _fail(f"{path}.intercept", f"expected true or false, found {shorten(entry['intercept'])}")
            args["intercept"] = entry["intercept"]
        if not args.get("intercept", True) and not names:
            raise _fail(f"{path}.features", "a regression needs at least one term")
        terms = int(args.get("intercept", True)) + sum(
            1 if schema[f].numeric else len(schema[f].levels) - 1 for f in names)
        _limit(f"{path}.features", "terms", terms, MAX_TERMS)
    return Statistic(**args)


def _parse_privacy(entry: Any) -> Privacy:
    entry = _mapping(entry, "privacy")
    _check_keys(entry, {"epsilon", "delta", "noise"}, "privacy")
    if "epsilon" not in entry:
        raise _fail("privacy.epsilon", "required (omit the whole privacy block for exact mode)")
    eps = _number(entry["epsilon"], "privacy.epsilon")
    if eps <= 0:
        raise _fail("privacy.epsilon", f"expected a positive number, found {entry['epsilon']!r}")
    if eps > MAX_EPSILON:
        raise _fail("privacy.epsilon", f"{entry['epsilon']!r} is above the limit of {MAX_EPSILON}")
    delta = _number(entry.get("delta", 0), "privacy.delta")
    if not 0 <= delta < 1:
        raise _fail("privacy.delta", f"expected 0 <= delta < 1, found {entry.get('delta')!r}")
    noise = entry.get("noise", "joint")
    if noise not in ("joint", "distributed"):
        raise _fail("privacy.noise", f"expected joint or distributed, found {shorten(noise)}")
    return Privacy(eps, delta, noise)


def parse_spec(text: str | collections.abc.Mapping) -> Spec:
    """Parse and validate spec YAML text (within the limits above: every refusal is one line
    naming the field, or the line of the YAML, and the limit).

    A mapping (the spec as Python data, e.g. in a notebook) is written as YAML first, and
    that text is what the spec's ``sha256`` hashes and the parties receive."""
    if isinstance(text, collections.abc.Mapping):
        text = _dump_spec(text)
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "spec"
        raise SpecError(clip_error(f"{where}: {getattr(exc, 'problem', None) or exc}")) from None
    if not isinstance(data, dict):
        raise SpecError("spec: expected a YAML mapping at the top level")
    _check_keys(data, {"name", "dataset", "partition", "link", "key", "schema", "privacy", "statistics",
                       "purpose", "agreement"}, "spec")
    name = _string(data.get("name", "unnamed"), "name")
    dataset = _string(data.get("dataset"), "dataset") if "dataset" in data else None
    if dataset is None:
        raise _fail("dataset", "required")
    partition = data.get("partition", "horizontal")
    if partition not in ("horizontal", "vertical"):
        raise _fail("partition", f"expected horizontal or vertical, found {shorten(partition)}")
    if "key" in data:
        raise _fail("key", "unknown field; a linked job names its key as link: {key: COLUMN}")
    if partition == "horizontal" and "link" in data:
        raise _fail("link", "only used with partition: vertical")
    if partition == "vertical" and "link" not in data:
        raise _fail("link", "required with partition: vertical, e.g. link: {key: patient_id}")
    if "schema" not in data:
        raise _fail("schema", "required")
    schema_in = _mapping(data["schema"], "schema")
    if not schema_in:
        raise _fail("schema", "expected at least one column")
    _limit("schema", "columns", len(schema_in), MAX_COLUMNS)
    schema: dict[str, Column] = {}
    for cname, entry in schema_in.items():
        if not isinstance(cname, str) or not _NAME.fullmatch(cname):
            raise _fail(f"schema.{_key(cname)}", "column names must start with a letter and use "
                                                 "letters, digits, _ . - (at most 128 characters)")
        schema[cname] = _parse_column(cname, entry, f"schema.{cname}")
    privacy = _parse_privacy(data["privacy"]) if data.get("privacy") is not None else None
    link = _parse_link(data["link"], schema, privacy) if partition == "vertical" else None
    if "statistics" not in data:
        raise _fail("statistics", "required")
    stats_in = _mapping(data["statistics"], "statistics")
    if not stats_in:
        raise _fail("statistics", "expected at least one statistic")
    _limit("statistics", "statistics", len(stats_in), MAX_STATISTICS)
    stats = tuple(_parse_statistic(k, v, schema, f"statistics.{_key(k)}") for k, v in stats_in.items())
    cells = sum(len(schema[s.rows].levels) * len(schema[s.cols].levels) for s in stats
                if s.kind == "crosstab") + sum(len(s.bins) - 1 for s in stats if s.kind == "histogram")
    _limit("statistics", "crosstab cells and histogram bins", cells, MAX_CELLS)
    digest = hashlib.sha256(text.encode()).hexdigest()
    purpose = _string(data["purpose"], "purpose") if data.get("purpose") is not None else None
    agreement = _string(data["agreement"], "agreement") if data.get("agreement") is not None else None
    return Spec(name, dataset, partition, tuple(schema.values()), privacy, stats, text, digest,
                purpose=purpose, link=link, agreement=agreement)


def _dump_spec(data: collections.abc.Mapping) -> str:
    """A spec given as Python data, as YAML text (plain YAML types only)."""
    try:
        return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)
    except yaml.YAMLError as exc:
        raise SpecError(clip_error(f"spec: a value cannot be written as YAML ({exc})")) from None


def _parse_link(entry: Any, schema: dict[str, Column], privacy: Privacy | None) -> Link:
    """``link: {key, case, rows, join, base}`` of a vertical spec (see :class:`Link`)."""
    entry = _mapping(entry, "link")
    _check_keys(entry, {"key", "case", "rows", "join", "base"}, "link")
    if "key" not in entry:
        raise _fail("link.key", "required: the identifier column every data holder has")
    key = _string(entry["key"], "link.key")
    if not _NAME.fullmatch(key):
        raise _fail("link.key", "column names must start with a letter and use letters, digits, "
                                "_ . - (at most 128 characters)")
    if key in schema:
        raise _fail("link.key", f"{key!r} is also a schema column; the key is never a statistic's "
                                "column (it is never revealed)")
    case = entry.get("case", "fold")
    if case not in ("fold", "exact"):
        raise _fail("link.case", f"expected fold or exact, found {shorten(case)}")
    rows = entry.get("rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)
                             or not 1 <= rows <= MAX_LINK_ROWS):
        raise _fail("link.rows", f"expected an integer from 1 to {MAX_LINK_ROWS}, found {shorten(rows)}")
    if rows is None and privacy is not None:
        raise _fail("link.rows", "required with a privacy block: every holder pads its keys to "
                                 "this public number, so that its row count stays hidden")
    join = entry.get("join", "inner")
    if join not in JOIN_KINDS:
        raise _fail("link.join", f"expected inner or left, found {shorten(join)}")
    base = entry.get("base")
    if join == "left":
        base = _string(base, "link.base") if base is not None else None
        if base is None:
            raise _fail("link.base", "required with join: left (the party whose records are all kept)")
    elif base is not None:
        raise _fail("link.base", "only used with join: left")
    return Link(key, case, rows, join, base)


def load_spec(source: str | Path) -> Spec:
    """Load a spec from a YAML file path (or YAML text containing a newline)."""
    if isinstance(source, str) and "\n" in source:
        return parse_spec(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"spec: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec: {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_spec(text)
