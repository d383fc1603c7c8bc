"""PrivacyBudget: the exact, typed privacy budget from spec to plan to ledger to result."""
from __future__ import annotations

from fractions import Fraction as F
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

import jointstats as js
from jointstats.plan.accounting import (JobCharge, LedgerTotals, PrivacyBudget, eps_from_rho_cks,
                                    job_charge, lifetime_spend, rho_from_eps_delta_cks)

fracs = st.fractions(min_value=0, max_value=100, max_denominator=10**6)
deltas = st.fractions(min_value=0, max_value=F(1, 2), max_denominator=10**9)
budgets = st.builds(PrivacyBudget, fracs, deltas)


def test_values_are_exact_and_validated():
    b = PrivacyBudget(0.1, 1e-5)
    assert b.epsilon == F(1, 10) and b.delta == F(1, 100000) and b.rho is None
    assert PrivacyBudget("1/3").epsilon == F(1, 3)
    for bad in [(-1, 0), (1, -1e-9), (1, 2), (True, 0), (float("nan"), 0)]:
        with pytest.raises((ValueError, TypeError)):
            PrivacyBudget(*bad)
    with pytest.raises(ValueError):
        PrivacyBudget(1, 0, -1)
    with pytest.raises(AttributeError):
        b.epsilon = F(2)  # frozen


@given(budgets, budgets, budgets)
@pytest.mark.slow
def test_composition_is_basic_composition(a, b, c):
    s = a + b
    assert s.epsilon == a.epsilon + b.epsilon and s.delta == min(a.delta + b.delta, 1)
    assert (a + b) + c == a + (b + c) and a + b == b + a
    assert a <= a + b and b <= a + b
    assert sum([a, b, c]) == a + b + c
    assert (a + b) - b == a if a.delta + b.delta <= 1 else True


@given(budgets, budgets)
@pytest.mark.slow
def test_fits_within_is_a_partial_order(a, b):
    assert (a <= b) == (a.epsilon <= b.epsilon and a.delta <= b.delta)
    assert (a <= b and b <= a) == (a == b)
    assert (a < b) == (a <= b and a != b) and (b >= a) == (a <= b)


def test_incomparable_budgets_and_subtraction():
    a, b = PrivacyBudget(1), PrivacyBudget(F(1, 2), F(1, 10**6))
    assert not a <= b and not b <= a
    with pytest.raises(ValueError, match="does not fit"):
        b - a
    assert PrivacyBudget(3, F(1, 10)) - PrivacyBudget(1) == PrivacyBudget(2, F(1, 10))


def test_rho_adds_when_both_are_zcdp():
    a = PrivacyBudget(1, F(1, 10**6), F(1, 100))
    b = PrivacyBudget(2, F(1, 10**6), F(1, 50))
    assert (a + b).rho == F(3, 100)
    assert (a + PrivacyBudget(1)).rho is None
    assert not PrivacyBudget(1, F(1, 10**6), F(1, 10)) <= PrivacyBudget(1, F(1, 10**6), F(1, 100))


def test_zcdp_conversions_use_the_cks_bounds():
    b = PrivacyBudget(1, F(1, 10**6))
    rho = b.to_rho()
    assert rho == rho_from_eps_delta_cks(1, F(1, 10**6))
    back = PrivacyBudget.from_rho(rho, F(1, 10**6))
    assert back.rho == rho and back.epsilon == eps_from_rho_cks(rho, F(1, 10**6))
    assert back.epsilon <= 1 + F(1, 10**6)  # rounding either way keeps the guarantee
    with pytest.raises(ValueError, match="pure"):
        PrivacyBudget(1).to_rho()
    assert PrivacyBudget(1).mechanism == "discrete_laplace" and b.mechanism == "discrete_gaussian"


def test_dict_round_trips():
    b = PrivacyBudget(F(1, 3), F(1, 10**6), F(1, 7))
    assert b.to_dict() == {"epsilon": "1/3", "delta": "1/1000000", "rho": "1/7"}
    assert PrivacyBudget.from_dict(b.to_dict()) == b
    assert PrivacyBudget.from_dict({"epsilon": 1.0}) == PrivacyBudget(1)
    assert b.to_floats()["rho"] == pytest.approx(1 / 7)
    assert str(PrivacyBudget(1, 1e-5)) == "(epsilon 1, delta 1e-05)"
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyBudget.from_dict({"delta": 0})


