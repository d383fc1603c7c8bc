"""The one documented schema of the protocol spec and of the party config (pydantic models).

These models are the reference: they generate the JSON Schema files shipped in the
package (``jointstats/schema/spec.schema.json``, ``config.schema.json``, for editors and
``jointstats schema spec|config``) and the reference pages ``docs/spec.md`` and
``docs/config.md`` (``python -m jointstats.consortium.schema`` writes all four; tests fail when a
checked-in copy is stale).

Validation itself stays with the hand-written parsers (``jointstats.plan.spec.parse_spec``,
``jointstats.consortium.config.parse_party_config``): their one-line errors name the field path and
the limits, and they check what a schema cannot say (columns a statistic names exist and
have the right type, sizes over the whole spec, addresses that collide). Tests keep the two
from drifting: every field and type here is one the parsers accept and every field the
parsers accept is here, every example spec in ``protocols/`` and config in ``parties/``
validates against the JSON Schema, and specs the parsers refuse for a type or a value the
schema covers are refused by the schema too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from jointstats.plan import spec as _spec

__all__ = ["SpecModel", "PartyConfigModel", "json_schema", "reference_markdown", "SCHEMA_DIR",
           "write_all"]

#: Where the generated JSON Schema files ship (inside the package).
SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schema"
#: The repository's docs folder (the generated reference pages).
DOCS_DIR = Path(__file__).resolve().parents[2] / "docs"

Name = Annotated[str, StringConstraints(pattern="^" + _spec._NAME.pattern + "$")]
Number = Annotated[float, Field(ge=-_spec.MAX_MAGNITUDE, le=_spec.MAX_MAGNITUDE)]
Weight = Annotated[float, Field(gt=0, le=_spec.MAX_MAGNITUDE,
                                description="> 0 (default 1): this statistic's share of the "
                                            "job's budget, relative to the others' weights")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- spec


class Column(_Model):
    """Public metadata of one column: a type and, for numbers, bounds; for categories, levels."""

    model_config = ConfigDict(extra="forbid", title="Column", json_schema_extra={"allOf": [
        {"if": {"properties": {"type": {"const": "categorical"}}},
         "then": {"required": ["levels"], "not": {"required": ["bounds"]}},
         "else": {"required": ["bounds"], "not": {"required": ["levels"]}}}]})

    type: Literal["real", "integer", "categorical"] = Field(
        description="`real`, `integer` or `categorical`")
    bounds: list[Number] | None = Field(
        None, min_length=2, max_length=2,
        description="`[low, high]` with low < high (integers for `integer`), required for "
                    "numeric columns: values outside are clipped by their owner; DP "
                    "sensitivities come from them, so tight bounds mean less noise")
    levels: list[Union[str, int, float, bool]] | None = Field(
        None, min_length=1, max_length=_spec.MAX_LEVELS,
        description="the categories of a `categorical` column (required there), as text: quote "
                    "`\"no\"`/`\"yes\"` (YAML 1.1 reads bare no/yes as booleans); at most "
                    f"{_spec.MAX_LEVEL_CHARS} characters each, no duplicates")

    @model_validator(mode="after")
    def _bounds_or_levels(self) -> "Column":
        """Numeric columns have bounds and no levels; categorical ones levels and no bounds
        (the JSON Schema says the same with if/then/else)."""
        want, other = ("levels", "bounds") if self.type == "categorical" else ("bounds", "levels")
        if getattr(self, want) is None or getattr(self, other) is not None:
            raise ValueError(f"a {self.type} column has {want}, not {other}")
        return self


class Privacy(_Model):
    """The job's differential privacy; omit the whole block for exact mode."""

    model_config = ConfigDict(extra="forbid", title="Privacy")

    epsilon: float = Field(gt=0, le=_spec.MAX_EPSILON,
                           description="> 0, the job's total, split over the statistics by `weight`")
    delta: float = Field(0, ge=0, lt=1,
                         description="0 <= delta < 1: 0 is pure DP (discrete Laplace), > 0 zCDP "
                                     "(discrete Gaussian); must cover the samplers' allowance")
    noise: Literal["joint", "distributed"] = Field(
        "joint", description="`joint` (the default and the only one supported): noise sampled "
                             "inside the MPC, known to nobody")


