"""jointstats: secure multi-party joint statistics with differential privacy, on MPyC.

Typical use::

    import jointstats as js
    result = js.run("protocols/cohort-summary.yaml",
                    ["parties/demo/hospital_a.yaml", "parties/demo/hospital_b.yaml",
                     "parties/demo/registry_c.yaml"])
    print(result.summary())
    result.to_json()
    result.to_frame("age_hist")          # pandas; result.plot("age_hist") with matplotlib
    result.stat("mean_age").noise_interval  # typed per-kind results (jointstats.results_kinds)
    result.budget                        # the guarantee as a PrivacyBudget (exact fractions)

Every error derives from :class:`JointStatsError` (jointstats.errors).
"""
from jointstats.plan.accounting import PrivacyBudget
from jointstats.consortium.config import PartyConfig, load_party_config
from jointstats.errors import (AuthError, BudgetError, ConfigError, DataError, JointStatsError, PartyError,
                     PlanMismatchError, PolicyError, SpecError)
from jointstats.plan.sealed import Plan, make_plan
from jointstats.result import Result
from jointstats.results_kinds import (CorrelationResult, CountResult, CrosstabResult, HistogramResult,
                            MeanResult, RegressionResult, StatisticResult, SumResult,
                            VarianceResult)
from jointstats.local.runner import run, validate
from jointstats.plan.spec import Spec, load_spec, parse_spec

__version__ = "0.1.0"

__all__ = [
    "AuthError", "BudgetError", "ConfigError", "CorrelationResult", "CountResult",
    "CrosstabResult", "DataError", "HistogramResult", "JointStatsError", "MeanResult",
    "PartyConfig", "PartyError", "Plan", "PlanMismatchError", "PolicyError", "PrivacyBudget",
    "RegressionResult", "Result", "Spec", "SpecError", "StatisticResult", "SumResult",
    "VarianceResult", "load_party_config", "load_spec", "make_plan", "parse_spec", "run",
    "validate",
]
