"""The dataset catalog an analyst sees (``GET /catalog``) and the spec template made from it.

For each dataset a party offers, the catalog lists what the analyst's data-use agreements
cover: the columns (with the public type, bounds and levels the operator documented in the
dataset's ``schema:``), purposes, statistic kinds and modes, validity, the privacy level
(remaining budget for this analyst's agreement and the dataset, max epsilon per job,
min_count, whether exact mode is possible, approval rules) and a description. A party
without agreements shows every dataset with its documented schema. Never a data value:
only the config and the ledger are read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.ledger.state import NodeState
    from jointstats.consortium.config import PartyConfig

__all__ = ["catalog_for", "spec_template"]


def _column(col) -> dict:
    out: dict[str, Any] = {"type": col.type}
    if col.type == "categorical":
        out["levels"] = list(col.levels)
    else:
        lo, hi = col.bounds
        out["bounds"] = [int(lo) if col.type == "integer" else lo, int(hi) if col.type == "integer" else hi]
    return out


def _remaining(state: "NodeState", dataset: str, eps, delta, agreement: str | None = None) -> dict:
    use = state.usage(dataset, eps, delta, agreement=agreement)
    return {"epsilon": float(use.held.remaining_epsilon), "delta": float(use.held.remaining_delta)}


def catalog_for(config: "PartyConfig", state: "NodeState", analyst: str) -> dict:
    """The catalog of this party for ``analyst`` (a JSON-ready dict)."""
    from jointstats.consortium.agreements import today
    pol = config.policy
    gov = pol.governance
    datasets: dict[str, Any] = {}
    for name, _source in config.datasets:
        meta = config.dataset_governance(name)
        schema = {c.name: _column(c) for c in meta.schema}
        base = {"description": meta.description,
                "privacy": {"max_epsilon_per_job": None if pol.max_epsilon_per_job is None
                            else float(pol.max_epsilon_per_job),
                            "min_count": pol.min_count,
                            "dataset_remaining": _remaining(state, name, pol.budget_epsilon,
                                                            pol.budget_delta),
                            "approval": {"above_epsilon": None if gov.approval.above_epsilon is None
                                         else float(gov.approval.above_epsilon),
                                         "exact": gov.approval.exact, "always": gov.approval.always}},
                "consent_withdrawal": bool(meta.subject_id)}
        if not gov.enabled:
            datasets[name] = {**base, "columns": schema, "exact_possible": pol.allow_exact,
                              "agreements": []}
            continue
        covering = [a for a in gov.agreements if a.dataset == name and gov.covers_analyst(a, analyst)
                    and analyst not in gov.revoked]
        if not covering:
            continue  # a dataset no agreement of this analyst covers is not shown at all
        agreements = []
        for a in covering:
            day = today()
            valid = not ((a.valid_from and day < a.valid_from) or (a.valid_until and day > a.valid_until))
            agreements.append({**a.public(), "valid_today": valid,
                               "remaining": _remaining(state, name, a.budget_epsilon, a.budget_delta, a.id),
                               "approval": {"above_epsilon": None if a.approval.above_epsilon is None
                                            else float(a.approval.above_epsilon),
                                            "exact": a.approval.exact,
                                            "always": a.approval.always or a.id in gov.approval_agreements},
                               "exact_possible": pol.allow_exact and "exact" in a.modes})
        cols = {c for a in covering for c in a.columns}
        datasets[name] = {**base, "columns": {k: v for k, v in schema.items() if k in cols},
                          "undocumented_columns": sorted(cols - set(schema)),
                          "exact_possible": any(x["exact_possible"] for x in agreements),
                          "agreements": agreements}
    return {"party": config.party, "parties": [p.name for p in config.peers], "analyst": analyst,
            "agreements_required": gov.enabled, "datasets": datasets}


def spec_template(catalogs: list[dict], dataset: str) -> str:
    """A starting spec for ``dataset`` from every party's catalog: the columns every party
    documents and releases to this analyst, a purpose and kinds every party's first covering
    agreement allows, and an epsilon within every party's per-job cap."""
    from jointstats.errors import ConfigError
    entries = []
    for cat in catalogs:
        entry = cat.get("datasets", {}).get(dataset)
        if entry is None:
            raise ConfigError(f"party {cat.get('party')!r}: its catalog offers no dataset "
                              f"{dataset!r} to analyst {cat.get('analyst')!r}")
        entries.append(entry)
    common = None
    for e in entries:
        names = list(e["columns"])
        common = names if common is None else [c for c in common if c in names]
    if not common:
        raise ConfigError(f"dataset {dataset!r}: no documented column is released by every party")
    schema = {c: entries[0]["columns"][c] for c in common}
    purposes = None
    kinds = None
    for e in entries:
        if e["agreements"]:
            a = e["agreements"][0]
            purposes = a["purposes"] if purposes is None else [p for p in purposes if p in a["purposes"]]
            kinds = a["kinds"] if kinds is None else [k for k in kinds if k in a["kinds"]]
    caps = [e["privacy"]["max_epsilon_per_job"] for e in entries if e["privacy"]["max_epsilon_per_job"]]
    eps = min([1.0] + caps)
    stats: dict[str, Any] = {}
    allowed = kinds or ["count", "mean"]
    if "count" in allowed:
        stats["n"] = {"kind": "count"}
    numeric = [c for c, v in schema.items() if v["type"] != "categorical"]
    if numeric and "mean" in allowed:
        stats[f"mean_{numeric[0]}"] = {"kind": "mean", "column": numeric[0]}
    if not stats:
        stats["n"] = {"kind": allowed[0]} if allowed[0] == "count" else {"kind": "count"}
    spec: dict[str, Any] = {"name": f"{dataset}-study", "dataset": dataset}
    if purposes:
        spec["purpose"] = purposes[0]
    spec.update({"schema": schema, "privacy": {"epsilon": eps, "delta": 0}, "statistics": stats})
    header = (f"# starting spec for dataset {dataset!r} from the parties' catalogs; "
              f"allowed kinds: {', '.join(allowed)}\n")
    return header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)