def _stat(kind: str, doc: str, **fields: Any) -> type[_Model]:
    """A statistic model: ``kind`` (the discriminator), ``weight`` and the kind's fields."""
    annotations = {"kind": Literal[kind], "weight": Weight}
    namespace: dict[str, Any] = {"__doc__": doc, "__annotations__": annotations,
                                 "model_config": ConfigDict(extra="forbid", title=f"Statistic of kind {kind}"),
                                 "kind": Field(description=f"`{kind}`"), "weight": 1.0}
    for name, (typ, default) in fields.items():
        annotations[name] = typ
        namespace[name] = default
    return type(f"{kind.capitalize()}Statistic", (_Model,), namespace)


_col = "a column of the schema"
CountStatistic = _stat("count", "Number of rows (where `column` is present, if given).",
                       column=(Name | None, Field(None, description=f"optional, {_col}: count the rows where it is present")))
SumStatistic = _stat("sum", "Sum of a numeric column.",
                     column=(Name, Field(description="a numeric column")))
MeanStatistic = _stat("mean", "Mean of a numeric column.",
                      column=(Name, Field(description="a numeric column")))
VarianceStatistic = _stat("variance", "Sample variance (n - 1) of a numeric column.",
                          column=(Name, Field(description="a numeric column")))
CorrelationStatistic = _stat(
    "correlation", "Pearson correlations over the rows complete in every column.",
    columns=(list[Name], Field(min_length=2, max_length=_spec.MAX_CORRELATION_COLUMNS,
                               description="numeric columns, at least 2, no duplicates")))
CrosstabStatistic = _stat(
    "crosstab", "Counts of every pair of levels of two categorical columns.",
    rows=(Name, Field(description="a categorical column")),
    cols=(Name, Field(description="another categorical column")),
    min_count=(int | None, Field(None, ge=0, le=_spec.MAX_MAGNITUDE,
                                 description="cells below it are suppressed (`null`); never below "
                                             "any party's `policy.min_count`")))
HistogramStatistic = _stat(
    "histogram", "Counts of a numeric column in bins `[a, b)`, the last one closed.",
    column=(Name, Field(description="a numeric column")),
    bins=(list[Number], Field(min_length=2, max_length=_spec.MAX_BINS + 1,
                              description="strictly increasing bin edges")))
RegressionStatistic = _stat(
    "regression", "OLS or ridge regression of a numeric target on features.",
    target=(Name, Field(description="a numeric column")),
    features=(list[Name], Field(min_length=1, max_length=_spec.MAX_TERMS,
                                description="numeric or categorical columns (categorical ones enter "
                                            "as indicators, the first level the reference, named "
                                            "`column[level]`), not the target, no duplicates")),
    ridge=(float, Field(0.0, ge=0, le=_spec.MAX_MAGNITUDE, description=">= 0 (default 0): ridge penalty")),
    intercept=(bool, Field(True, description="default true")))

STATISTIC_MODELS = (CountStatistic, SumStatistic, MeanStatistic, VarianceStatistic,
                    CorrelationStatistic, CrosstabStatistic, HistogramStatistic, RegressionStatistic)
Statistic = Annotated[Union[STATISTIC_MODELS], Field(discriminator="kind")]  # type: ignore[valid-type]


