"""jointstats: secure multi-party joint statistics with differential privacy, on MPyC.

Typical use::

    import jointstats as js
    result = js.run("protocols/cohort-summary.yaml",
                    ["parties/demo/hospital_a.yaml", "parties/demo/hospital_b.yaml",
                     "parties/demo/registry_c.yaml"])
    print(result.summary())
    result.to_json()
"""
from .config import PartyConfig, load_party_config
from .errors import (AuthError, BudgetError, ConfigError, DataError, JointStatsError, PartyError,
                     PlanMismatchError, PolicyError, SpecError)
from .plan import Plan, make_plan
from .result import Result
from .runner import run, validate
from .spec import Spec, load_spec, parse_spec

__version__ = "0.1.0"

__all__ = [
    "AuthError", "BudgetError", "ConfigError", "DataError", "JointStatsError", "PartyConfig",
    "PartyError", "Plan", "PlanMismatchError", "PolicyError", "Result", "Spec", "SpecError",
    "load_party_config", "load_spec", "make_plan", "parse_spec", "run", "validate",
]
