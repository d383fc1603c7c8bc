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

import datetime as _dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from jointstats.consortium import agreements as _agreements
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
    """Closed models (no other fields), as the parsers. A field typed ``X | None`` may be
    written as ``null`` (the same as leaving it out); one typed ``X`` with the default None
    may be left out but not be ``null``, which the parsers refuse there."""

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
    bounds: list[Number] = Field(
        None, min_length=2, max_length=2,
        description="`[low, high]` with low < high (integers for `integer`), required for "
                    "numeric columns: values outside are clipped by their owner; DP "
                    "sensitivities come from them, so tight bounds mean less noise")
    levels: list[Union[str, int, float, bool]] = Field(
        None, min_length=1, max_length=_spec.MAX_LEVELS,
        description="the categories of a `categorical` column (required there), as text: quote "
                    "`\"no\"`/`\"yes\"` (YAML 1.1 reads bare no/yes as booleans); at most "
                    f"{_spec.MAX_LEVEL_CHARS} characters each, no duplicates")

    @model_validator(mode="after")
    def _bounds_or_levels(self) -> "Column":
        """Numeric columns have bounds and no levels; categorical ones levels and no bounds
        (the JSON Schema says the same with if/then/else)."""
        want, other = ("levels", "bounds") if self.type == "categorical" else ("bounds", "levels")
        if getattr(self, want) is None or other in self.model_fields_set:
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
                       column=(Name, Field(None, description=f"optional, {_col}: count the rows where it is present")))
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
    min_count=(int, Field(None, ge=0, le=_spec.MAX_MAGNITUDE,
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


class Link(_Model):
    """How a linked job (`partition: vertical`) links the parties' rows (docs/linkage.md)."""

    model_config = ConfigDict(extra="forbid", title="Link", json_schema_extra={"allOf": [
        {"if": {"properties": {"join": {"const": "left"}}, "required": ["join"]},
         "then": {"required": ["base"], "properties": {"base": {"type": "string"}}},
         "else": {"properties": {"base": {"type": "null"}}}}]})

    key: Name = Field(description="the identifier column every data holder has, e.g. a national "
                                  "health number; not a schema column, never revealed")
    case: Literal["fold", "exact"] = Field(
        "fold", description="`fold`: keys compare case-insensitively (Unicode caseless matching); "
                            "`exact`: case counts (both trim whitespace and apply NFKC)")
    rows: int | None = Field(
        None, ge=1, le=_spec.MAX_LINK_ROWS,
        description="the public number of keys every holder pads its list to (with dummy keys "
                    "that link with nothing), so that no party learns another's row count; a "
                    "holder with more usable keys refuses in exact mode and keeps its first "
                    "`rows` in DP mode. Required with a `privacy` block; without one, each "
                    "holder's number of usable keys is shown to the other parties")
    join: Literal["inner", "left"] = Field(
        "inner", description="`inner`: the records every data holder has; `left`: every record "
                             "of the holder `base`, with or without partners elsewhere")
    base: Annotated[str, StringConstraints(min_length=1, max_length=_spec.MAX_NAME_CHARS)] | None = Field(
        None, description="the party whose records a left join keeps (required with "
                          "`join: left`, only then)")


class SpecModel(_Model):
    """A protocol spec: the analyst's YAML (docs/spec.md)."""

    model_config = ConfigDict(extra="forbid", title="jointstats protocol spec", json_schema_extra={"allOf": [
        {"if": {"properties": {"partition": {"const": "vertical"}}, "required": ["partition"]},
         "then": {"required": ["link"]}, "else": {"not": {"required": ["link"]}}},
        {"if": {"properties": {"privacy": {"type": "object"}}, "required": ["privacy", "link"]},
         "then": {"properties": {"link": {"required": ["rows"],
                                          "properties": {"rows": {"type": "integer"}}}}}}]})

    name: str = Field("unnamed", min_length=1, max_length=_spec.MAX_NAME_CHARS,
                      description="free text, shown in results and the audit log")
    dataset: str = Field(min_length=1, max_length=_spec.MAX_NAME_CHARS,
                         description="the logical dataset every party maps to a source "
                                     "in its config")
    purpose: str | None = Field(
        None, min_length=1, max_length=_spec.MAX_NAME_CHARS,
        description="the purpose the job serves, a free-text id matched against the parties' "
                    "data-use agreements (`policy.agreements[i].purposes`); required by every "
                    "party that lists agreements (docs/governance.md)")
    agreement: str | None = Field(
        None, min_length=1, max_length=_spec.MAX_NAME_CHARS,
        description="optional: the id of the data-use agreement the job must run under; every "
                    "party then requires a covering agreement with exactly this id, so that one "
                    "consortium-wide agreement binds all of them (docs/governance.md)")
    partition: Literal["horizontal", "vertical"] = Field(
        "horizontal", description="`horizontal`: every party holds whole rows; `vertical`: each "
                                  "data holder holds some of the columns, rows linked on "
                                  "`link.key` (docs/linkage.md)")
    link: Link = Field(None, description="how rows are linked: required with "
                                                "`partition: vertical`, only then")
    schema_: dict[Name, Column] = Field(
        alias="schema", min_length=1, max_length=_spec.MAX_COLUMNS,
        description="public metadata of every column (names: letters, digits, "
                    "`_ . -`, starting with a letter or `_`)")
    privacy: Privacy | None = Field(None, description="omit for exact mode (every party's policy "
                                                      "must allow it)")
    statistics: dict[Name, Statistic] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=_spec.MAX_STATISTICS,
        description="the statistics to release, by name")

    @model_validator(mode="after")
    def _linked(self) -> "SpecModel":
        """``link`` exactly with ``partition: vertical``, its key not a schema column, its
        ``rows`` set in DP mode, ``base`` exactly with ``join: left`` (the JSON Schema says
        all but the key with if/then/else)."""
        if (self.partition == "vertical") != ("link" in self.model_fields_set):
            raise ValueError("link is required with partition: vertical, and only used there")
        if self.link is not None:
            if self.link.key in self.schema_:
                raise ValueError(f"link.key {self.link.key!r} is also a schema column")
            if self.privacy is not None and self.link.rows is None:
                raise ValueError("link.rows is required with a privacy block")
            if (self.link.join == "left") != (self.link.base is not None):
                raise ValueError("link.base is required with join: left, and only used there")
        return self


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
    crl: str | None = Field(None, description="the consortium CA's certificate revocation list "
                                              "(`jointstats keys crl`), read anew for every "
                                              "connection: a revoked party certificate fails the "
                                              "handshake (docs/governance.md)")


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
    """Where one dataset's rows live (docs/reference.md, Data sources), and what this party
    documents and applies about it (docs/governance.md, docs/linkage.md)."""

    model_config = ConfigDict(extra="forbid", title="Dataset", json_schema_extra={"allOf": [
        {"if": {"properties": {"withdrawals": {"type": "string"}}, "required": ["withdrawals"]},
         "then": {"required": ["subject_id"], "properties": {"subject_id": {"type": "string"}}}}]})

    source: str = Field(description="a `.csv` or `.parquet` file, `sqlite:///path.db?table=name`, "
                                    "`postgresql://...`, `duckdb:///...`, a glob, a directory, "
                                    "`spark:...`")
    query: str = Field(None, description="SQL the engine runs instead of reading a table")
    password_file: str = Field(None, description="a file holding the PostgreSQL password")
    format: str = Field(None, description="`parquet` or `csv` for a directory or glob")
    spark: Spark = Field(None, description="Spark settings of a `spark:` source")
    columns: list[Text] = Field(
        None, max_length=1000,
        description="linked data (`partition: vertical`): the schema columns this party holds, "
                    "distinct (listing the link key too is allowed; only the key: its keys "
                    "restrict the linked records)")
    subject_id: Text | None = Field(
        None, description="the column holding data subjects' identifiers: turns on consent "
                          "withdrawal (`jointstats consent withdraw`) for CSV, Parquet and SQLite "
                          "sources; never released")
    withdrawals: str | None = Field(
        None, description="the withdrawal list file, one identifier a line (with `subject_id`) "
                          "[`<state>.withdrawals/<dataset>.txt`]")
    description: str = Field("", max_length=2000,
                             description="free text for the catalog (`GET /catalog`)")
    schema_: dict[Name, Column] | None = Field(
        None, alias="schema",
        description="public column metadata for the catalog and `jointstats spec-template`, as "
                    "in a spec's `schema` (type, bounds or levels)")
    fingerprint: bool = Field(True, description="whether release reports carry a keyed "
                                                "fingerprint (HMAC) of the data read; `false` "
                                                "withholds it")

    @model_validator(mode="after")
    def _withdrawals_need_subjects(self) -> "Dataset":
        """A withdrawal list names subjects by the ``subject_id`` column (the JSON Schema says
        the same with if/then)."""
        if self.withdrawals is not None and self.subject_id is None:
            raise ValueError("withdrawals needs subject_id")
        return self


class Budget(_Model):
    """A lifetime budget per dataset, never exceeded."""

    model_config = ConfigDict(extra="forbid", title="Budget")

    epsilon: float = Field(0, ge=0, description="lifetime epsilon per dataset")
    delta: float = Field(0, ge=0, description="lifetime delta per dataset (0: pure DP jobs only)")


class AgreementBudget(_Model):
    """An agreement's sub-budget, spent in the dataset's ledger beside its lifetime budget."""

    model_config = ConfigDict(extra="forbid", title="AgreementBudget")

    epsilon: float = Field(None, ge=0, description="epsilon of the jobs under this "
                                                          "agreement, over its lifetime; at most "
                                                          "the dataset's [`policy.budget.epsilon`]")
    delta: float = Field(None, ge=0, description="delta of the jobs under it; at most the "
                                                        "dataset's [`policy.budget.delta`]")


class Validity(_Model):
    """An agreement's validity period: whole UTC days, both inclusive; either end optional."""

    model_config = ConfigDict(extra="forbid", title="Validity")

    from_: _dt.date | None = Field(None, alias="from", description="first day it covers jobs "
                                                                   "(`YYYY-MM-DD`)")
    until: _dt.date | None = Field(None, description="last day it covers jobs (`YYYY-MM-DD`), "
                                                     "not before `from`")


class ApprovalRule(_Model):
    """When a job must wait for a compliance officer's approval (`policy.officers`)."""

    model_config = ConfigDict(extra="forbid", title="ApprovalRule")

    above_epsilon: float | None = Field(None, ge=0, description="DP jobs asking more epsilon "
                                                                "than this wait")
    exact: bool = Field(False, description="exact-mode jobs wait")
    always: bool = Field(False, description="every job waits")


class PolicyApproval(ApprovalRule):
    """This party's approval rules, over every job (docs/governance.md, Approval)."""

    model_config = ConfigDict(extra="forbid", title="PolicyApproval")

    agreements: list[Text] | None = Field(
        None, min_length=1, description="ids of agreements every job under which waits, no "
                                        "duplicates")
    expires_after: float | None = Field(
        _agreements.DEFAULT_APPROVAL_EXPIRY, gt=0,
        description="seconds a job may wait for approval before it fails as expired")


class Agreement(_Model):
    """One data-use agreement: a job runs at this party only under the first agreement (in
    config order) covering its dataset, analyst, purpose, date, mode, kinds and every column
    of its schema, with room in its sub-budget (docs/governance.md)."""

    model_config = ConfigDict(extra="forbid", title="Agreement")

    id: Text = Field(description="the agreement's id, unique at this party (1-128 printable "
                                 "characters); named in refusals, the ledger and the release "
                                 "report")
    dataset: Text = Field(description="the dataset it covers, one of this party's `datasets`")
    analysts: list[Text] = Field(min_length=1, description="analysts (`policy.analysts`) or "
                                                           "groups (`policy.groups`) it covers, "
                                                           "no duplicates")
    purposes: list[Text] = Field(min_length=1, description="purposes a spec's `purpose` must be "
                                                           "one of, no duplicates")
    columns: list[Text] = Field(min_length=1, description="the columns it releases (data "
                                                          "minimisation): every column of a "
                                                          "spec's schema must be among them; no "
                                                          "duplicates")
    kinds: list[Literal[_agreements.KINDS]] = Field(  # type: ignore[valid-type]
        list(_agreements.KINDS), min_length=1,
        description="the statistic kinds it allows, no duplicates [every kind]")
    modes: list[Literal[_agreements.MODES]] = Field(  # type: ignore[valid-type]
        ["dp"], min_length=1, description="`dp` and/or `exact`, no duplicates")
    budget: AgreementBudget | None = Field(None, description="its sub-budget [the dataset's "
                                                             "lifetime budget]")
    valid: Validity | None = Field(None, description="its validity period [always]")
    approval: ApprovalRule | None = Field(None, description="jobs under it that wait for an "
                                                            "officer's approval")
    description: str = Field("", max_length=2000, description="free text (shown in the catalog)")


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
    agreements: list[Agreement] | None = Field(
        None, description="data-use agreements; once any is listed (here or in "
                          "`agreements_file`), every job at this party needs one")
    agreements_file: str | None = Field(
        None, description="a YAML file of more agreements (`agreements: [...]`, or the list "
                          "alone), after the inline ones")
    groups: dict[Text, Annotated[list[Text], Field(min_length=1)]] | None = Field(
        None, description="group name to its analysts, no duplicates; an agreement may list a "
                          "group instead of analysts (a group cannot have an analyst's name)")
    officers: dict[Text, str] | None = Field(
        None, description="compliance officers who approve or reject waiting jobs: name to "
                          "Ed25519 public key file (required with approval rules)")
    approval: PolicyApproval | None = Field(None, description="jobs that wait for an officer's "
                                                              "approval")
    revoked: list[Text] | None = Field(
        None, description="analysts and officers refused whatever else lists them (agreements "
                          "and groups included), no duplicates; a running node applies a change "
                          "on a policy reload")


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
    if prop.get("format") == "date":
        return "date (`YYYY-MM-DD`)"
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
            if isinstance(v, float) or abs(v) >= 10 ** 9:
                out.append(f"{word} {v:g}")
            else:
                out.append(f"{word} {v:,}" if abs(v) >= 10 ** 6 else f"{word} {v}")
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
_ORDER = {"spec": {"Link": "link.", "Column": "schema.<column>.", "Privacy": "privacy.",
                   **{m.__name__: "statistics.<name>." for m in STATISTIC_MODELS}},
          "config": {"Mpc": "mpc.", "Peer": "mpc.parties[i].", "Tls": "mpc.tls.", "Api": "api.",
                     "Dataset": "datasets.<name>.", "Spark": "datasets.<name>.spark.",
                     "Column": "datasets.<name>.schema.<column>.",
                     "Policy": "policy.", "Budget": "policy.budget.",
                     "Agreement": "policy.agreements[i].",
                     "AgreementBudget": "policy.agreements[i].budget.",
                     "Validity": "policy.agreements[i].valid.",
                     "ApprovalRule": "policy.agreements[i].approval.",
                     "PolicyApproval": "policy.approval."}}


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
                "that every column a statistic names is in `schema` with the right type, that "
                "`link.key` is not a schema column, and the limits over the whole spec (at most "
                f"{_spec.MAX_CELLS:,} crosstab cells and histogram bins, {_spec.MAX_TERMS} "
                f"regression terms); every refusal is one line naming the field path.")
    else:
        title = "Party config reference (generated)"
        note = ("Generated from `jointstats/consortium/schema.py` by `python -m jointstats.consortium.schema`; do not "
                "edit. The JSON Schema is `jointstats/schema/config.schema.json` (also "
                "`jointstats schema config`). A worked example, data sources and roles are in "
                "[reference.md](reference.md), section 2. Relative paths are relative to the "
                "config file. Beyond the schema, the parser checks that `party` is in "
                "`mpc.parties`, that addresses and dataset sources are not repeated, that "
                "a compute-only party offers no datasets, that `subject_id` is on a CSV, "
                "Parquet or SQLite source, and for governance (docs/governance.md) that "
                "agreement ids are unique (inline and in `agreements_file`), each names one of "
                "this party's datasets and a budget within its lifetime budget, approval rules "
                "come with an officer and no group has an analyst's name.")
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
