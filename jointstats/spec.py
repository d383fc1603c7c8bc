"""Protocol spec: the analyst's YAML, parsed and validated into frozen objects.

Every error is a :class:`SpecError` whose message starts with the path of the
offending field, e.g. ``statistics.bmi_model.features[2]: unknown column 'regoin'``.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

COLUMN_TYPES = ("real", "integer", "categorical")
STATISTIC_KINDS = ("count", "sum", "mean", "variance", "correlation", "crosstab",
                   "histogram", "regression")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


# libyaml's parser when PyYAML has it (about 10x faster: the pure-Python one was a fifth
# of a party's CPU time for a small job); the tags are resolved in Python either way.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SpecLoader(_SafeLoader):
    """YAML 1.2-style booleans: only true/false, so levels like ``[no, yes]`` stay strings."""


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
    """Load YAML with only true/false as booleans (used for specs and party configs)."""
    return yaml.load(text, Loader=_SpecLoader)


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
    return SpecError(f"{path}: {message}")


def _number(value: Any, path: str) -> Fraction:
    """A finite YAML number as an exact Fraction (floats via their decimal text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"expected a number, found {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(path, f"expected a finite number, found {value!r}")
        return Fraction(repr(value))
    return Fraction(value)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"expected a non-empty string, found {value!r}")
    return value


def _mapping(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, f"expected a mapping, found {type(value).__name__}")
    return value


def _check_keys(entry: dict, allowed: set[str], path: str) -> None:
    for key in entry:
        if key not in allowed:
            raise _fail(f"{path}.{key}", f"unknown field; expected one of {', '.join(sorted(allowed))}")


def _parse_column(name: str, entry: Any, path: str) -> Column:
    entry = _mapping(entry, path)
    _check_keys(entry, {"type", "bounds", "levels"}, path)
    ctype = entry.get("type")
    if ctype not in COLUMN_TYPES:
        raise _fail(f"{path}.type", f"expected one of {', '.join(COLUMN_TYPES)}, found {ctype!r}")
    if ctype == "categorical":
        levels = entry.get("levels")
        if "bounds" in entry:
            raise _fail(f"{path}.bounds", "a categorical column has levels, not bounds")
        if not isinstance(levels, list) or not levels:
            raise _fail(f"{path}.levels", "expected a non-empty list of levels")
        texts = []
        for i, level in enumerate(levels):
            if isinstance(level, (dict, list)) or level is None:
                raise _fail(f"{path}.levels[{i}]", f"expected a scalar level, found {level!r}")
            text = str(level).lower() if isinstance(level, bool) else str(level)
            if text in texts:
                raise _fail(f"{path}.levels[{i}]", f"duplicate level {text!r}")
            texts.append(text)
        return Column(name, ctype, levels=tuple(texts))
    if "levels" in entry:
        raise _fail(f"{path}.levels", f"a {ctype} column has bounds, not levels")
    bounds = entry.get("bounds")
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise _fail(f"{path}.bounds", "expected [lower, upper]")
    lo = _number(bounds[0], f"{path}.bounds[0]")
    hi = _number(bounds[1], f"{path}.bounds[1]")
    if not lo < hi:
        raise _fail(f"{path}.bounds", f"expected lower < upper, found [{bounds[0]}, {bounds[1]}]")
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
        raise _fail(path, f"unknown column {name!r}")
    col = schema[name]
    if want == "numeric" and not col.numeric:
        raise _fail(path, f"column {name!r} is categorical; expected a real or integer column")
    if want == "categorical" and col.numeric:
        raise _fail(path, f"column {name!r} is {col.type}; expected a categorical column")
    return name


