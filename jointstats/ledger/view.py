"""Read-only views of the parties' ledgers for the command line."""
from __future__ import annotations

from pathlib import Path

from jointstats.consortium.config import load_party_config


def budget_lines(config_path: str | Path) -> list[str]:
    """What one party has spent and what remains, per dataset it offers.

    Spent (epsilon, delta) is the lifetime rule's (``_accounting.lifetime_spend``) over the
    committed jobs, shown with the exact totals it is derived from: the pure jobs' epsilon,
    the zCDP jobs' rho and every job's sampler total variation.
    """
    from jointstats.ledger.state import NodeState
    cfg = load_party_config(config_path)
    budget = cfg.policy.budget
    lines = [f"party {cfg.party}: lifetime budget epsilon {float(budget.epsilon):g}, "
             f"delta {float(budget.delta):g} per dataset"]
    if not cfg.state.exists():
        return lines + ["  no jobs yet"]
    state = NodeState(cfg.state)
    try:
        for dataset, _ in cfg.datasets:
            use = state.usage(dataset, budget)
            lines.append(f"  {dataset}: spent {_guarantee(use.spent_rule)} "
                         f"(pure epsilon {_num(use.spent.pure_epsilon)}, rho {_num(use.spent.rho)}, "
                         f"tv {_num(use.spent.tv)}{_legacy(use.spent.legacy_delta)}; "
                         f"{use.spent.jobs} jobs); reserved {use.reserved.jobs} jobs "
                         f"(epsilon {_num(use.reserved.pure_epsilon)}, rho {_num(use.reserved.rho)}); "
                         f"remaining epsilon {_num(use.remaining.epsilon)} "
                         f"delta {_num(use.remaining.delta, 3)}")
    finally:
        state.close()
    return lines


def _num(x, digits: int = 6) -> str:
    """A Fraction for people: a short float form (exact figures are in the ledger)."""
    return f"{float(x):.{digits}g}"


def _guarantee(rule) -> str:
    """The lifetime rule's (epsilon, delta) as text."""
    eps = "over budget" if rule.epsilon is None else _num(rule.epsilon)
    return f"epsilon {eps} delta {_num(rule.delta, 3)}" + ("" if rule.fits else " (over budget)")


def _legacy(d) -> str:
    return f", legacy delta {_num(d, 3)}" if d else ""


def spent_lines(config_paths: list) -> list[str]:
    """Privacy spent so far at every party (for ``jointstats demo``)."""
    out = ["privacy spent per party:"]
    for path in config_paths:
        out.extend(budget_lines(path))
    return out
