"""Subcommands for nodes, analysts, keys, ledgers and audit logs (docs/reference.md section 3).

Every failure raises a JointStatsError subclass, so ``jointstats.cli.commands.main`` prints one
line and exits with that class's status (jointstats.errors: 1 failure, 2 usage, 3 refusal).
"""
from __future__ import annotations

import argparse

from jointstats.errors import AuditError, ConfigError  # noqa: F401 - AuditError: raised below


def cmd_node_serve(args: argparse.Namespace) -> int:
    from jointstats.node.service import serve
    limits = {k: v for k, v in (("max_per_client", args.max_connections_per_client),
                                ("max_requests_per_client", args.max_requests_per_client))
              if v is not None}
    return serve(args.config, api_cert=args.api_cert, api_key=args.api_key,
                 connect_timeout=args.connect_timeout, peer_wait=args.peer_wait,
                 orphan_grace=args.orphan_grace, **limits)


def cmd_submit(args: argparse.Namespace) -> int:
    from jointstats.node.client import submit
    result = submit(args.spec, args.node, args.key, analyst=args.analyst, out=args.out,
                    timeout=args.timeout, ca=args.ca, crl=args.crl, progress=args.progress)
    print(result.summary())
    if args.out:
        print(f"\nwrote {args.out}")
    return 0



def _out_options(q: argparse.ArgumentParser, files: str) -> None:
    """``--out DIR`` (where a keys command writes ``files``) and ``--force``."""
    q.add_argument("--out", required=True, metavar="DIR", help=f"folder to write {files} to")
    q.add_argument("--force", action="store_true", help="overwrite existing files")

def cmd_keys_ca(args: argparse.Namespace) -> int:
    from jointstats.consortium.keys import make_ca
    crt, key = make_ca(args.out, overwrite=args.force)
    print(f"wrote {crt} (give to every party) and {key} (keep offline: it issues party "
          f"certificates)")
    return 0


def cmd_keys_party(args: argparse.Namespace) -> int:
    from jointstats.consortium.keys import make_party_cert
    crt, key = make_party_cert(args.name, args.index, args.ca, args.out, overwrite=args.force)
    print(f"wrote {crt} and {key} for party {args.name!r} at index {args.index}")
    return 0


def cmd_keys_analyst(args: argparse.Namespace) -> int:
    from jointstats.consortium.keys import make_analyst_key
    key, pub = make_analyst_key(args.name, args.out, overwrite=args.force)
    print(f"wrote {key} (private: the analyst signs with it) and {pub} (for the nodes' "
          f"policy.analysts)")
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    from jointstats.ledger.view import budget_lines
    print("\n".join(budget_lines(args.config)))
    return 0


def _open_state(config: str):
    from jointstats.ledger.state import NodeState
    from jointstats.consortium.config import load_party_config
    cfg = load_party_config(config)
    if not cfg.state.exists():
        raise ConfigError(f"party {cfg.party!r}: no state file {cfg.state} (the node has not "
                          f"run yet)")
    return cfg, NodeState(cfg.state)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    cfg, state = _open_state(args.config)
    try:
        ok, message = state.verify_audit()
        count, head = state.audit_head()
    finally:
        state.close()
    if not ok:
        raise AuditError(f"audit log of party {cfg.party!r} ({cfg.state}) is NOT intact: {message}")
    print(f"party {cfg.party}: audit log intact: {message}; head {head[:16]} ({count} records)")
    return 0


