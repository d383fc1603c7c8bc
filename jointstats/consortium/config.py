"""Party configuration: the operator's YAML (docs/reference.md section 2), validated.

Relative paths are resolved against the directory of the config file.
"""
from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from jointstats.consortium.agreements import Governance, parse_governance
from jointstats.errors import ConfigError
from jointstats.plan.spec import clip_error, did_you_mean, shorten, yaml_load


@dataclass(frozen=True)
class Peer:
    """One entry of ``mpc.parties``: a party's name and MPC address; index = position.

    ``role`` is ``data`` (the default: it holds data and contributes its partial aggregates)
    or ``compute`` (a compute-only party: it holds no data, contributes zero partials and
    only takes part in the MPC, so that two data holders can have a third party).
    """

    name: str
    host: str
    port: int
    role: str = "data"


@dataclass(frozen=True)
class Tls:
    """Paths of this party's certificate, key and the consortium CA."""

    cert: Path
    key: Path
    ca: Path
    crl: Path | None = None  # the CA's revocation list, checked on every connection (_crl)


@dataclass(frozen=True)
class Policy:
    """What this party allows: lifetime budget, per-job cap, count floor, exact mode, analysts."""

    budget_epsilon: Fraction
    budget_delta: Fraction
    max_epsilon_per_job: Fraction | None
    min_count: int
    allow_exact: bool
    analysts: tuple[tuple[str, Path], ...]
    allow_two_party: bool = False  # jobs with exactly 2 parties (threshold 0) need every party's opt-in
    #: agreements, groups, officers, approval rules, revocations (jointstats.consortium.agreements)
    governance: Governance = Governance()

    @property
    def budget(self) -> "PrivacyBudget":
        """The lifetime budget per dataset as a typed :class:`~jointstats.PrivacyBudget`."""
        from jointstats.plan.accounting import PrivacyBudget
        return PrivacyBudget(self.budget_epsilon, min(self.budget_delta, Fraction(1)))

    def analyst_key(self, name: str) -> Path | None:
        """Public key path of analyst ``name``, or None if not listed (or listed in
        ``policy.revoked``)."""
        if name in self.governance.revoked:
            return None
        return dict(self.analysts).get(name)

    def public(self) -> dict:
        """The policy as published to analysts (no paths)."""
        return {
            "budget": {"epsilon": float(self.budget_epsilon), "delta": float(self.budget_delta)},
            "max_epsilon_per_job": None if self.max_epsilon_per_job is None else float(self.max_epsilon_per_job),
            "min_count": self.min_count,
            "allow_exact": self.allow_exact,
            "allow_two_party": self.allow_two_party,
            "analysts": [name for name, _ in self.analysts if name not in self.governance.revoked],
            "officers": [name for name, _ in self.governance.officers
                         if name not in self.governance.revoked],
            "agreements_required": self.governance.enabled,
        }


@dataclass(frozen=True)
class DatasetMeta:
    """A dataset entry's governance fields: the subject id column for consent withdrawal, the
    withdrawal list file (default ``<state>.withdrawals/<dataset>.txt``) and a description."""

    subject_id: str | None = None
    withdrawals: Path | None = None
    description: str = ""
    #: public column metadata for the catalog (``schema:`` as in a spec: type, bounds, levels)
    schema: tuple = ()
    #: whether release reports carry a keyed fingerprint of the data (``fingerprint: false``)
    fingerprint: bool = True


