"""The ``jointstats`` command line (docs/reference.md section 3).

Exit status: 0 success; 1 failure (a party failed or died, data that does not fit, an audit
log that is not intact); 2 usage error (bad arguments, or a spec or party config that does
not validate); 3 refusal (a party's policy or privacy budget, or an authentication check,
refused the job). Anything but 0 comes with one line on stderr naming the field or party.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jointstats.errors import EXIT_FAILURE, EXIT_REFUSED, EXIT_USAGE, JointStatsError, exit_code_of

REPO_ROOT = Path(__file__).resolve().parents[2]

EXIT_CODES = f"""\
exit status:
  0  success
  {EXIT_FAILURE}  failure: a party failed or died, data that does not fit the spec, an audit log
     that is not intact
  {EXIT_USAGE}  usage error: bad arguments, a spec or party config that does not validate
  {EXIT_REFUSED}  refusal: a party's policy or privacy budget, or an authentication check,
     refused the job
"""

EXAMPLES = f"""\
examples:
  jointstats demo
  jointstats validate protocols/cohort-summary.yaml --parties parties/demo/*.yaml
  jointstats run protocols/bp-regression.yaml --parties parties/demo/*.yaml --out result.json
  jointstats budget --config parties/demo/hospital_a.yaml
  jointstats schema spec > spec.schema.json

references: docs/reference.md (spec, party config, commands, result JSON), docs/spec.md and
docs/config.md (every field, generated from the schema), docs/node.md (party nodes)

{EXIT_CODES}"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks."""


def _version() -> str:
    from jointstats import __version__
    return __version__


def _demo_paths() -> tuple[Path, Path]:
    """The demo consortium and protocols: beside the package, else in the working directory."""
    for root in (REPO_ROOT, Path.cwd()):
        if (root / "parties" / "demo").is_dir() and (root / "protocols").is_dir():
            return root / "parties" / "demo", root / "protocols"
    raise JointStatsError("cannot find parties/demo and protocols/; run from the jointstats checkout")


def _progress(args: argparse.Namespace) -> bool:
    """--progress / --no-progress, else progress lines only when stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress


def cmd_demo(args: argparse.Namespace) -> int:
    """Make demo data if missing, run every protocol in protocols/ over 3 real party processes."""
    from jointstats.cli.demo_data import ensure_demo_data
    from jointstats.local.runner import run
    demo_dir, protocols = _demo_paths()
    ensure_demo_data(demo_dir)
    configs = sorted(demo_dir.glob("*.yaml"))
    specs = sorted(protocols.glob("*.yaml"))
    progress = args.verbose or bool(args.progress)
    for spec in specs:
        print(f"=== {spec.name} " + "=" * max(0, 60 - len(spec.name)), flush=True)
        result = run(spec, configs, progress=progress)
        print(result.summary())
        print(flush=True)
    from jointstats.ledger.view import spent_lines
    for line in spent_lines(configs):
        print(line)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """One job over locally started party processes."""
    from jointstats.local.runner import run
    result = run(args.spec, args.parties, out=args.out, progress=_progress(args))
    print(result.summary())
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a spec (and its fit to the parties' policies) without computing anything."""
    from jointstats.local.runner import validate
    print(validate(args.spec, args.parties or None))
    print("ok")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema shipped in the package (jointstats/schema/)."""
    from importlib import resources
    text = resources.files("jointstats").joinpath("schema", f"{args.which}.schema.json").read_text(
        encoding="utf-8")
    sys.stdout.write(text)
    return 0


def _progress_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show (or with --no-progress hide) each party's progress lines on "
                        "stderr [only when stderr is a terminal]")


def _tls_client_options(p: argparse.ArgumentParser) -> None:
    """How an analyst's or officer's command checks https node URLs (--ca, --crl)."""
    p.add_argument("--ca", help="CA certificate to verify https node URLs")
    p.add_argument("--crl", metavar="FILE",
                   help="the consortium's certificate revocation list (jointstats keys crl): "
                        "refuse a node whose certificate it revokes")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="jointstats", formatter_class=_Formatter, epilog=EXAMPLES,
        description="Secure multi-party joint statistics with differential privacy, on MPyC.")
    parser.add_argument("--version", action="version", version=f"jointstats {_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the demo protocols over 3 local party processes",
                       formatter_class=_Formatter, description=cmd_demo.__doc__,
                       epilog="example:\n  jointstats demo --progress\n\n" + EXIT_CODES)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show each party's progress lines (as --progress)")
    _progress_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run one job over locally started party processes",
                       formatter_class=_Formatter,
                       description="Run one job: one OS process per party on this machine, each "
                                   "reading only its own config and data and enforcing its own "
                                   "policy and ledger. Prints the result's summary.",
                       epilog="example:\n  jointstats run protocols/cohort-summary.yaml --parties "
                              "parties/demo/*.yaml --out result.json\n\n" + EXIT_CODES)
    p.add_argument("spec", help="the protocol spec YAML (fields: docs/spec.md)")
    p.add_argument("--parties", nargs="+", required=True, metavar="CONFIG",
                   help="every party's config YAML (fields: docs/config.md)")
    p.add_argument("--out", metavar="FILE", help="also write the result JSON here")
    _progress_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a spec without computing or spending budget",
                       formatter_class=_Formatter,
                       description="Check a spec, its plan and (given the parties' configs) its "
                                   "fit to each party's policy and data header. Prints the plan; "
                                   "computes and spends nothing.",
                       epilog="example:\n  jointstats validate protocols/smoking-crosstab.yaml "
                              "--parties parties/demo/*.yaml\n\n" + EXIT_CODES)
    p.add_argument("spec", help="the protocol spec YAML (fields: docs/spec.md)")
    p.add_argument("--parties", nargs="*", metavar="CONFIG",
                   help="party config YAMLs to check the spec against [none: the spec alone]")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of a spec or a party config",
                       formatter_class=_Formatter,
                       description="Print the JSON Schema (draft 2020-12) that editors can use to "
                                   "check and complete specs and party configs. The same files "
                                   "ship as jointstats/schema/spec.schema.json and "
                                   "jointstats/schema/config.schema.json; docs/spec.md and "
                                   "docs/config.md explain every field.",
                       epilog="example:\n  jointstats schema spec > spec.schema.json\n\n" + EXIT_CODES)
    p.add_argument("which", choices=("spec", "config"),
                   help="spec: the analyst's protocol spec; config: a party's config")
    p.set_defaults(func=cmd_schema)

    from jointstats.cli import node as node_cli
    node_cli.add_commands(sub)
    from jointstats.cli import governance  # docs/governance.md
    governance.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: the command's exit status (see EXIT_CODES)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # a usage error exits with status 2 (argparse)
    try:
        return args.func(args) or 0
    except JointStatsError as exc:
        print(f"jointstats: {exc}", file=sys.stderr)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        print("jointstats: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (``jointstats catalog | head``): not an error of
        # ours; point stdout at /dev/null so that the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
