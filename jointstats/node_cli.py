"""Subcommands for nodes, analysts, keys and ledgers (filled in by the node service)."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register node, submit, keys, budget and audit subcommands."""
    from .ledger_view import budget_lines

    def cmd_budget(args: argparse.Namespace) -> int:
        print("\n".join(budget_lines(args.config)))
        return 0

    p = sub.add_parser("budget", help="what a party has spent and what remains")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_budget)