def test_charges_totals_and_the_lifetime_rule_speak_budgets():
    charge = job_charge(1, F(1, 10**6), 40)
    assert charge.budget == PrivacyBudget(1, F(1, 10**6), charge.rho)
    assert JobCharge.from_dict(charge.to_dict()).budget == charge.budget
    limit = PrivacyBudget(10, F(1, 10**5))
    totals = LedgerTotals.of([charge, job_charge(2, 0, 10)])
    rule = totals.spend(limit)
    assert rule == lifetime_spend(totals, 10, F(1, 10**5))
    assert rule.fits and rule.budget == limit
    assert rule.spent is not None and rule.spent <= limit and rule.spent.rho == charge.rho
    assert rule.remaining == PrivacyBudget(rule.remaining_epsilon, rule.remaining_delta)
    over = LedgerTotals.of([job_charge(9, 0, 1)] * 2).spend(limit)
    assert not over.fits and over.remaining == PrivacyBudget(0, over.remaining_delta)


def test_spec_policy_ledger_and_result_give_budgets(tmp_path):
    spec = js.parse_spec("dataset: d\nschema: {a: {type: real, bounds: [0, 1]}}\n"
                         "privacy: {epsilon: 0.5, delta: 1.0e-6}\nstatistics: {n: {kind: count}}\n")
    assert spec.privacy.budget == PrivacyBudget(F(1, 2), F(1, 10**6))
    root = Path(__file__).resolve().parents[2]
    cfg = js.load_party_config(root / "parties" / "demo" / "hospital_a.yaml")
    assert cfg.policy.budget == PrivacyBudget(100, F(1, 10**5))
    from jointstats.ledger.state import NodeState
    state = NodeState(tmp_path / "s.sqlite")
    try:
        charge = job_charge(1, 0, 5)
        state.reserve("j1", "cohort", charge, 100, F(1, 10**5), analyst="a", spec_sha256="x")
        state.commit("j1")
        use = state.usage("cohort", cfg.policy.budget)
        assert use == state.usage("cohort", 100, F(1, 10**5))
        assert use.spent_budget.epsilon == 1 and use.remaining.epsilon == 99
        assert use.spent_budget + use.remaining <= cfg.policy.budget + PrivacyBudget(0, use.spent_budget.delta)
    finally:
        state.close()
    result = js.Result("p", "j", "s", ("a", "b", "c"),
                       {"epsilon": 1.0, "delta": 0.0, "charge": charge.to_dict()}, {})
    assert result.budget == PrivacyBudget(charge.epsilon, charge.delta)
    assert js.Result("p", "j", "s", ("a",), None, {}).budget is None
    assert js.Result("p", "j", "s", ("a",), {"epsilon": 1.0, "delta": 0.0}, {}).budget == PrivacyBudget(1)


def test_usage_as_the_api_publishes_it(tmp_path):
    from jointstats.ledger.state import NodeState
    state = NodeState(tmp_path / "s.sqlite")
    try:
        for i, (eps, delta) in enumerate([(1, 0), (2, F(1, 10**6))]):
            state.reserve(f"j{i}", "d", job_charge(eps, delta, 5), 50, F(1, 10**5), analyst="a",
                          spec_sha256="x")
        state.commit("j0")
        use = state.usage("d", PrivacyBudget(50, F(1, 10**5)))
        data = use.to_dict()
        assert data["spent"] == {"epsilon": float(use.spent_rule.epsilon), "delta": float(use.spent_rule.delta),
                                 "rho": 0.0, "jobs": 1}
        assert data["reserved"]["jobs"] == 1 and data["reserved"]["rho"] == float(use.reserved.rho) > 0
        assert data["remaining"] == {"epsilon": float(use.remaining.epsilon),
                                     "delta": float(use.remaining.delta)}
    finally:
        state.close()