@dataclass(frozen=True)
class PartyConfig:
    """A validated party configuration."""

    party: str
    peers: tuple[Peer, ...]
    tls: Tls | None
    api_host: str
    api_port: int
    datasets: tuple[tuple[str, str], ...]
    policy: Policy
    state: Path
    path: Path
    #: per dataset, the entry's fields other than ``source`` (query, password_file, spark, format)
    dataset_fields: tuple[tuple[str, str], ...] = ()  # (dataset, JSON of those fields)
    #: per dataset, its governance fields (subject_id, withdrawals, description)
    dataset_meta: tuple[tuple[str, DatasetMeta], ...] = ()

    def dataset_governance(self, dataset: str) -> DatasetMeta:
        """The dataset's governance fields (all empty if it has none)."""
        return dict(self.dataset_meta).get(dataset, DatasetMeta())

    #: linked (vertical) datasets: the schema columns this party holds, as declared
    dataset_columns: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def held_columns(self, dataset: str) -> tuple[str, ...] | None:
        """The schema columns this party declares it holds of ``dataset`` (``columns:`` of its
        dataset entry, for linked jobs), or None if it declares none."""
        return dict(self.dataset_columns).get(dataset)

    def dataset_options(self, dataset: str) -> dict:
        """The dataset entry's fields other than ``source`` (see jointstats.engine.sql_sources)."""
        return json.loads(dict(self.dataset_fields).get(dataset, "{}"))

    @property
    def index(self) -> int:
        """This party's MPC index: its position in ``mpc.parties``."""
        return [p.name for p in self.peers].index(self.party)

    @property
    def role(self) -> str:
        """This party's role, from its own entry in ``mpc.parties``: ``data`` or ``compute``."""
        return self.peers[self.index].role

    @property
    def compute_only(self) -> bool:
        """True for a compute-only party: it holds no data and never opens a data source."""
        return self.role == "compute"

    @property
    def base_dir(self) -> Path:
        """Directory that relative paths in this config are relative to."""
        return self.path.parent

    def dataset_source(self, dataset: str) -> str:
        """The source string of ``dataset``; ConfigError naming the party if not offered."""
        if self.compute_only:
            raise ConfigError(f"party {self.party!r} is compute-only (mpc.parties role: compute) "
                              f"and holds no data")
        sources = dict(self.datasets)
        if dataset not in sources:
            offered = ", ".join(sorted(sources)) or "none"
            raise ConfigError(f"party {self.party!r} does not offer dataset {dataset!r} (offers: {offered})")
        return sources[dataset]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); host names other than
    ``localhost`` are not resolved (a name can point anywhere), so they are not loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(path: Path, field: str, message: str) -> ConfigError:
    return ConfigError(clip_error(f"{path.name}: {field}: {message}"))


def _address_key(host: str, port: int) -> tuple[str, int]:
    """What makes two MPC addresses the same: case-insensitive host names, one spelling per
    IP address, localhost as 127.0.0.1."""
    host = host.strip("[]").lower()
    if host == "localhost":
        host = "127.0.0.1"
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    return host, port


def _text(value: Any, path: Path, field: str, what: str) -> str:
    """A non-empty one-line string of at most 128 characters (names and hosts)."""
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable() \
            or value != value.strip():
        raise _fail(path, field, f"expected {what} (1-128 printable characters, no surrounding "
                                 f"spaces), found {shorten(value)}")
    return value


def _num(value: Any, path: Path, field: str, positive: bool = False) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise _fail(path, field, f"expected a number, found {value!r}")
    frac = Fraction(repr(value)) if isinstance(value, float) else Fraction(value)
    if frac < 0 or (positive and frac == 0):
        raise _fail(path, field, f"expected a {'positive' if positive else 'non-negative'} number, found {value!r}")
    return frac


