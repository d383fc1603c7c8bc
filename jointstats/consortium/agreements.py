"""Data-use agreements, analyst groups, compliance officers and approval rules of one party.

A party's ``policy`` may hold **agreements** (inline, or in a YAML file named by
``policy.agreements_file``): each covers one dataset for some analysts (or analyst groups),
purposes, columns, statistic kinds and modes, a validity period and its own privacy budget,
a sub-budget of the dataset's lifetime budget spent in the same ledger (``_state``). Once a
party lists any agreement, every job needs one: a job runs at this party only under the
first agreement (in config order) that covers its dataset, analyst, purpose, date, mode,
kinds and columns, and whose sub-budget has room (checked when the budget is reserved). A
party with no agreements keeps the behaviour of a policy without them.

Everything here reads only the spec, the config and the calendar (never data), so a refusal
is precise in both modes: one line naming the party, the agreement and the reason.
See docs/governance.md.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointstats.errors import ConfigError, PolicyError
from jointstats.plan.spec import clip_error, shorten

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.consortium.config import PartyConfig
    from jointstats.plan.spec import Spec

__all__ = ["Agreement", "ApprovalRule", "Governance", "AgreementVerdict", "parse_governance",
           "agreement_verdicts", "select_agreement", "approval_reasons", "explain", "today"]

KINDS = ("count", "sum", "mean", "variance", "correlation", "crosstab", "histogram", "regression")
MODES = ("dp", "exact")
#: Default seconds a job waiting for an officer's approval may wait before it expires.
DEFAULT_APPROVAL_EXPIRY = 7 * 24 * 3600.0


@dataclass(frozen=True)
class ApprovalRule:
    """When a job must wait for a compliance officer: above an epsilon, in exact mode, always."""

    above_epsilon: Fraction | None = None
    exact: bool = False
    always: bool = False

    def reasons(self, spec: "Spec") -> list[str]:
        """Why ``spec`` needs approval under this rule (empty: it does not)."""
        out = []
        if self.always:
            out.append("every job needs approval")
        if spec.privacy is None and self.exact:
            out.append("exact mode")
        if (spec.privacy is not None and self.above_epsilon is not None
                and spec.privacy.epsilon > self.above_epsilon):
            out.append(f"epsilon {float(spec.privacy.epsilon):g} above {float(self.above_epsilon):g}")
        return out


@dataclass(frozen=True)
class Agreement:
    """One data-use agreement of a party (docs/governance.md)."""

    id: str
    dataset: str
    analysts: tuple[str, ...]        # analyst names or group names
    purposes: tuple[str, ...]
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    modes: tuple[str, ...]
    budget_epsilon: Fraction
    budget_delta: Fraction
    valid_from: _dt.date | None
    valid_until: _dt.date | None
    approval: ApprovalRule = ApprovalRule()
    description: str = ""

    def public(self) -> dict:
        """The agreement as shown to its analysts (catalog, validate)."""
        return {"id": self.id, "dataset": self.dataset, "purposes": list(self.purposes),
                "columns": list(self.columns), "kinds": list(self.kinds), "modes": list(self.modes),
                "budget": {"epsilon": float(self.budget_epsilon), "delta": float(self.budget_delta)},
                "valid": {"from": None if self.valid_from is None else self.valid_from.isoformat(),
                          "until": None if self.valid_until is None else self.valid_until.isoformat()},
                "description": self.description}


@dataclass(frozen=True)
class Governance:
    """The governance part of a party's policy: agreements, groups, officers, approval rules."""

    agreements: tuple[Agreement, ...] = ()
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    officers: tuple[tuple[str, Path], ...] = ()
    approval: ApprovalRule = ApprovalRule()
    approval_agreements: tuple[str, ...] = ()   # agreements whose every job needs approval
    approval_expiry: float = DEFAULT_APPROVAL_EXPIRY
    revoked: tuple[str, ...] = ()               # analyst/officer names refused whatever else says

    @property
    def enabled(self) -> bool:
        """Whether this party requires an agreement for every job."""
        return bool(self.agreements)

    def officer_key(self, name: str) -> Path | None:
        """Public key of officer ``name`` (None if not listed or revoked)."""
        if name in self.revoked:
            return None
        return dict(self.officers).get(name)

    def members(self, who: str) -> tuple[str, ...]:
        """The analysts ``who`` stands for: a group's members, or ``who`` itself."""
        return dict(self.groups).get(who, (who,))

    def covers_analyst(self, agreement: Agreement, analyst: str) -> bool:
        """Whether ``agreement`` lists ``analyst`` by name or through a group."""
        return any(analyst in self.members(who) for who in agreement.analysts)


