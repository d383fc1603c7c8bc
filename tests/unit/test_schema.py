"""The shipped schema (jointstats/consortium/schema.py) against the parsers, the examples and its
generated files: they cannot drift apart."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from jointstats.consortium import schema as _schema
from jointstats.consortium.config import parse_party_config
from jointstats.errors import ConfigError, SpecError
from jointstats.plan.spec import parse_spec, yaml_load

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "protocols").glob("*.yaml"))
CONFIGS = sorted((ROOT / "parties").rglob("*.yaml"))


def _validator(which: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((_schema.SCHEMA_DIR / f"{which}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# ------------------------------------------------------------------ generated files


def test_generated_files_are_current():
    stale = [str(p.relative_to(ROOT)) for p, text in _schema.outputs().items()
             if not p.exists() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"regenerate with: python -m jointstats.consortium.schema ({', '.join(stale)})"


def test_schema_files_ship_in_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"schema/*.json"' in text
    assert _schema.SCHEMA_DIR.parent == ROOT / "jointstats"


@pytest.mark.parametrize("which", ["spec", "config"])
def test_cli_prints_the_shipped_schema(which, capsys):
    from jointstats.cli.commands import main
    assert main(["schema", which]) == 0
    assert capsys.readouterr().out == (_schema.SCHEMA_DIR / f"{which}.schema.json").read_text()


def test_doc_links_point_at_files_that_exist():
    """Every relative link of README.md and docs/*.md, and every docs/ or jointstats/ path
    the command line's help names, is a file of the repository."""
    from jointstats.cli.commands import build_parser
    missing = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", md.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                missing.append(f"{md.name}: {target}")
    helps = _all_help(build_parser())
    for path in set(re.findall(r"\b((?:docs|jointstats/schema)/[\w./-]+\.(?:md|json))", helps)):
        if not (ROOT / path).exists():
            missing.append(f"--help: {path}")
    assert not missing


def _all_help(parser) -> str:
    import argparse
    out = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.append(_all_help(sub))
    return "\n".join(out)


# ------------------------------------------------------------------ the examples


def _as_json(data):
    """YAML data as JSON sees it: dates (``valid: {from: 2026-07-01}``) are text there, as in
    an editor checking the YAML against the schema."""
    return json.loads(json.dumps(data, default=str))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_example_spec_validates_against_the_schema(path):
    data = yaml_load(path.read_text())
    _validator("spec").validate(_as_json(data))
    _schema.SpecModel.model_validate(data)
    parse_spec(path.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_validates_against_the_schema(path):
    data = yaml_load(path.read_text())
    _validator("config").validate(_as_json(data))
    _schema.PartyConfigModel.model_validate(data)
    parse_party_config(data, path)


# ------------------------------------------------------------------ field names agree

#: A spec using every field of every model.
FULL_SPEC = {
    "name": "full", "dataset": "cohort", "purpose": "risk-study", "partition": "horizontal",
    "schema": {"age": {"type": "real", "bounds": [18, 100]},
               "visits": {"type": "integer", "bounds": [0, 20]},
               "smoker": {"type": "categorical", "levels": ["no", "yes"]},
               "region": {"type": "categorical", "levels": ["n", "s"]}},
    "privacy": {"epsilon": 1.0, "delta": 1e-6, "noise": "joint"},
    "statistics": {
        "count": {"kind": "count", "column": "age", "weight": 1},
        "sum": {"kind": "sum", "column": "visits", "weight": 1},
        "mean": {"kind": "mean", "column": "age", "weight": 2},
        "variance": {"kind": "variance", "column": "age", "weight": 1},
        "correlation": {"kind": "correlation", "columns": ["age", "visits"], "weight": 1},
        "crosstab": {"kind": "crosstab", "rows": "smoker", "cols": "region", "min_count": 5,
                     "weight": 1},
        "histogram": {"kind": "histogram", "column": "age", "bins": [18, 50, 100], "weight": 1},
        "regression": {"kind": "regression", "target": "age", "features": ["visits", "smoker"],
                       "ridge": 0.5, "intercept": True, "weight": 1},
    },
}

#: The same spec linked (``partition: vertical``), with every field of ``link``.
FULL_LINKED_SPEC = {**FULL_SPEC, "partition": "vertical",
                    "link": {"key": "patient_id", "case": "exact", "rows": 1000, "join": "left",
                             "base": "a"}}

#: A party config using every field of every model (``policy.agreements_file``, which names a
#: file, has its own test).
FULL_CONFIG = {
    "party": "a",
    "mpc": {"parties": [{"name": "a", "host": "10.0.0.1", "port": 11365, "role": "data"},
                        {"name": "b", "host": "10.0.0.2", "port": 11366},
                        {"name": "c", "host": "10.0.0.3", "port": 11367, "role": "compute"}],
            "tls": {"cert": "keys/a.crt", "key": "keys/a.key", "ca": "keys/ca.crt",
                    "crl": "keys/ca.crl"}},
    "api": {"host": "127.0.0.1", "port": 8701},
    "datasets": {"cohort": {"source": "data/a.csv", "subject_id": "patient_id",
                            "withdrawals": "consent/cohort.txt", "description": "one row a patient",
                            "schema": {"age": {"type": "real", "bounds": [18, 100]},
                                       "smoker": {"type": "categorical", "levels": ["no", "yes"]}},
                            "fingerprint": False},
                 "linked": {"source": "data/a_linked.csv", "columns": ["patient_id", "age"]},
                 "pg": {"source": "postgresql://reader@db/clinic", "query": "SELECT 1",
                        "password_file": "pg.pass"},
                 "lake": {"source": "data/lake/", "format": "parquet"},
                 "sp": {"source": "spark:clinic.cohort", "spark": {"master": "local[2]",
                                                                 "conf": {"x": "1"}}}},
    "policy": {"budget": {"epsilon": 10, "delta": 1e-5}, "max_epsilon_per_job": 2,
               "min_count": 5, "allow_exact": False, "allow_two_party": False,
               "analysts": {"alice": "keys/alice.pub", "bob": "keys/bob.pub"},
               "agreements": [{"id": "dua-1", "dataset": "cohort", "analysts": ["team"],
                               "purposes": ["risk-study"], "columns": ["age", "smoker"],
                               "kinds": ["count", "mean"], "modes": ["dp", "exact"],
                               "budget": {"epsilon": 5, "delta": 1e-6},
                               "valid": {"from": "2026-07-01", "until": "2027-06-30"},
                               "approval": {"above_epsilon": 1, "exact": True, "always": False},
                               "description": "risk study, ethics approval EC-1"}],
               "groups": {"team": ["alice", "bob"]},
               "officers": {"carol": "keys/carol.pub"},
               "approval": {"above_epsilon": 2, "exact": True, "always": False,
                            "agreements": ["dua-1"], "expires_after": 3600},
               "revoked": ["bob"]},
    "state": "state/a.sqlite",
}


def _fields(model) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _spec_text(data) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _allowed_by_spec_parser(data: dict, at: list) -> set[str]:
    """The fields the spec parser accepts at ``at``: an unknown field there is refused with
    the list of the fields it expected (read from its one-line error)."""
    doc = copy.deepcopy(data)
    node = doc
    for key in at:
        node = node[key]
    node["zz_unknown"] = 1
    with pytest.raises(SpecError) as err:
        parse_spec(_spec_text(doc))
    message = str(err.value)
    assert "zz_unknown: unknown field" in message, message
    return set(message.split("expected one of ")[1].split(", "))


def test_both_schemas_take_the_full_examples():
    for spec in (FULL_SPEC, FULL_LINKED_SPEC):
        _validator("spec").validate(spec)
        _schema.SpecModel.model_validate(spec)
        parse_spec(_spec_text(spec))
    _validator("config").validate(FULL_CONFIG)
    _schema.PartyConfigModel.model_validate(FULL_CONFIG)
    parse_party_config(FULL_CONFIG, Path("/nowhere/a.yaml"))


def test_spec_models_and_parser_accept_the_same_fields():
    # the parser lists ``key`` among the top-level fields only to refuse it with a pointer to
    # ``link.key`` (the field of earlier versions); the schema has no such field
    assert _allowed_by_spec_parser(FULL_SPEC, []) - {"key"} == _fields(_schema.SpecModel)
    with pytest.raises(SpecError, match=r"^key: .*link: \{key"):
        parse_spec(_spec_text({**FULL_LINKED_SPEC, "key": "patient_id"}))
    assert not _validator("spec").is_valid({**FULL_LINKED_SPEC, "key": "patient_id"})
    assert _allowed_by_spec_parser(FULL_SPEC, ["privacy"]) == _fields(_schema.Privacy)
    assert _allowed_by_spec_parser(FULL_LINKED_SPEC, ["link"]) == _fields(_schema.Link)
    for col in ("age", "smoker"):
        assert _allowed_by_spec_parser(FULL_SPEC, ["schema", col]) == _fields(_schema.Column)
    by_kind = {m.model_fields["kind"].annotation.__args__[0]: m for m in _schema.STATISTIC_MODELS}
    from jointstats.plan.spec import STATISTIC_KINDS
    assert set(by_kind) == set(STATISTIC_KINDS) == set(FULL_SPEC["statistics"])
    for kind, model in by_kind.items():
        assert _allowed_by_spec_parser(FULL_SPEC, ["statistics", kind]) == _fields(model), kind


class _Recording(dict):
    """A mapping that records which keys a parser looks up in it."""

    def __init__(self, data, log: set):
        super().__init__(data)
        self.log = log

    def get(self, key, default=None):
        self.log.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.log.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.log.add(key)
        return super().__contains__(key)


def _wrap(node, path: str, logs: dict):
    if isinstance(node, dict):
        logs[path] = set()
        return _Recording({k: _wrap(v, f"{path}.{k}" if path else str(k), logs) for k, v in node.items()},
                          logs[path])
    if isinstance(node, list):
        return [_wrap(v, f"{path}[]", logs) for v in node]
    return node


def test_config_models_and_parser_read_the_same_fields():
    logs: dict[str, set] = {}
    parse_party_config(_wrap(FULL_CONFIG, "", logs), Path("/nowhere/a.yaml"))
    m = _schema
    expect = {"": m.PartyConfigModel, "mpc": m.Mpc, "mpc.tls": m.Tls, "api": m.Api,
              "policy": m.Policy, "policy.budget": m.Budget, "policy.approval": m.PolicyApproval,
              "policy.agreements[]": m.Agreement, "policy.agreements[].budget": m.AgreementBudget,
              "policy.agreements[].valid": m.Validity,
              "policy.agreements[].approval": m.ApprovalRule}
    for path, model in expect.items():
        assert logs[path] == _fields(model), path
    assert set().union(*(logs[k] for k in logs if k.startswith("mpc.parties["))) == _fields(m.Peer)
    read = set().union(*(logs[f"datasets.{d}"] for d in FULL_CONFIG["datasets"]))
    assert read == _fields(m.Dataset)
    # a dataset's documented schema is read by the spec's column parser: the same model
    for col in FULL_CONFIG["datasets"]["cohort"]["schema"]:
        assert logs[f"datasets.cohort.schema.{col}"] <= _fields(m.Column)
    assert m.Dataset.model_fields["schema_"].annotation == (dict[m.Name, m.Column] | None)
    # the top level refuses any other field, naming the ones it expects
    with pytest.raises(ConfigError, match="unknown field") as err:
        parse_party_config({**FULL_CONFIG, "zz": 1}, Path("/nowhere/a.yaml"))
    assert set(str(err.value).split("expected one of ")[1].split(", ")) == _fields(m.PartyConfigModel)
    # spark settings are read by the Spark source: master and conf
    from jointstats.engine import spark_source as _spark_source
    text = Path(_spark_source.__file__).read_text()
    assert all(f'"{f}"' in text for f in _fields(m.Spark))


# ------------------------------------------------------------------ types agree


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list) and node and not isinstance(node[0], (dict, list)):
        yield path, node
        for i, v in enumerate(node):
            yield path + (i,), v
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))
    else:
        yield path, node


def _replace(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _wrong_values(value):
    """Values of another JSON type than ``value``."""
    if isinstance(value, bool):
        return ["yes", 3]
    if isinstance(value, (int, float)):
        return ["3", [1], {"a": 1}]
    if isinstance(value, str):
        return [{"a": 1}, [1]]
    if isinstance(value, list):
        return ["x", {"a": 1}]
    return []


#: Config fields the parser takes as text whatever their YAML type (it str()s them); the
#: schema, which is the documentation, asks for text.
LENIENT_CONFIG = {("state",), ("api", "host"), ("mpc", "tls", "cert"), ("mpc", "tls", "key"),
                  ("mpc", "tls", "ca"), ("mpc", "tls", "crl"), ("policy", "analysts", "alice"),
                  ("policy", "analysts", "bob"), ("policy", "officers", "carol"),
                  ("datasets", "sp", "spark", "conf", "x"), ("datasets", "sp", "spark", "master")}
#: Spec values the spec parser reads as text (a level may be any scalar).
LENIENT_SPEC_PREFIX = ("schema", "smoker", "levels")


def test_spec_type_errors_are_refused_by_schema_and_parser():
    v = _validator("spec")
    checked, disagree = 0, []
    leaves = [(FULL_SPEC, path, value) for path, value in _leaves(FULL_SPEC)]
    leaves += [(FULL_LINKED_SPEC, path, value) for path, value in _leaves(FULL_LINKED_SPEC)
               if path[0] == "link"]
    for full, path, value in leaves:
        if path[:3] == LENIENT_SPEC_PREFIX and len(path) == 4 or path[-1] == "kind":
            continue
        for wrong in _wrong_values(value):
            doc = _replace(full, path, wrong)
            schema_ok = v.is_valid(doc)
            try:
                parse_spec(_spec_text(doc))
                parser_ok = True
            except SpecError:
                parser_ok = False
            if schema_ok or parser_ok:
                disagree.append((path, wrong, schema_ok, parser_ok))
            checked += 1
    assert not disagree
    assert checked > 60


def test_config_type_errors_are_refused_by_schema_and_parser():
    v = _validator("config")
    checked, disagree = 0, []
    for path, value in _leaves(FULL_CONFIG):
        for wrong in _wrong_values(value):
            doc = _replace(FULL_CONFIG, path, wrong)
            schema_ok = v.is_valid(doc)
            try:
                parse_party_config(doc, Path("/nowhere/a.yaml"))
                parser_ok = True
            except ConfigError:
                parser_ok = False
            if path in LENIENT_CONFIG:
                assert not schema_ok, (path, wrong)
                continue
            if schema_ok or parser_ok:
                disagree.append((path, wrong, schema_ok, parser_ok))
            checked += 1
    assert not disagree
    assert checked > 30


@pytest.mark.parametrize("column", [{"type": "real"}, {"type": "categorical"},
                                    {"type": "integer", "bounds": [0, 1], "levels": ["a"]},
                                    {"type": "categorical", "levels": ["a"], "bounds": [0, 1]}])
def test_bounds_for_numbers_levels_for_categories_everywhere(column):
    import pydantic
    doc = copy.deepcopy(FULL_SPEC)
    doc["schema"]["extra"] = column
    assert not _validator("spec").is_valid(doc)
    with pytest.raises(pydantic.ValidationError):
        _schema.SpecModel.model_validate(doc)
    with pytest.raises(SpecError, match=r"schema\.extra\.(bounds|levels)"):
        parse_spec(_spec_text(doc))


# ------------------------------------------------------------------ rules across fields


@pytest.mark.parametrize("change,field", [
    ({"partition": "horizontal"}, "link"),                           # link only when vertical
    ({"link": None}, "link"),                                        # vertical needs a link
    ({"link": {"key": "patient_id", "case": "fold"}}, r"link\.rows"),  # DP needs rows
    ({"link": {"key": "patient_id", "rows": 10, "join": "left"}}, r"link\.base"),
    ({"link": {"key": "patient_id", "rows": 10, "base": "a"}}, r"link\.base"),
    ({"link": {"key": "patient_id", "rows": 0}}, r"link\.rows"),
    ({"link": {"rows": 10}}, r"link\.key"),
    ({"link": {"key": "patient_id", "rows": None}}, r"link\.rows"),   # null is no number
    ({"link": {"key": "patient_id", "rows": 10, "join": "left", "base": None}}, r"link\.base"),
    ({"link": "KEEP_NULL"}, "link"),                                 # link: null
    ({"partition": "horizontal", "link": "KEEP_NULL"}, "link"),
])
def test_linked_spec_rules_everywhere(change, field):
    import pydantic
    doc = {**copy.deepcopy(FULL_LINKED_SPEC), **change}
    if doc["link"] is None:
        del doc["link"]
    elif doc["link"] == "KEEP_NULL":
        doc["link"] = None
    assert not _validator("spec").is_valid(doc)
    with pytest.raises(pydantic.ValidationError):
        _schema.SpecModel.model_validate(doc)
    with pytest.raises(SpecError, match=f"^{field}"):
        parse_spec(_spec_text(doc))


def test_linked_spec_rules_that_hold():
    exact = {k: v for k, v in FULL_LINKED_SPEC.items() if k != "privacy"}
    for doc in (exact | {"link": {"key": "patient_id"}},                       # exact: rows optional
                exact | {"link": {"key": "patient_id", "rows": None, "base": None}},  # null: absent
                FULL_SPEC | {"privacy": None, "purpose": None},                   # null: absent
                FULL_LINKED_SPEC | {"link": {"key": "patient_id", "rows": 5, "join": "inner"}}):
        _validator("spec").validate(doc)
        _schema.SpecModel.model_validate(doc)
        parse_spec(_spec_text(doc))
    # the key is never a schema column: the model and the parser say so (the JSON Schema cannot)
    doc = FULL_LINKED_SPEC | {"link": {"key": "age", "rows": 5}}
    with pytest.raises(SpecError, match=r"^link\.key"):
        parse_spec(_spec_text(doc))
    import pydantic
    with pytest.raises(pydantic.ValidationError):
        _schema.SpecModel.model_validate(doc)


def test_agreements_file_holds_agreements_of_the_same_model(tmp_path):
    """``policy.agreements_file``: a YAML file of agreements (a list, or under ``agreements:``),
    each of the same model as an inline one; a non-text value is refused by both."""
    agreement = {**FULL_CONFIG["policy"]["agreements"][0], "id": "dua-2"}
    (tmp_path / "agreements.yaml").write_text(yaml.safe_dump({"agreements": [agreement]}))
    doc = copy.deepcopy(FULL_CONFIG)
    doc["policy"]["agreements_file"] = "agreements.yaml"
    _validator("config").validate(doc)
    _schema.PartyConfigModel.model_validate(doc)
    cfg = parse_party_config(doc, tmp_path / "a.yaml")
    assert [a.id for a in cfg.policy.governance.agreements] == ["dua-1", "dua-2"]
    _schema.Agreement.model_validate(agreement)
    for wrong in (3, ["agreements.yaml"], {"a": 1}):
        doc["policy"]["agreements_file"] = wrong
        assert not _validator("config").is_valid(doc)
        with pytest.raises(ConfigError, match="policy.agreements_file"):
            parse_party_config(doc, tmp_path / "a.yaml")


@pytest.mark.parametrize("policy,field", [
    ({"agreements": [{"id": "x"}]}, r"policy\.agreements\[0\]\.dataset"),          # required fields
    ({"approval": {"expires_after": 0}}, r"policy\.approval\.expires_after"),
    ({"approval": {"sometimes": True}}, r"policy\.approval\.sometimes"),
    ({"groups": {"team": []}}, r"policy\.groups\.team"),
])
def test_governance_values_refused_by_schema_and_parser(policy, field):
    doc = copy.deepcopy(FULL_CONFIG)
    doc["policy"].update(policy)
    assert not _validator("config").is_valid(doc)
    with pytest.raises(ConfigError, match=field):
        parse_party_config(doc, Path("/nowhere/a.yaml"))


# ------------------------------------------------------------------ null agrees


def _field_paths(node, path=()):
    """Every field of a document (mapping keys at any depth, through lists of mappings)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            yield from _field_paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict):
                yield from _field_paths(value, path + (i,))


#: Fields whose ``null`` only a rule across fields refuses, which the parser checks and the
#: schema does not (a party off loopback needs TLS; agreements name this party's datasets and
#: fit its lifetime budget, approval rules need an officer), or that the parser str()s.
NULL_CROSS_FIELD = {("mpc", "tls"), ("datasets",), ("policy", "budget"), ("policy", "agreements"),
                    ("policy", "officers")}


@pytest.mark.parametrize("which", ["spec", "linked", "config"])
def test_null_is_taken_or_refused_alike(which):
    """``field: null`` for every field: the JSON Schema, the models and the parser agree on it
    (null stands for an optional field left out, and is refused where a value is needed)."""
    import pydantic
    full = {"spec": FULL_SPEC, "linked": FULL_LINKED_SPEC, "config": FULL_CONFIG}[which]
    model = _schema.PartyConfigModel if which == "config" else _schema.SpecModel
    v = _validator("config" if which == "config" else "spec")
    disagree, checked = [], 0
    for path in _field_paths(full):
        if which == "config" and (path in NULL_CROSS_FIELD or path in LENIENT_CONFIG):
            continue
        doc = _replace(full, path, None)
        try:
            model.model_validate(doc)
            model_ok = True
        except pydantic.ValidationError:
            model_ok = False
        try:
            if which == "config":
                parse_party_config(doc, Path("/nowhere/a.yaml"))
            else:
                parse_spec(_spec_text(doc))
            parser_ok = True
        except (SpecError, ConfigError):
            parser_ok = False
        if not v.is_valid(doc) == model_ok == parser_ok:
            disagree.append((path, v.is_valid(doc), model_ok, parser_ok))
        checked += 1
    assert not disagree
    assert checked > 20