class SpecModel(_Model):
    """A protocol spec: the analyst's YAML (docs/spec.md)."""

    model_config = ConfigDict(extra="forbid", title="jointstats protocol spec")

    name: str = Field("unnamed", min_length=1, max_length=_spec.MAX_NAME_CHARS,
                      description="free text, shown in results and the audit log")
    dataset: str = Field(min_length=1, max_length=_spec.MAX_NAME_CHARS,
                         description="the logical dataset every party maps to a source "
                                     "in its config")
    partition: Literal["horizontal", "vertical"] = Field(
        "horizontal", description="`horizontal`: every party holds whole rows")
    key: str | None = Field(None, description="only with `partition: vertical`")
    schema_: dict[Name, Column] = Field(
        alias="schema", min_length=1, max_length=_spec.MAX_COLUMNS,
        description="public metadata of every column (names: letters, digits, "
                    "`_ . -`, starting with a letter or `_`)")
    privacy: Privacy | None = Field(None, description="omit for exact mode (every party's policy "
                                                      "must allow it)")
    statistics: dict[Name, Statistic] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=_spec.MAX_STATISTICS,
        description="the statistics to release, by name")


# ----------------------------------------------------------------------------- party config

Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class Peer(_Model):
    """One party of the MPC; its index is its position in the list."""

    model_config = ConfigDict(extra="forbid", title="Peer")

    name: Text = Field(description="the party's name (1-128 printable characters)")
    host: Text = Field(description="host name or IP address of its MPC port")
    port: int = Field(ge=1, le=65535, description="its MPC TCP port; each party its own host:port")
    role: Literal["data", "compute"] = Field(
        "data", description="`data` (holds data) or `compute` (holds none, only computes)")


class Tls(_Model):
    """This party's certificate and key and the consortium CA (paths relative to the config)."""

    model_config = ConfigDict(extra="forbid", title="Tls")

    cert: str = Field(description="this party's certificate (`jointstats keys party`)")
    key: str = Field(description="its private key")
    ca: str = Field(description="the consortium CA certificate")


class Mpc(_Model):
    """The consortium: the same list, in the same order, on every party."""

    model_config = ConfigDict(extra="forbid", title="Mpc")

    parties: list[Peer] = Field(min_length=2, description="every party, at least 2, at least one "
                                                         "holding data")
    tls: Tls | None = Field(None, description="required unless every party is on loopback")


class Api(_Model):
    """The node's analyst API (`jointstats node serve`)."""

    model_config = ConfigDict(extra="forbid", title="Api")

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8700, ge=0, le=65535, description="TCP port")


class Spark(_Model):
    """How a `spark:` source reaches Spark."""

    model_config = ConfigDict(extra="forbid", title="Spark")

    master: str | None = Field(None, description='`local[4]`, `spark://host:7077`, `yarn`, ...')
    conf: dict[str, Union[str, int, float, bool]] | None = Field(
        None, description="Spark settings, e.g. `spark.executor.memory: 8g`")


class Dataset(_Model):
    """Where one dataset's rows live (docs/reference.md, Data sources)."""

    model_config = ConfigDict(extra="forbid", title="Dataset")

    source: str = Field(description="a `.csv` or `.parquet` file, `sqlite:///path.db?table=name`, "
                                    "`postgresql://...`, `duckdb:///...`, a glob, a directory, "
                                    "`spark:...`")
    query: str | None = Field(None, description="SQL the engine runs instead of reading a table")
    password_file: str | None = Field(None, description="a file holding the PostgreSQL password")
    format: str | None = Field(None, description="`parquet` or `csv` for a directory or glob")
    spark: Spark | None = Field(None, description="Spark settings of a `spark:` source")


class Budget(_Model):
    """A lifetime budget per dataset, never exceeded."""

    model_config = ConfigDict(extra="forbid", title="Budget")

    epsilon: float = Field(0, ge=0, description="lifetime epsilon per dataset")
    delta: float = Field(0, ge=0, description="lifetime delta per dataset (0: pure DP jobs only)")