# ----------------------------------------------------------------------------- parsing

def _fail(path: Path, field: str, message: str) -> ConfigError:
    return ConfigError(clip_error(f"{path.name}: {field}: {message}"))


def _name(value: Any, path: Path, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable() \
            or value != value.strip():
        raise _fail(path, field, f"expected a name (1-128 printable characters), found {shorten(value)}")
    return value


def _names(value: Any, path: Path, field: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, field, "expected a non-empty list")
    out = []
    for i, v in enumerate(value):
        v = _name(v, path, f"{field}[{i}]")
        if allowed is not None and v not in allowed:
            raise _fail(path, f"{field}[{i}]", f"expected one of {', '.join(allowed)}, found {v!r}")
        if v in out:
            raise _fail(path, f"{field}[{i}]", f"{v!r} listed twice")
        out.append(v)
    return tuple(out)


def _frac(value: Any, path: Path, field: str) -> Fraction:
    if isinstance(value, Fraction) and value >= 0:  # a default taken from the lifetime budget
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)) or value < 0:
        raise _fail(path, field, f"expected a non-negative number, found {shorten(value)}")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def _date(value: Any, path: Path, field: str) -> _dt.date | None:
    if value is None:
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise _fail(path, field, f"expected a date YYYY-MM-DD, found {shorten(value)}")


def _approval(value: Any, path: Path, field: str) -> ApprovalRule:
    if value is None:
        return ApprovalRule()
    if not isinstance(value, dict):
        raise _fail(path, field, "expected {above_epsilon, exact, always}")
    for key in value:
        if key not in ("above_epsilon", "exact", "always", "agreements", "expires_after"):
            raise _fail(path, f"{field}.{key}", "unknown field; expected above_epsilon, exact, always"
                                                + (", agreements, expires_after" if field == "policy.approval" else ""))
    for key in ("exact", "always"):
        if not isinstance(value.get(key, False), bool):
            raise _fail(path, f"{field}.{key}", f"expected true or false, found {shorten(value[key])}")
    above = value.get("above_epsilon")
    return ApprovalRule(None if above is None else _frac(above, path, f"{field}.above_epsilon"),
                        value.get("exact", False), value.get("always", False))


_AGREEMENT_KEYS = {"id", "dataset", "analysts", "purposes", "columns", "kinds", "modes", "budget",
                   "valid", "approval", "description"}


def _agreement(entry: Any, path: Path, field: str, datasets: tuple[str, ...],
               budget: tuple[Fraction, Fraction]) -> Agreement:
    if not isinstance(entry, dict):
        raise _fail(path, field, "expected a mapping with id, dataset, analysts, purposes, columns")
    for key in entry:
        if key not in _AGREEMENT_KEYS:
            raise _fail(path, f"{field}.{key}", f"unknown field; expected one of {', '.join(sorted(_AGREEMENT_KEYS))}")
    for key in ("id", "dataset", "analysts", "purposes", "columns"):
        if key not in entry:
            raise _fail(path, f"{field}.{key}", "required")
    aid = _name(entry["id"], path, f"{field}.id")
    dataset = _name(entry["dataset"], path, f"{field}.dataset")
    if dataset not in datasets:
        raise _fail(path, f"{field}.dataset", f"{dataset!r} is not one of this party's datasets "
                                              f"({', '.join(datasets) or 'none'})")
    b = entry.get("budget") or {}
    if not isinstance(b, dict) or set(b) - {"epsilon", "delta"}:
        raise _fail(path, f"{field}.budget", "expected {epsilon, delta}")
    b_eps = _frac(b.get("epsilon", budget[0]), path, f"{field}.budget.epsilon")
    b_dlt = _frac(b.get("delta", budget[1]), path, f"{field}.budget.delta")
    if b_eps > budget[0] or b_dlt > budget[1]:
        raise _fail(path, f"{field}.budget", f"(epsilon {float(b_eps):g}, delta {float(b_dlt):g}) "
                                             f"exceeds the dataset's lifetime budget (epsilon "
                                             f"{float(budget[0]):g}, delta {float(budget[1]):g})")
    valid = entry.get("valid") or {}
    if not isinstance(valid, dict) or set(valid) - {"from", "until"}:
        raise _fail(path, f"{field}.valid", "expected {from: YYYY-MM-DD, until: YYYY-MM-DD}")
    start = _date(valid.get("from"), path, f"{field}.valid.from")
    until = _date(valid.get("until"), path, f"{field}.valid.until")
    if start and until and until < start:
        raise _fail(path, f"{field}.valid", f"until {until} is before from {start}")
    description = entry.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        raise _fail(path, f"{field}.description", "expected text of at most 2000 characters")
    return Agreement(
        aid, dataset, _names(entry["analysts"], path, f"{field}.analysts"),
        _names(entry["purposes"], path, f"{field}.purposes"),
        _names(entry["columns"], path, f"{field}.columns"),
        _names(entry.get("kinds", list(KINDS)), path, f"{field}.kinds", KINDS),
        _names(entry.get("modes", ["dp"]), path, f"{field}.modes", MODES),
        b_eps, b_dlt, start, until, _approval(entry.get("approval"), path, f"{field}.approval"),
        description)