def _parse_statistic(name: str, entry: Any, schema: dict[str, Column], path: str) -> Statistic:
    if not _NAME.match(str(name)):
        raise _fail(path, "statistic names must start with a letter and use letters, digits, _ . -")
    entry = _mapping(entry, path)
    kind = entry.get("kind")
    if kind not in STATISTIC_KINDS:
        raise _fail(f"{path}.kind", f"expected one of {', '.join(STATISTIC_KINDS)}, found {kind!r}")
    _check_keys(entry, _KIND_FIELDS[kind] | {"kind", "weight"}, path)
    weight = Fraction(1)
    if "weight" in entry:
        weight = _number(entry["weight"], f"{path}.weight")
        if weight <= 0:
            raise _fail(f"{path}.weight", f"expected a positive number, found {entry['weight']}")
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
            edges = [_number(b, f"{path}.bins[{i}]") for i, b in enumerate(bins)]
            for i in range(1, len(edges)):
                if not edges[i - 1] < edges[i]:
                    raise _fail(f"{path}.bins[{i}]", "bin edges must be strictly increasing")
            args["bins"] = tuple(float(e) for e in edges)
    elif kind == "correlation":
        cols = need("columns")
        if not isinstance(cols, list) or len(cols) < 2:
            raise _fail(f"{path}.columns", "expected a list of at least two numeric columns")
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
        if "min_count" in entry:
            mc = entry["min_count"]
            if isinstance(mc, bool) or not isinstance(mc, int) or mc < 0:
                raise _fail(f"{path}.min_count", f"expected a non-negative integer, found {mc!r}")
            args["min_count"] = mc
    elif kind == "regression":
        args["target"] = _column_ref(schema, need("target"), f"{path}.target", "numeric")
        feats = need("features")
        if not isinstance(feats, list) or not feats:
            raise _fail(f"{path}.features", "expected a non-empty list of columns")
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
                raise _fail(f"{path}.ridge", f"expected a number >= 0, found {entry['ridge']}")
            args["ridge"] = ridge
        if "intercept" in entry:
            if not isinstance(entry["intercept"], bool):
                raise _fail(f"{path}.intercept", f"expected true or false, found {entry['intercept']!r}")
            args["intercept"] = entry["intercept"]
        if not args.get("intercept", True) and not names:
            raise _fail(f"{path}.features", "a regression needs at least one term")
    return Statistic(**args)


def _parse_privacy(entry: Any) -> Privacy:
    entry = _mapping(entry, "privacy")
    _check_keys(entry, {"epsilon", "delta", "noise"}, "privacy")
    if "epsilon" not in entry:
        raise _fail("privacy.epsilon", "required (omit the whole privacy block for exact mode)")
    eps = _number(entry["epsilon"], "privacy.epsilon")
    if eps <= 0:
        raise _fail("privacy.epsilon", f"expected a positive number, found {entry['epsilon']}")
    delta = _number(entry.get("delta", 0), "privacy.delta")
    if not 0 <= delta < 1:
        raise _fail("privacy.delta", f"expected 0 <= delta < 1, found {entry.get('delta')}")
    noise = entry.get("noise", "joint")
    if noise not in ("joint", "distributed"):
        raise _fail("privacy.noise", f"expected joint or distributed, found {noise!r}")
    return Privacy(eps, delta, noise)


def parse_spec(text: str) -> Spec:
    """Parse and validate spec YAML text."""
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "spec"
        raise SpecError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise SpecError("spec: expected a YAML mapping at the top level")
    _check_keys(data, {"name", "dataset", "partition", "key", "schema", "privacy", "statistics"}, "spec")
    name = _string(data.get("name", "unnamed"), "name")
    dataset = _string(data.get("dataset"), "dataset") if "dataset" in data else None
    if dataset is None:
        raise _fail("dataset", "required")
    partition = data.get("partition", "horizontal")
    if partition not in ("horizontal", "vertical"):
        raise _fail("partition", f"expected horizontal or vertical, found {partition!r}")
    if partition == "vertical":
        raise _fail("partition", "vertical partitioning is not supported by this version; use horizontal")
    if "key" in data:
        raise _fail("key", "only used with partition: vertical")
    if "schema" not in data:
        raise _fail("schema", "required")
    schema_in = _mapping(data["schema"], "schema")
    if not schema_in:
        raise _fail("schema", "expected at least one column")
    schema: dict[str, Column] = {}
    for cname, entry in schema_in.items():
        if not isinstance(cname, str) or not _NAME.match(cname):
            raise _fail(f"schema.{cname}", "column names must start with a letter and use letters, digits, _ . -")
        schema[cname] = _parse_column(cname, entry, f"schema.{cname}")
    privacy = _parse_privacy(data["privacy"]) if data.get("privacy") is not None else None
    if "statistics" not in data:
        raise _fail("statistics", "required")
    stats_in = _mapping(data["statistics"], "statistics")
    if not stats_in:
        raise _fail("statistics", "expected at least one statistic")
    stats = tuple(_parse_statistic(str(k), v, schema, f"statistics.{k}") for k, v in stats_in.items())
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Spec(name, dataset, partition, tuple(schema.values()), privacy, stats, text, digest)


def load_spec(source: str | Path) -> Spec:
    """Load a spec from a YAML file path (or YAML text containing a newline)."""
    if isinstance(source, str) and "\n" in source:
        return parse_spec(source)
    path = Path(source)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"spec: cannot read {path}: {exc.strerror}") from None
    return parse_spec(text)