class Policy(_Model):
    """What this party allows; enforced by its own node."""

    model_config = ConfigDict(extra="forbid", title="Policy")

    budget: Budget | None = Field(None, description="lifetime budget (a compute-only party may "
                                                    "leave it out)")
    max_epsilon_per_job: float | None = Field(None, gt=0, description="cap on one job's epsilon")
    min_count: int = Field(0, ge=0, description="floor for crosstab `min_count`")
    allow_exact: bool = Field(False, description="exact results need every party's consent")
    allow_two_party: bool = Field(False, description="jobs with only 2 parties (no secrecy "
                                                     "between them)")
    analysts: dict[str, str] | None = Field(None, description="who may submit: analyst name to "
                                                              "Ed25519 public key file")


class PartyConfigModel(_Model):
    """A party's configuration: the operator's YAML (docs/config.md)."""

    model_config = ConfigDict(extra="forbid", title="jointstats party config")

    party: Text = Field(description="this party's name, as in `mpc.parties`")
    mpc: Mpc = Field(description="the consortium")
    api: Api | None = Field(None, description="the node's analyst API")
    datasets: dict[str, Dataset] | None = Field(None, description="dataset name to its source "
                                                                  "(none for a compute-only party)")
    policy: Policy | None = Field(None, description="this party's policy")
    state: str | None = Field(None, description="ledger, jobs and audit log (SQLite) [state/PARTY.sqlite]")


# ----------------------------------------------------------------------------- outputs

MODELS = {"spec": SpecModel, "config": PartyConfigModel}


def json_schema(which: str) -> dict:
    """The JSON Schema (draft 2020-12) of ``spec`` or ``config``."""
    if which not in MODELS:
        raise ValueError(f"expected spec or config, found {which!r}")
    schema = MODELS[which].model_json_schema(by_alias=True, mode="validation")
    _close_named_mappings(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _close_named_mappings(node: Any) -> None:
    """Mappings keyed by names (``patternProperties``) accept no other keys, as the parsers."""
    if isinstance(node, dict):
        if "patternProperties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_named_mappings(value)
    elif isinstance(node, list):
        for value in node:
            _close_named_mappings(value)


def schema_text(which: str) -> str:
    """The JSON Schema as the shipped file holds it (sorted keys, 2-space indent)."""
    return json.dumps(json_schema(which), indent=2, sort_keys=True) + "\n"


def _type_text(prop: dict, defs: dict) -> str:
    """A JSON Schema property's type in a few words."""
    if "$ref" in prop:
        return f"mapping ({_ref_title(prop['$ref'], defs)})"
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        kinds = [_type_text(p, defs) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds) + (" or null" if any(p.get("type") == "null" for p in prop["anyOf"]) else "")
    if "oneOf" in prop:
        return "a statistic (by `kind`: " + ", ".join(
            _ref_title(p["$ref"], defs).split()[-1] for p in prop["oneOf"]) + ")"
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type_text(prop.get('items', {}), defs)}"
    if t == "object":
        inner = prop.get("additionalProperties")
        if prop.get("patternProperties"):
            inner = next(iter(prop["patternProperties"].values()))
            return f"mapping of name to {_type_text(inner, defs)}"
        return f"mapping of text to {_type_text(inner, defs)}" if isinstance(inner, dict) else "mapping"
    return {"number": "number", "integer": "integer", "string": "text", "boolean": "true/false"}.get(t, t)


def _ref_title(ref: str, defs: dict) -> str:
    return defs[ref.split("/")[-1]].get("title", ref.split("/")[-1])


def _limits(prop: dict) -> str:
    out = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<"), ("minLength", "length >="), ("maxLength", "length <="),
                      ("minItems", "items >="), ("maxItems", "items <="),
                      ("minProperties", "entries >="), ("maxProperties", "entries <=")):
        if key in prop:
            v = prop[key]
            out.append(f"{word} {v:g}" if isinstance(v, float) or abs(v) >= 10 ** 6 else f"{word} {v}")
    return ", ".join(out)