def parse_party_config(data: Any, path: Path) -> PartyConfig:
    """Validate already-loaded YAML ``data`` of the config at ``path``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: expected a YAML mapping")
    allowed = {"party", "mpc", "api", "datasets", "policy", "state"}
    for key in data:
        if key not in allowed:
            raise _fail(path, key, f"unknown field{did_you_mean(key, allowed)}; expected one of "
                                   f"{', '.join(sorted(allowed))}")
    base = path.parent
    party = data.get("party")
    if not isinstance(party, str) or not party:
        raise _fail(path, "party", "expected this party's name")
    mpc = data.get("mpc")
    if not isinstance(mpc, dict) or not isinstance(mpc.get("parties"), list):
        raise _fail(path, "mpc.parties", "expected a list of {name, host, port}")
    peers = []
    addresses: dict[tuple[str, int], str] = {}
    for i, entry in enumerate(mpc["parties"]):
        field = f"mpc.parties[{i}]"
        if not isinstance(entry, dict) or not {"name", "host", "port"} <= set(entry):
            raise _fail(path, field, "expected {name, host, port}")
        name = _text(entry["name"], path, f"{field}.name", "a party name")
        host = _text(entry["host"], path, f"{field}.host", "a host name or IP address")
        port = entry["port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise _fail(path, f"{field}.port", f"expected a TCP port from 1 to 65535, found {shorten(port)}")
        if name in [p.name for p in peers]:
            raise _fail(path, f"{field}.name", f"duplicate party {name!r}")
        address = _address_key(host, port)
        if address in addresses:
            raise _fail(path, f"{field}.port", f"party {name!r} has the same address {host}:{port} "
                                               f"as party {addresses[address]!r}; each party needs "
                                               f"its own host:port")
        addresses[address] = name
        role = entry.get("role", "data")
        if role not in ("data", "compute"):
            raise _fail(path, f"{field}.role", f"expected data or compute, found {shorten(role)}")
        peers.append(Peer(name, host, port, role))
    if len(peers) < 2:
        raise _fail(path, "mpc.parties", f"expected at least 2 parties, found {len(peers)}")
    if party not in [p.name for p in peers]:
        raise _fail(path, "party", f"{shorten(party)} is not in mpc.parties")
    if all(p.role == "compute" for p in peers):
        raise _fail(path, "mpc.parties", "every party is compute-only (role: compute); at least one must hold data")
    tls = None
    if mpc.get("tls") is not None:
        t = mpc["tls"]
        if not isinstance(t, dict) or not {"cert", "key", "ca"} <= set(t):
            raise _fail(path, "mpc.tls", "expected {cert, key, ca}")
        tls = Tls(*(base / str(t[k]) for k in ("cert", "key", "ca")),
                  crl=None if t.get("crl") is None else base / str(t["crl"]))
    else:
        # without TLS a peer is not authenticated and the MPC ports are open to whoever can
        # reach them: only a consortium on one machine's loopback may go without it
        for peer in peers:
            if not is_loopback(peer.host):
                raise _fail(path, "mpc.tls", f"required: party {peer.name!r} is not on loopback ({peer.host})")
    api = data.get("api") or {}
    if not isinstance(api, dict):
        raise _fail(path, "api", "expected {host, port}")
    api_port = api.get("port", 8700)
    if isinstance(api_port, bool) or not isinstance(api_port, int) or not 0 <= api_port < 65536:
        raise _fail(path, "api.port", f"expected a TCP port, found {api_port!r}")
    datasets_in = data.get("datasets") or {}
    if not isinstance(datasets_in, dict):
        raise _fail(path, "datasets", "expected a mapping of dataset name to {source}")
    datasets = []
    dataset_fields = []
    dataset_meta: list[tuple[str, DatasetMeta]] = []
    dataset_columns = []
    for name, entry in datasets_in.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
            raise _fail(path, f"datasets.{name}.source", "expected a source path or sqlite:/// URL")
        datasets.append((str(name), entry["source"]))
        if "columns" in entry:  # linked data: the schema columns this party holds
            held = entry["columns"]
            if (not isinstance(held, list) or len(held) > 1000
                    or not all(isinstance(c, str) and 0 < len(c) <= 128 for c in held)
                    or len(set(held)) != len(held)):
                raise _fail(path, f"datasets.{name}.columns",
                            "expected a list of distinct column names (at most 1000)")
            dataset_columns.append((str(name), tuple(held)))
        extra = {k: entry[k] for k in ("query", "password_file", "format", "spark") if k in entry}
        for key, value in extra.items():
            if key != "spark" and not isinstance(value, str):
                raise _fail(path, f"datasets.{name}.{key}", "expected a string")
            if key == "spark" and not isinstance(value, dict):
                raise _fail(path, f"datasets.{name}.spark", "expected {master, conf}")
        if extra:
            dataset_fields.append((str(name), json.dumps(extra, sort_keys=True, default=str)))
        meta = _dataset_meta(entry, str(name), path)
        if meta is not None:
            dataset_meta.append((str(name), meta))
    # The privacy ledger is kept per dataset: two names for the same data would give the same
    # people two budgets. Refuse the same source (and query) offered under two names.
    seen: dict[tuple, str] = {}
    fields = dict(dataset_fields)
    for name, source in datasets:
        local = "://" not in source and not source.startswith("spark:")
        where = str((base / source).resolve()) if local else source.strip()
        key = (where, fields.get(name, ""))
        if key in seen:
            raise _fail(path, f"datasets.{name}", f"reads the same data as datasets.{seen[key]}: one "
                                                  "dataset per set of people (each has its own budget)")
        seen[key] = name
    own_role = next(p.role for p in peers if p.name == party)
    if own_role == "compute" and datasets:
        raise _fail(path, "datasets", f"party {party!r} is compute-only (its mpc.parties entry has "
                                      "role: compute) and holds no data; remove its datasets")
    pol = data.get("policy") or {}
    if not isinstance(pol, dict):
        raise _fail(path, "policy", "expected a mapping")
    budget = pol.get("budget") or {}
    if not isinstance(budget, dict):
        raise _fail(path, "policy.budget", "expected {epsilon, delta}")
    budget_eps = _num(budget.get("epsilon", 0), path, "policy.budget.epsilon")
    budget_delta = _num(budget.get("delta", 0), path, "policy.budget.delta")
    max_eps = pol.get("max_epsilon_per_job")
    max_eps = None if max_eps is None else _num(max_eps, path, "policy.max_epsilon_per_job", positive=True)
    min_count = pol.get("min_count", 0)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 0:
        raise _fail(path, "policy.min_count", f"expected a non-negative integer, found {min_count!r}")
    allow_exact = pol.get("allow_exact", False)
    if not isinstance(allow_exact, bool):
        raise _fail(path, "policy.allow_exact", f"expected true or false, found {allow_exact!r}")
    analysts_in = pol.get("analysts") or {}
    if not isinstance(analysts_in, dict):
        raise _fail(path, "policy.analysts", "expected a mapping of analyst name to public key file")
    analysts = tuple((str(k), base / str(v)) for k, v in analysts_in.items())
    allow_two_party = pol.get("allow_two_party", False)
    if not isinstance(allow_two_party, bool):
        raise _fail(path, "policy.allow_two_party", f"expected true or false, found {allow_two_party!r}")
    governance = parse_governance(pol, path, tuple(n for n, _ in datasets), (budget_eps, budget_delta),
                                  tuple(n for n, _ in analysts))
    policy = Policy(budget_eps, budget_delta, max_eps, min_count, allow_exact, analysts, allow_two_party,
                    governance)
    state = base / str(data.get("state", f"state/{party}.sqlite"))
    dataset_meta = [(n, m if m.withdrawals is not None or m.subject_id is None else
                     DatasetMeta(m.subject_id, state.with_name(state.stem + ".withdrawals") / f"{n}.txt",
                                 m.description, m.schema, m.fingerprint)) for n, m in dataset_meta]
    return PartyConfig(party, tuple(peers), tls, str(api.get("host", "127.0.0.1")), api_port,
                       tuple(datasets), policy, state, path, tuple(dataset_fields), tuple(dataset_meta),
                       tuple(dataset_columns))


def _dataset_meta(entry: dict, name: str, path: Path) -> DatasetMeta | None:
    """The governance fields of one ``datasets`` entry (None if it has none)."""
    if not any(k in entry for k in ("subject_id", "withdrawals", "description", "schema", "fingerprint")):
        return None
    subject = entry.get("subject_id")
    if subject is not None and (not isinstance(subject, str) or not subject or len(subject) > 128):
        raise _fail(path, f"datasets.{name}.subject_id", "expected the name of the column holding "
                                                         "data subjects' identifiers")
    source = entry["source"]
    if subject is not None and ("://" in source and not source.startswith("sqlite:")
                                or source.startswith("spark:")):
        raise _fail(path, f"datasets.{name}.subject_id", "consent withdrawal lists are supported for "
                                                         "CSV, Parquet and SQLite sources, not for "
                                                         "engine sources (PostgreSQL, DuckDB, Spark): "
                                                         "exclude withdrawn subjects in the table or "
                                                         "query itself")
    withdrawals = entry.get("withdrawals")
    if withdrawals is not None and (subject is None or not isinstance(withdrawals, str)):
        raise _fail(path, f"datasets.{name}.withdrawals", "expected a file path, with subject_id set")
    description = entry.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        raise _fail(path, f"datasets.{name}.description", "expected text of at most 2000 characters")
    schema = []
    if entry.get("schema") is not None:
        from jointstats.errors import SpecError
        from jointstats.plan.spec import _parse_column
        if not isinstance(entry["schema"], dict):
            raise _fail(path, f"datasets.{name}.schema", "expected a mapping of column to {type, bounds|levels}")
        for col, spec in entry["schema"].items():
            try:
                schema.append(_parse_column(str(col), spec, f"datasets.{name}.schema.{col}"))
            except SpecError as exc:
                raise ConfigError(clip_error(f"{path.name}: {exc}")) from None
    if not isinstance(entry.get("fingerprint", True), bool):
        raise _fail(path, f"datasets.{name}.fingerprint", "expected true or false")
    return DatasetMeta(subject, None if withdrawals is None else path.parent / withdrawals, description,
                       tuple(schema), entry.get("fingerprint", True))


def load_party_config(path: str | Path) -> PartyConfig:
    """Load and validate a party config file."""
    path = Path(path).resolve()
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read party config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        # duplicate keys, aliases, nesting too deep, unreadable values: one line naming the line
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if not problem.startswith("not valid YAML"):
            problem = f"not valid YAML ({problem})"
        raise ConfigError(clip_error(f"{path.name}:{where} {problem}")) from None
    return parse_party_config(data, path)


def check_consortium(configs: list[PartyConfig]) -> list[PartyConfig]:
    """Check that the configs describe one consortium, each party once; return them in index order."""
    if not configs:
        raise ConfigError("no party configs given")
    first = configs[0]
    for cfg in configs[1:]:
        if cfg.peers != first.peers:
            raise ConfigError(f"party {cfg.party!r}: mpc.parties differs from that of {first.party!r}; "
                              "every node must list the same parties in the same order")
    by_name = {}
    for cfg in configs:
        if cfg.party in by_name:
            raise ConfigError(f"party {cfg.party!r} is given twice")
        by_name[cfg.party] = cfg
    missing = [p.name for p in first.peers if p.name not in by_name]
    if missing:
        raise ConfigError(f"no config given for part{'ies' if len(missing) > 1 else 'y'} "
                          f"{', '.join(map(repr, missing))} listed in mpc.parties")
    return [by_name[p.name] for p in first.peers]
