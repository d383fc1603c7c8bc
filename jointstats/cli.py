"""The ``jointstats`` command line (docs/reference.md section 3).

Exit status 0 on success; otherwise a one-line reason on stderr and a non-zero status.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import JointStatsError

REPO_ROOT = Path(__file__).resolve().parents[1]


def _demo_paths() -> tuple[Path, Path]:
    """The demo consortium and protocols: beside the package, else in the working directory."""
    for root in (REPO_ROOT, Path.cwd()):
        if (root / "parties" / "demo").is_dir() and (root / "protocols").is_dir():
            return root / "parties" / "demo", root / "protocols"
    raise JointStatsError("cannot find parties/demo and protocols/; run from the jointstats checkout")


def cmd_demo(args: argparse.Namespace) -> int:
    """Make demo data if missing, run every protocol in protocols/ over 3 real party processes."""
    from .demo_data import ensure_demo_data
    from .runner import run
    demo_dir, protocols = _demo_paths()
    ensure_demo_data(demo_dir)
    configs = sorted(demo_dir.glob("*.yaml"))
    specs = sorted(protocols.glob("*.yaml"))
    for spec in specs:
        print(f"=== {spec.name} " + "=" * max(0, 60 - len(spec.name)), flush=True)
        result = run(spec, configs, progress=args.verbose)
        print(result.summary())
        print(flush=True)
    from .ledger_view import spent_lines
    for line in spent_lines(configs):
        print(line)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """One job over locally started party processes."""
    from .runner import run
    result = run(args.spec, args.parties, out=args.out, progress=sys.stderr.isatty())
    print(result.summary())
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (and its fit to the parties' policies) without computing anything."""
    from .runner import validate
    print(validate(args.spec, args.parties or None))
    print("ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="jointstats", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the demo protocols over 3 local party processes")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one job over locally started party processes")
    p.add_argument("spec")
    p.add_argument("--parties", nargs="+", required=True, metavar="CONFIG")
    p.add_argument("--out")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a spec without computing or spending budget")
    p.add_argument("spec")
    p.add_argument("--parties", nargs="*", metavar="CONFIG")
    p.set_defaults(func=cmd_validate)

    from . import node_cli
    node_cli.add_commands(sub)
    from . import _gov_cli; _gov_cli.add_commands(sub)  # noqa: E702 - governance (docs/governance.md)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except JointStatsError as exc:
        print(f"jointstats: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jointstats: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