def _rows(schema: dict, defs: dict, prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}{name}"
        default = prop.get("default")
        facts = []
        if name in required:
            facts.append("required")
        elif "default" in prop and default is not None:
            facts.append(f"default `{json.dumps(default)}`")
        lim = ", ".join(filter(None, [_limits(prop)] + [_limits(p) for p in prop.get("anyOf", [])]))
        if lim:
            facts.append(lim)
        desc = prop.get("description", "")
        rows.append(f"| `{path}` | {_type_text(prop, defs)} | {desc}"
                    + (f" ({'; '.join(facts)})" if facts else "") + " |")
    return rows


#: The reference pages' sections, in the order a reader meets them in a file, and the field
#: path of each (as the parsers' errors name them).
_ORDER = {"spec": {"Column": "schema.<column>.", "Privacy": "privacy.",
                   **{m.__name__: "statistics.<name>." for m in STATISTIC_MODELS}},
          "config": {"Mpc": "mpc.", "Peer": "mpc.parties[i].", "Tls": "mpc.tls.", "Api": "api.",
                     "Dataset": "datasets.<name>.", "Spark": "datasets.<name>.spark.",
                     "Policy": "policy.", "Budget": "policy.budget."}}


def _sections(title: str, model_schema: dict, note: str, order: dict[str, str]) -> list[str]:
    defs = model_schema.get("$defs", {})
    lines = [f"# {title}", "", note, "", "## Top level", "",
             "| field | type | meaning |", "| --- | --- | --- |"]
    lines += _rows(model_schema, defs, "", set(model_schema.get("required", [])))
    assert set(order) == set(defs), sorted(set(defs) ^ set(order))  # every model, once
    for key in order:
        d = defs[key]
        lines += ["", f"## {d.get('title', key)}", ""]
        if d.get("description"):
            lines += [d["description"], ""]
        lines += ["| field | type | meaning |", "| --- | --- | --- |"]
        lines += _rows(d, defs, order[key], set(d.get("required", [])))
    return lines


def reference_markdown(which: str) -> str:
    """docs/spec.md or docs/config.md, generated from the models."""
    if which == "spec":
        title = "Protocol spec reference (generated)"
        note = ("Generated from `jointstats/consortium/schema.py` by `python -m jointstats.consortium.schema`; do not "
                "edit. The JSON Schema is `jointstats/schema/spec.schema.json` (also `jointstats "
                "schema spec`). A worked example and the result of each statistic kind are in "
                "[reference.md](reference.md), section 1. Beyond the schema, the parser checks "
                "that every column a statistic names is in `schema` with the right type, and the "
                "limits over the whole spec (at most "
                f"{_spec.MAX_CELLS:,} crosstab cells and histogram bins, {_spec.MAX_TERMS} "
                f"regression terms); every refusal is one line naming the field path.")
    else:
        title = "Party config reference (generated)"
        note = ("Generated from `jointstats/consortium/schema.py` by `python -m jointstats.consortium.schema`; do not "
                "edit. The JSON Schema is `jointstats/schema/config.schema.json` (also "
                "`jointstats schema config`). A worked example, data sources and roles are in "
                "[reference.md](reference.md), section 2. Relative paths are relative to the "
                "config file. Beyond the schema, the parser checks that `party` is in "
                "`mpc.parties`, that addresses and dataset sources are not repeated, and that "
                "a compute-only party offers no datasets.")
    return "\n".join(_sections(title, json_schema(which), note, _ORDER[which])) + "\n"


def outputs() -> dict[Path, str]:
    """Every generated file and its current text."""
    return {SCHEMA_DIR / "spec.schema.json": schema_text("spec"),
            SCHEMA_DIR / "config.schema.json": schema_text("config"),
            DOCS_DIR / "spec.md": reference_markdown("spec"),
            DOCS_DIR / "config.md": reference_markdown("config")}


def write_all() -> list[Path]:
    """Regenerate the JSON Schema files and the reference pages; the paths written."""
    written = []
    for path, text in outputs().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(f"wrote {p}")
