"""Each party's own policy checks, made before any data moves."""
from __future__ import annotations

from jointstats.consortium.agreements import Agreement, select_agreement
from jointstats.consortium.config import PartyConfig
from jointstats.errors import PolicyError
from jointstats.plan.sealed import Plan, StatPlan
from jointstats.plan.spec import Spec


def check_job(config: PartyConfig, spec: Spec, plan: Plan, analyst: str = "local") -> Agreement | None:
    """Raise PolicyError (naming this party and the field) if this party's policy refuses the job.

    Returns the data-use agreement the job runs under at this party (the first that covers
    dataset, ``analyst``, purpose, date, mode, kinds and columns: jointstats.consortium.agreements), or
    None when the party has no agreements. Its sub-budget is checked when the budget is
    reserved. ``analyst`` is ``local`` for jobs started with ``jointstats run``.

    A compute-only party (``role: compute``) offers no dataset and is charged no budget (it
    releases nothing of its own), so the dataset and lifetime-delta checks do not apply to it;
    the rest of its policy does (exact mode, per-job epsilon cap, min_count floor, 2 parties).
    """
    who = f"party {config.party!r} refuses"
    pol = config.policy
    if not config.compute_only:
        config.dataset_source(spec.dataset)  # ConfigError if the dataset is not offered
    if spec.exact:
        if not pol.allow_exact:
            raise PolicyError(f"{who} exact mode (its policy.allow_exact is false); "
                              "add a privacy block to the spec")
    else:
        asked, lifetime = spec.privacy.budget, pol.budget   # typed PrivacyBudget values
        if pol.max_epsilon_per_job is not None and asked.epsilon > pol.max_epsilon_per_job:
            raise PolicyError(f"{who}: privacy.epsilon {float(asked.epsilon):g} exceeds its "
                              f"policy.max_epsilon_per_job {float(pol.max_epsilon_per_job):g}")
        if not config.compute_only and asked.delta > lifetime.delta:
            raise PolicyError(f"{who}: privacy.delta {float(asked.delta):g} exceeds its "
                              f"lifetime delta budget {float(lifetime.delta):g}")
    for stat in spec.statistics:
        if stat.kind == "crosstab" and stat.min_count is not None and stat.min_count < pol.min_count:
            raise PolicyError(f"{who}: statistics.{stat.name}.min_count {stat.min_count} is below "
                              f"its policy floor {pol.min_count}")
    if len(plan.parties) == 2 and not pol.allow_two_party:
        # MPyC's threshold for 2 parties is 0: a share is the value itself
        raise PolicyError(f"{who} a 2-party job (its policy.allow_two_party is false): with 2 "
                          "parties each sees the other's partial aggregates and every intermediate value, DP "
                          "noise included; "
                          "add a compute-only third party (role: compute) or opt in")
    return select_agreement(config, spec, analyst)


def effective_min_count(stat: StatPlan, floors: list[int]) -> int | None:
    """A crosstab's min_count: the spec's, or (if unset) the highest floor of any party."""
    if stat.kind != "crosstab":
        return None
    if stat.min_count is not None:
        return max([stat.min_count] + floors)
    return max(floors) if floors else None
