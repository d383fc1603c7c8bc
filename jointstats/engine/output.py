"""The output layer: what is added to the secret results before they are revealed.

Exact mode reveals the statistic itself (``_secure``). DP mode (``_dp``) adds noise
sampled inside the MPC to the secret partial aggregates, suppresses small crosstab
cells inside the MPC and reveals only noisy values; everything after that is
post-processing in the clear.
"""
from __future__ import annotations

from jointstats.plan.sealed import Plan, StatPlan
from jointstats.plan.spec import Spec


def add_noise_plans(spec: Spec, plan: Plan) -> Plan:
    """The plan with each statistic's noise plan filled in (unchanged in exact mode)."""
    if spec.exact:
        return plan
    from jointstats.engine.dp import add_noise_plans as dp_plans
    return dp_plans(spec, plan)


async def secure_statistic(rt, stat: StatPlan, partial: list[int], min_count: int | None) -> dict:
    """Secure step plus output step of one statistic; returns its contract result entry."""
    if stat.noise is None:
        from jointstats.engine.secure import exact_statistic
        return await exact_statistic(rt, stat, partial, min_count)
    from jointstats.engine.dp import dp_statistic
    return await dp_statistic(rt, stat, partial, min_count)


def privacy_block(spec: Spec, plan: Plan) -> dict | None:
    """The result's ``privacy`` object: null in exact mode."""
    if spec.exact:
        return None
    return plan.privacy
