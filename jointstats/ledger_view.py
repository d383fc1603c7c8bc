"""Read-only views of the parties' ledgers for the command line."""
from __future__ import annotations

from pathlib import Path

from .config import load_party_config


def budget_lines(config_path: str | Path) -> list[str]:
    """What one party has spent and what remains, per dataset it offers."""
    from ._state import NodeState
    cfg = load_party_config(config_path)
    lines = [f"party {cfg.party}: lifetime budget epsilon {float(cfg.policy.budget_epsilon):g}, "
             f"delta {float(cfg.policy.budget_delta):g} per dataset"]
    if not cfg.state.exists():
        return lines + ["  no jobs yet"]
    state = NodeState(cfg.state)
    try:
        for dataset, _ in cfg.datasets:
            s_eps, s_delta = state.spent(dataset)
            r_eps, r_delta = state.reserved(dataset)
            rem_eps, rem_delta = state.remaining(dataset, cfg.policy.budget_epsilon, cfg.policy.budget_delta)
            lines.append(f"  {dataset}: spent epsilon {float(s_eps):.6g} delta {float(s_delta):.3g}; "
                         f"reserved epsilon {float(r_eps):.6g}; remaining epsilon {float(rem_eps):.6g} "
                         f"delta {float(rem_delta):.3g}")
    finally:
        state.close()
    return lines


def spent_lines(config_paths: list) -> list[str]:
    """Privacy spent so far at every party (for ``jointstats demo``)."""
    out = ["privacy spent per party:"]
    for path in config_paths:
        out.extend(budget_lines(path))
    return out