def parse_governance(pol: dict, path: Path, datasets: tuple[str, ...],
                     budget: tuple[Fraction, Fraction], analysts: tuple[str, ...]) -> Governance:
    """The governance fields of a ``policy`` mapping (agreements, agreements_file, groups,
    officers, approval, revoked), validated; ConfigError naming the file and field."""
    from jointstats.plan.spec import yaml_load
    base = path.parent
    entries: list[tuple[Any, Path, str]] = []
    inline = pol.get("agreements")
    if inline is not None:
        if not isinstance(inline, list):
            raise _fail(path, "policy.agreements", "expected a list of agreements")
        entries += [(e, path, f"policy.agreements[{i}]") for i, e in enumerate(inline)]
    if pol.get("agreements_file") is not None:
        ref = pol["agreements_file"]
        if not isinstance(ref, str):
            raise _fail(path, "policy.agreements_file", "expected a path to a YAML file")
        fpath = (base / ref).resolve()
        try:
            data = yaml_load(fpath.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _fail(path, "policy.agreements_file", f"cannot read {fpath}: {exc.strerror}") from None
        except Exception as exc:  # YAML errors, not UTF-8
            raise _fail(path, "policy.agreements_file", f"{fpath.name} is not valid YAML "
                                                        f"({type(exc).__name__})") from None
        listed = data.get("agreements") if isinstance(data, dict) else data
        if not isinstance(listed, list):
            raise _fail(fpath, "agreements", "expected a list of agreements")
        entries += [(e, fpath, f"agreements[{i}]") for i, e in enumerate(listed)]
    agreements: list[Agreement] = []
    for entry, where, field in entries:
        a = _agreement(entry, where, field, datasets, budget)
        if any(x.id == a.id for x in agreements):
            raise _fail(where, f"{field}.id", f"agreement {a.id!r} is defined twice")
        agreements.append(a)
    groups_in = pol.get("groups") or {}
    if not isinstance(groups_in, dict):
        raise _fail(path, "policy.groups", "expected a mapping of group name to a list of analysts")
    groups = []
    for g, members in groups_in.items():
        g = _name(g, path, "policy.groups")
        if g in analysts:
            raise _fail(path, f"policy.groups.{g}", "a group cannot have an analyst's name")
        groups.append((g, _names(members, path, f"policy.groups.{g}")))
    officers_in = pol.get("officers") or {}
    if not isinstance(officers_in, dict):
        raise _fail(path, "policy.officers", "expected a mapping of officer name to public key file")
    officers = tuple((_name(k, path, "policy.officers"), base / str(v)) for k, v in officers_in.items())
    approval_in = pol.get("approval")
    rule = _approval(approval_in, path, "policy.approval")
    named: tuple[str, ...] = ()
    expiry = DEFAULT_APPROVAL_EXPIRY
    if isinstance(approval_in, dict):
        if approval_in.get("agreements") is not None:
            named = _names(approval_in["agreements"], path, "policy.approval.agreements",
                           tuple(a.id for a in agreements))
        if approval_in.get("expires_after") is not None:
            expiry = float(_frac(approval_in["expires_after"], path, "policy.approval.expires_after"))
            if expiry <= 0:
                raise _fail(path, "policy.approval.expires_after", "expected a positive number of seconds")
    revoked_in = pol.get("revoked") or []
    revoked = _names(revoked_in, path, "policy.revoked") if revoked_in else ()
    gov = Governance(tuple(agreements), tuple(groups), officers, rule, named, expiry, revoked)
    needs_officer = (rule != ApprovalRule() or named
                     or any(a.approval != ApprovalRule() for a in agreements))
    if needs_officer and not officers:
        raise _fail(path, "policy.officers", "approval rules are set but no compliance officer "
                                             "is listed to approve jobs")
    return gov


# ----------------------------------------------------------------------------- matching

def today() -> _dt.date:
    """Today's date in UTC (agreements' validity periods are whole UTC days)."""
    return _dt.datetime.now(_dt.timezone.utc).date()


@dataclass(frozen=True)
class AgreementVerdict:
    """Whether one agreement covers a job: ``reason`` is None when it does."""

    agreement: Agreement
    reason: str | None


def _reason(gov: Governance, a: Agreement, spec: "Spec", analyst: str, day: _dt.date) -> str | None:
    """Why agreement ``a`` does not cover the job (None: it does, budget aside)."""
    if a.dataset != spec.dataset:
        return f"covers dataset {a.dataset!r}, not {spec.dataset!r}"
    wanted = getattr(spec, "agreement", None)
    if wanted is not None and a.id != wanted:
        return f"the spec asks for agreement {wanted!r}"
    if analyst in gov.revoked:
        return f"analyst {analyst!r} is revoked"
    if not gov.covers_analyst(a, analyst):
        return f"analyst {analyst!r} is not among its analysts"
    purpose = getattr(spec, "purpose", None)
    if purpose is None:
        return "the spec names no purpose (add purpose: to the spec)"
    if purpose not in a.purposes:
        return f"purpose {purpose!r} is not among its purposes ({', '.join(a.purposes)})"
    if a.valid_from is not None and day < a.valid_from:
        return f"not valid before {a.valid_from.isoformat()} (today is {day.isoformat()})"
    if a.valid_until is not None and day > a.valid_until:
        return f"expired on {a.valid_until.isoformat()} (today is {day.isoformat()})"
    mode = "exact" if spec.privacy is None else "dp"
    if mode not in a.modes:
        return f"{mode} mode is not allowed (modes: {', '.join(a.modes)})"
    for stat in spec.statistics:
        if stat.kind not in a.kinds:
            return f"statistic {stat.name!r} is a {stat.kind}, not among its kinds ({', '.join(a.kinds)})"
    for col in spec.schema:  # every schema column is read by the party: minimisation covers all
        if col.name not in a.columns:
            return f"column {col.name!r} is not among the columns it releases"
    return None


def agreement_verdicts(config: "PartyConfig", spec: "Spec", analyst: str,
                       day: _dt.date | None = None) -> list[AgreementVerdict]:
    """Every agreement of ``config`` on the spec's dataset, with why it does not cover the job."""
    gov = config.policy.governance
    day = day or today()
    return [AgreementVerdict(a, _reason(gov, a, spec, analyst, day))
            for a in gov.agreements if a.dataset == spec.dataset]


def select_agreement(config: "PartyConfig", spec: "Spec", analyst: str,
                     day: _dt.date | None = None) -> Agreement | None:
    """The agreement a job runs under at this party: the first that covers it; None when the
    party has no agreements at all. PolicyError (one line naming the party, each agreement
    and its reason) when none covers it."""
    gov = config.policy.governance
    wanted = getattr(spec, "agreement", None)
    if not gov.enabled:
        if wanted is not None:
            raise PolicyError(f"party {config.party!r} refuses: the spec asks for agreement "
                              f"{wanted!r} and this party holds no data-use agreements")
        return None
    verdicts = agreement_verdicts(config, spec, analyst, day)
    for v in verdicts:
        if v.reason is None:
            return v.agreement
    who = f"party {config.party!r} refuses"
    if not verdicts:
        raise PolicyError(f"{who}: no data-use agreement covers dataset {spec.dataset!r}")
    detail = "; ".join(f"agreement {v.agreement.id!r}: {v.reason}" for v in verdicts)
    raise PolicyError(clip_error(f"{who}: no data-use agreement covers the job: {detail}"))


def approval_reasons(config: "PartyConfig", spec: "Spec", agreement: Agreement | None) -> list[str]:
    """Why this party makes the job wait for an officer's approval (empty: it runs at once)."""
    gov = config.policy.governance
    reasons = gov.approval.reasons(spec)
    if agreement is not None:
        reasons += agreement.approval.reasons(spec)
        if agreement.id in gov.approval_agreements:
            reasons.append(f"agreement {agreement.id!r} needs approval")
    return list(dict.fromkeys(reasons))


def explain(config: "PartyConfig", spec: "Spec", analyst: str, day: _dt.date | None = None) -> str:
    """For ``jointstats validate``: which agreement of this party covers the job, or why none does."""
    gov = config.policy.governance
    if not gov.enabled:
        if getattr(spec, "agreement", None) is not None:
            return (f"party {config.party}: NOT covered: the spec asks for agreement "
                    f"{spec.agreement!r} and this party holds no data-use agreements")
        return f"party {config.party}: no data-use agreements configured (policy applies as is)"
    verdicts = agreement_verdicts(config, spec, analyst, day)
    chosen = next((v.agreement for v in verdicts if v.reason is None), None)
    if chosen is not None:
        wait = approval_reasons(config, spec, chosen)
        return (f"party {config.party}: covered by agreement {chosen.id!r} for analyst {analyst!r}"
                + (f"; waits for an officer's approval ({'; '.join(wait)})" if wait else ""))
    if not verdicts:
        return f"party {config.party}: NOT covered: no data-use agreement covers dataset {spec.dataset!r}"
    return (f"party {config.party}: NOT covered for analyst {analyst!r}: "
            + "; ".join(f"agreement {v.agreement.id!r}: {v.reason}" for v in verdicts))


# ----------------------------------------------------------------------------- admission

@dataclass(frozen=True)
class Admission:
    """What a node decides about an authenticated submission before queueing it."""

    agreement: Agreement | None
    approval_reasons: tuple[str, ...]   # non-empty: the job waits for an officer

    @property
    def waits(self) -> bool:
        return bool(self.approval_reasons)


def admit(config: "PartyConfig", state, spec: "Spec", plan, analyst: str) -> Admission:
    """A node's checks of a submission: policy (``policy.check_job``: agreement included), the
    dataset's remaining budget and the agreement's sub-budget (against the job's exact charge,
    as the worker will reserve it), and whether it needs an officer's approval.

    Raises PolicyError / BudgetError (one line naming the party, and the agreement); reads only
    the spec, the config and the ledger, never data."""
    from jointstats.plan.accounting import lifetime_spend
    from jointstats.errors import BudgetError
    from jointstats.consortium.policy import check_job
    agreement = check_job(config, spec, plan, analyst)
    pol = config.policy
    if spec.privacy is not None and not config.compute_only:
        charge = plan.charge
        usage = state.usage(spec.dataset, pol.budget_epsilon, pol.budget_delta)
        if not lifetime_spend(usage.held.totals.add(charge), pol.budget_epsilon,
                              pol.budget_delta).fits:
            raise BudgetError(f"party {config.party!r}: privacy budget of dataset "
                              f"{spec.dataset!r} exceeded: remaining epsilon "
                              f"{float(usage.held.remaining_epsilon):g}, delta "
                              f"{float(usage.held.remaining_delta):g}; the job asks "
                              f"epsilon {float(spec.privacy.epsilon):g}, delta "
                              f"{float(spec.privacy.delta):g}")
        if agreement is not None:
            a_use = state.usage(spec.dataset, agreement.budget_epsilon, agreement.budget_delta,
                                agreement=agreement.id)
            if not lifetime_spend(a_use.held.totals.add(charge), agreement.budget_epsilon,
                                  agreement.budget_delta).fits:
                raise BudgetError(f"party {config.party!r}: budget of data-use agreement "
                                  f"{agreement.id!r} exceeded: remaining epsilon "
                                  f"{float(a_use.held.remaining_epsilon):g}, delta "
                                  f"{float(a_use.held.remaining_delta):g}; the job asks "
                                  f"epsilon {float(spec.privacy.epsilon):g}")
    return Admission(agreement, tuple(approval_reasons(config, spec, agreement)))