def cmd_audit_show(args: argparse.Namespace) -> int:
    import json
    cfg, state = _open_state(args.config)
    try:
        for rec in state.audit_records():
            print(f"{rec['seq']:>6}  {rec['timestamp']}  {rec['event']:<10}  "
                  f"{json.dumps(rec['fields'], sort_keys=True)}")
    finally:
        state.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register node, submit, keys, budget and audit subcommands."""
    from jointstats.cli.commands import EXIT_CODES, _Formatter, _progress_options, _tls_client_options

    def parser(parent, name: str, help: str, example: str, description: str | None = None):
        return parent.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                                 formatter_class=_Formatter,
                                 epilog=f"example:\n  {example}\n\n{EXIT_CODES}")

    p = sub.add_parser("node", help="run a party node", description="Run a party node (docs/node.md).")
    nsub = p.add_subparsers(dest="node_command", required=True, metavar="COMMAND")
    q = parser(nsub, "serve", "serve analysts and run jobs with the other nodes",
               "jointstats node serve --config parties/demo/hospital_a.yaml")
    q.add_argument("--config", required=True, help="this party's config YAML (fields: docs/config.md)")
    q.add_argument("--api-cert", help="serve the analyst API over HTTPS with this certificate")
    q.add_argument("--api-key", help="private key of --api-cert")
    q.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a job's worker waits for the other parties to connect "
                        "(covers their local step) [60]")
    q.add_argument("--peer-wait", type=float, default=120.0, metavar="S",
                   help="seconds queued jobs wait for the other nodes to join before failing [120]")
    q.add_argument("--orphan-grace", type=float, default=30.0, metavar="S",
                   help="seconds a job may be missing at another node before it fails [30]")
    q.add_argument("--max-connections-per-client", type=int, metavar="N",
                   help="API connections at once from one client address (raise it behind a "
                        "proxy or NAT) [16]")
    q.add_argument("--max-requests-per-client", type=int, metavar="N",
                   help="API requests served at once for one client address [8]")
    q.set_defaults(func=cmd_node_serve)

    p = parser(sub, "submit", "submit a spec to every party's node and wait for the result",
               "jointstats submit spec.yaml --node https://a:8701 https://b:8702 https://c:8703 "
               "--key alice.key --ca keys/ca.crt --out result.json")
    p.add_argument("spec", help="the protocol spec YAML (fields: docs/spec.md)")
    p.add_argument("--node", required=True, action="extend", nargs="+", metavar="URL",
                   help="every party's node API URL (repeat or list)")
    p.add_argument("--key", required=True, help="the analyst's Ed25519 private key")
    p.add_argument("--analyst", help="analyst name [the key file's stem]")
    p.add_argument("--out", metavar="FILE", help="write the result JSON here")
    _tls_client_options(p)
    p.add_argument("--timeout", type=float, default=4 * 3600.0, metavar="S",
                   help="seconds to wait for the job to finish [14400]")
    _progress_options(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("keys", help="make a consortium CA, party certificates, analyst keys",
                       description="Make a consortium CA, party certificates and analyst keys "
                                   "(docs/node.md, walk-through).")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    q = parser(ksub, "ca", "a consortium CA: DIR/ca.crt, DIR/ca.key", "jointstats keys ca --out keys")
    _out_options(q, "ca.crt and ca.key")
    q.set_defaults(func=cmd_keys_ca)
    q = parser(ksub, "party", "a party certificate bound to its name and index",
               "jointstats keys party hospital_a --index 0 --ca keys --out keys")
    q.add_argument("name", help="the party's name, as in mpc.parties")
    q.add_argument("--index", required=True, type=int, help="its position in mpc.parties (from 0)")
    q.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
    _out_options(q, "NAME.crt and NAME.key")
    q.set_defaults(func=cmd_keys_party)
    q = parser(ksub, "analyst", "an analyst's Ed25519 key pair: DIR/NAME.key, DIR/NAME.pub",
               "jointstats keys analyst alice --out keys")
    q.add_argument("name", help="the analyst's name, as in the nodes' policy.analysts")
    _out_options(q, "NAME.key and NAME.pub")
    q.set_defaults(func=cmd_keys_analyst)

    p = parser(sub, "budget", "what a party has spent and what remains",
               "jointstats budget --config parties/demo/hospital_a.yaml")
    p.add_argument("--config", required=True, help="the party's config YAML")
    p.set_defaults(func=cmd_budget)

    p = sub.add_parser("audit", help="check or show a party's audit log",
                       description="Check or show a party's hash-chained audit log and ledger.")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    q = parser(asub, "verify", "check the hash chain and the ledger; non-zero exit naming the "
                               "first bad record",
               "jointstats audit verify --config parties/demo/hospital_a.yaml")
    q.add_argument("--config", required=True, help="the party's config YAML")
    q.set_defaults(func=cmd_audit_verify)
    q = parser(asub, "show", "print every audit record",
               "jointstats audit show --config parties/demo/hospital_a.yaml")
    q.add_argument("--config", required=True, help="the party's config YAML")
    q.set_defaults(func=cmd_audit_show)
