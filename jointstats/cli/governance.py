"""Governance subcommands (docs/governance.md), registered by ``jointstats.cli.commands`` with one hook.

Officers: ``approve``, ``reject``, ``jobs``, ``audit-log``, ``policy reload``; analysts:
``catalog``, ``spec-template``, ``jobs``; operators on the host: ``consent withdraw`` /
``consent list``, ``report key``; anyone: ``report`` and ``report verify``. Every failure
is a JointStatsError, so ``jointstats.cli.commands.main`` prints one line and exits non-zero.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jointstats.errors import ConfigError


def _client(url: str, key: str, name: str | None, ca: str | None, crl: str | None = None):
    from jointstats.node.client import NodeClient
    name = name or Path(key).stem
    return NodeClient(url, ca, signer=(Path(key), name), crl=crl), name


def cmd_decide(args: argparse.Namespace) -> int:
    from jointstats.consortium.approval import sign_decision
    from jointstats.node.client import _error
    approve = args.gov_command == "approve"
    reason = getattr(args, "reason", "") or ""
    for url in args.node:
        client, officer = _client(url, args.key, args.officer, args.ca, args.crl)
        body = sign_decision(Path(args.key), officer, args.job, approve, reason)
        status, payload = client.request("POST", f"/jobs/{args.job}/{args.gov_command}", body)
        if status != 200:
            raise _error(client, status, payload, f"refused to {args.gov_command} the job")
        print(f"{payload.get('party')}: job {args.job} {payload.get('status')}"
              + (f" ({payload.get('error')})" if payload.get("error") else ""))
    return 0


def _fetch(args: argparse.Namespace, path: str) -> dict | None:
    """GET ``path`` from ``--node`` as the caller; with ``--json`` print it and return None."""
    data = _client(args.node, args.key, args.name, args.ca, args.crl)[0].get(path)
    if args.json:
        print(json.dumps(data, indent=1))
        return None
    return data


def cmd_jobs(args: argparse.Namespace) -> int:
    listing = _fetch(args, "/jobs")
    if listing is None:
        return 0
    print(f"party {listing['party']} (you are {listing['role']}):")
    for job in listing["jobs"]:
        why = f"  [{'; '.join(job.get('approval_reasons') or [])}]" if job["status"] == "waiting" else ""
        print(f"  {job['job_id']}  {job['status']:<9} {job['analyst']:<12} {job['protocol']}"
              f"  agreement={job.get('agreement')}{why}"
              + (f"  {job['error']}" if job.get("error") else ""))
    return 0


def cmd_audit_log(args: argparse.Namespace) -> int:
    client, _ = _client(args.node, args.key, args.name, args.ca, args.crl)
    log = client.get("/audit")
    if args.json:
        print(json.dumps(log, indent=1))
    else:
        for rec in log["records"]:
            print(f"{rec['seq']:>6}  {rec['timestamp']}  {rec['event']:<10}  "
                  f"{json.dumps(rec['fields'], sort_keys=True)}")
        print(f"party {log['party']}: {log['verification']}; head {log['head']['hash'][:16]} "
              f"({log['head']['count']} records)")
    if not log["verified"]:
        raise ConfigError(f"audit log of party {log['party']!r} is NOT intact: {log['verification']}")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from jointstats.node.client import _error, signed_headers
    client, name = _client(args.node, args.key, args.name, args.ca, args.crl)
    text = "POST /policy/reload"
    status, payload = client.request("POST", "/policy/reload", {},
                                     headers=signed_headers(Path(args.key), text, text, name))
    if status != 200:
        raise _error(client, status, payload, "refused to reload its policy")
    print(f"party {payload['party']}: policy reloaded"
          + (f"; failed jobs: {', '.join(payload['failed_jobs'])}" if payload["failed_jobs"] else ""))
    return 0


def _approval_text(*rules: dict) -> str:
    """When an officer's approval is needed, in words, under every given rule at once (the
    party's and an agreement's)."""
    if any(r.get("always") for r in rules):
        return "every job"
    above = [r["above_epsilon"] for r in rules if r.get("above_epsilon") is not None]
    when = ([f"epsilon above {min(above):g}"] if above else []) + (
        ["exact mode"] if any(r.get("exact") for r in rules) else [])
    return " or ".join(when) if when else "not needed"


def cmd_catalog(args: argparse.Namespace) -> int:
    cat = _fetch(args, "/catalog")
    if cat is None:
        return 0
    print(f"party {cat['party']} catalog for {cat['analyst']}"
          + (" (agreements required)" if cat["agreements_required"] else ""))
    for name, ds in cat["datasets"].items():
        print(f"dataset {name}: {ds.get('description') or ''}")
        for col, meta in ds["columns"].items():
            what = meta.get("levels") if meta["type"] == "categorical" else meta.get("bounds")
            print(f"  {col}: {meta['type']} {what}")
        pr = ds["privacy"]
        print(f"  privacy: max epsilon/job {pr['max_epsilon_per_job']}, min_count {pr['min_count']}, "
              f"dataset remaining epsilon {pr['dataset_remaining']['epsilon']:g}; "
              f"exact possible: {ds['exact_possible']}; officer approval: "
              f"{_approval_text(pr['approval'])}")
        for a in ds["agreements"]:
            print(f"  agreement {a['id']}: purposes {', '.join(a['purposes'])}; kinds "
                  f"{', '.join(a['kinds'])}; modes {', '.join(a['modes'])}; remaining epsilon "
                  f"{a['remaining']['epsilon']:g}; valid {a['valid']['from']}..{a['valid']['until']}"
                  f"{'' if a['valid_today'] else ' (NOT valid today)'}; officer approval: "
                  f"{_approval_text(pr['approval'], a['approval'])}")
    return 0


def cmd_spec_template(args: argparse.Namespace) -> int:
    from jointstats.node.catalog import spec_template
    catalogs = [_client(url, args.key, args.name, args.ca, args.crl)[0].get("/catalog") for url in args.node]
    print(spec_template(catalogs, args.dataset), end="")
    return 0


def cmd_consent(args: argparse.Namespace) -> int:
    from jointstats.ledger.consent import withdraw, withdrawn
    from jointstats.ledger.state import NodeState
    from jointstats.consortium.config import load_party_config
    cfg = load_party_config(args.config)
    if args.consent_command == "withdraw":
        cfg.state.parent.mkdir(parents=True, exist_ok=True)
        state = NodeState(cfg.state)
        try:
            dataset, added = withdraw(cfg, args.ids, state, args.dataset)
        finally:
            state.close()
        _, ids = withdrawn(cfg, dataset)
        print(f"party {cfg.party}: dataset {dataset}: {added} subject(s) withdrawn "
              f"({len(ids)} in force); every job that starts from now leaves their rows out")
    else:
        dataset, ids = withdrawn(cfg, args.dataset)
        print(f"party {cfg.party}: dataset {dataset}: {len(ids)} withdrawal(s) in force")
        for subject in ids:
            print(f"  {subject}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from jointstats.engine.report import render
    try:
        result = json.loads(Path(args.result).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{args.result}: cannot read a result JSON ({type(exc).__name__})") from None
    text = render(result, "html" if args.html else "md")
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_report_verify(args: argparse.Namespace) -> int:
    from jointstats.engine.report import load_keys, verify_file
    for line in verify_file(args.file, load_keys(args.keys)):
        print(line)
    return 0


def cmd_report_key(args: argparse.Namespace) -> int:
    from jointstats.engine.report import release_public_key
    from jointstats.consortium.config import load_party_config
    cfg = load_party_config(args.config)
    pem = release_public_key(cfg)
    if args.out:
        Path(args.out).write_text(pem)
        print(f"wrote {args.out} (party {cfg.party}'s release key: reviewers pin it with "
              f"report verify --keys)")
    else:
        sys.stdout.write(pem)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from jointstats.local.runner import validate
    print(validate(args.spec, args.parties or None, analyst=args.analyst))
    print("ok")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from jointstats.consortium.crl import revoke
    path, who = revoke(args.cert, args.ca, args.out)
    print(f"wrote {path}: party certificate of {who} revoked; give the CRL to every party "
          f"(mpc.tls.crl); it applies from their next connection")
    return 0


def cmd_keys_crl(args: argparse.Namespace) -> int:
    from jointstats.consortium.crl import issue_pending
    path, due = issue_pending(args.ca, args.out)
    print(f"wrote {path} (reissued, valid for a year"
          + (f"; {due} scheduled revocation(s) took effect" if due else "") + ")")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    import datetime as dt
    from jointstats.consortium.crl import rotate
    try:
        until = dt.datetime.fromisoformat(args.until)
    except ValueError:
        raise ConfigError(f"--until {args.until!r}: expected an ISO time such as "
                          f"2027-01-31T00:00:00+00:00") from None
    crt, key = rotate(args.name, args.index, args.ca, args.out, args.old, until, args.crl)
    print(f"wrote {crt} and {key}; the old certificate works until {until.isoformat()} (run "
          f"jointstats keys crl --ca {args.ca} after that time to revoke it)")
    return 0


def _node_args(p: argparse.ArgumentParser, many: bool = False, who: str = "analyst",
               name: str = "--name", name_help: str | None = None) -> None:
    """--node, --key, the name option (the caller's name, default the key file's stem) and
    the TLS client options of a command that talks to nodes."""
    if many:
        p.add_argument("--node", required=True, action="extend", nargs="+", metavar="URL",
                       help="node API URL(s)")
    else:
        p.add_argument("--node", required=True, metavar="URL", help="the node's API URL")
    p.add_argument("--key", required=True, help=f"the {who}'s Ed25519 private key")
    p.add_argument(name, help=f"{name_help or who + ' name'} [the key file's stem]")
    from jointstats.cli.commands import _tls_client_options
    _tls_client_options(p)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the governance subcommands (and ``validate --analyst``); each leaf command's
    help ends with an example and the exit statuses, as the other commands'."""
    from jointstats.cli.commands import EXIT_CODES, _Formatter

    def command(parent: argparse._SubParsersAction, name: str, help: str, example: str,
                description: str | None = None) -> argparse.ArgumentParser:
        """A leaf command: ``example`` (lines, each a whole command) and the exit statuses."""
        lines = "\n".join(f"  {line}" for line in example.splitlines())
        return parent.add_parser(name, help=help, formatter_class=_Formatter,
                                 description=description or help[0].upper() + help[1:] + ".",
                                 epilog=f"example:\n{lines}\n\n{EXIT_CODES}")

    validate = sub.choices.get("validate")
    if validate is not None:  # validate says which agreement covers the job for this analyst
        validate.add_argument("--analyst", default="local",
                              help="the analyst the job would run for [local: jointstats run]")
        validate.set_defaults(func=cmd_validate)

    keys = sub.choices.get("keys")
    ksub = next((a for a in getattr(keys, "_actions", []) if isinstance(a, argparse._SubParsersAction)), None)
    if ksub is not None:  # jointstats keys revoke / keys crl (party certificate revocation)
        q = command(ksub, "revoke", "revoke a party certificate: add it to the CA's CRL",
                    "jointstats keys revoke keys/party_c.crt --ca keys",
                    "Revoke a party certificate: add it to the consortium CA's certificate "
                    "revocation list (CRL). Give the new CRL to every party (mpc.tls.crl); it "
                    "applies from their next connection (docs/governance.md).")
        q.add_argument("cert", help="the party certificate to revoke")
        q.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
        q.add_argument("--out", help="the CRL file [DIR/ca.crl]")
        q.set_defaults(func=cmd_keys_revoke)
        q = command(ksub, "rotate", "a party's new certificate; the old one works until --until",
                    "jointstats keys rotate party_c --index 2 --ca keys --out keys/new "
                    "--old keys/party_c.crt --until 2027-01-31T00:00:00+00:00",
                    "Issue a party's new certificate and schedule the old one's revocation: both "
                    "work until --until, then the next 'jointstats keys crl' revokes the old one.")
        q.add_argument("name", help="the party whose certificate is renewed")
        q.add_argument("--index", required=True, type=int, help="the party's index in the consortium")
        q.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
        q.add_argument("--out", required=True, metavar="DIR", help="where the new certificate goes")
        q.add_argument("--old", required=True, help="the certificate being replaced")
        q.add_argument("--until", required=True, help="when the old one is revoked (ISO time with zone)")
        q.add_argument("--crl", help="the CRL file [CA DIR/ca.crl]")
        q.set_defaults(func=cmd_keys_rotate)
        q = command(ksub, "crl", "issue (or reissue) the CA's CRL, with scheduled revocations now due",
                    "jointstats keys crl --ca keys",
                    "Issue (or reissue) the consortium CA's CRL, valid for a year, adding the "
                    "scheduled revocations (keys rotate) now due. Reissue it within the year: "
                    "an expired CRL fails every connection.")
        q.add_argument("--ca", required=True, metavar="DIR", help="folder with ca.crt and ca.key")
        q.add_argument("--out", help="the CRL file [DIR/ca.crl]")
        q.set_defaults(func=cmd_keys_crl)

    officer = "--key carol.key --ca keys/ca.crt"
    for action, extra in (("approve", ""), ("reject", ' --reason "epsilon too high for this purpose"')):
        p = command(sub, action, f"a compliance officer {action}s a job waiting for approval",
                    f"jointstats {action} JOB --node https://a.example:8701 {officer}{extra}",
                    f"A compliance officer {action}s a job waiting for approval at each node "
                    f"given (signed with the officer's key; docs/governance.md).")
        p.add_argument("job", help="the job id")
        _node_args(p, many=True, who="officer", name="--officer")
        if action == "reject":
            p.add_argument("--reason", required=True, help="why (the analyst sees it)")
        p.set_defaults(func=cmd_decide, gov_command=action)

    p = command(sub, "jobs", "list a node's jobs (an analyst's own; every job for an officer)",
                f"jointstats jobs --node https://a.example:8701 {officer}")
    _node_args(p, name_help="your name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_jobs)

    p = command(sub, "audit-log", "an officer reads a node's audit log over its API",
                f"jointstats audit-log --node https://b.example:8702 {officer}",
                "An officer reads a node's audit log over its API, with the node's verdict on "
                "its hash chain (non-zero exit if it is not intact).")
    _node_args(p, who="officer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_audit_log)

    p = sub.add_parser("policy", help="reload a node's policy without a restart (officers)",
                       description="Reload a node's policy without a restart (officers; "
                                   "docs/governance.md).")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")
    q = command(psub, "reload", "re-read the node's config: revocations apply at once",
                f"jointstats policy reload --node https://b.example:8702 {officer}")
    _node_args(q, who="officer")
    q.set_defaults(func=cmd_reload)

    analyst = "--key alice.key --ca keys/ca.crt"
    p = command(sub, "catalog", "datasets, columns and privacy levels your agreements cover",
                f"jointstats catalog --node https://a.example:8701 {analyst}",
                "The datasets, documented columns and privacy levels a node's data-use "
                "agreements cover for you; never a data value.")
    _node_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_catalog)

    p = command(sub, "spec-template", "a starting spec for a dataset, from the catalogs",
                "jointstats spec-template --node https://a.example:8701 https://b.example:8702 "
                f"https://c.example:8703 {analyst} --dataset cohort > spec.yaml",
                "Print a starting spec for a dataset from every node's catalog: the columns "
                "every party documents and releases to you, a purpose and kinds their "
                "agreements allow, an epsilon within every party's cap.")
    _node_args(p, many=True)
    p.add_argument("--dataset", required=True, help="the dataset to start a spec for")
    p.set_defaults(func=cmd_spec_template)

    p = sub.add_parser("consent", help="a party's consent withdrawal list (operator, on the host)",
                       description="A party's consent withdrawal list (operator, on the host; "
                                   "datasets.<name>.subject_id, docs/governance.md).")
    csub = p.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")
    q = command(csub, "withdraw", "data subjects leave every job that starts from now",
                "jointstats consent withdraw --config parties/demo/hospital_a.yaml P-10442 P-20931")
    q.add_argument("--config", required=True, help="this party's config (YAML)")
    q.add_argument("--dataset", help="the dataset [the only one with subject_id]")
    q.add_argument("ids", nargs="+", metavar="ID", help="data subjects' identifiers (the dataset's subject_id column)")
    q.set_defaults(func=cmd_consent)
    q = command(csub, "list", "the withdrawals in force",
                "jointstats consent list --config parties/demo/hospital_a.yaml")
    q.add_argument("--config", required=True, help="this party's config (YAML)")
    q.add_argument("--dataset", help="the dataset [the only one with subject_id]")
    q.set_defaults(func=cmd_consent)

    p = command(sub, "report", "the release report of a result (Markdown, or --html); "
                               "'report verify FILE' checks one",
                "jointstats report result.json --html --out report.html\n"
                "jointstats report verify report.html --keys pinned/\n"
                "jointstats report key --config parties/demo/hospital_a.yaml --out hospital_a.pub",
                "The release report of a result (Markdown, or --html), showing only released "
                "values and every party's signed attestation; 'report verify FILE' checks a "
                "report or result against the parties' signatures (and with --keys, pinned "
                "keys); 'report key --config A.yaml' prints a party's release public key.")
    p.add_argument("result", help="a result JSON (--out of run/submit), or 'verify' / 'key'")
    p.add_argument("file", nargs="?", help="with verify: the report or result JSON to check")
    p.add_argument("--html", action="store_true", help="HTML instead of Markdown")
    p.add_argument("--out", help="write the report (or with key: the public key) here")
    p.add_argument("--keys", metavar="DIR", help="with verify: pinned release keys DIR/<party>.pub")
    p.add_argument("--config", help="with key: this party's config")
    p.set_defaults(func=_report_dispatch)


def _report_dispatch(args: argparse.Namespace) -> int:
    """``report RESULT``, ``report verify FILE`` or ``report key --config A.yaml``."""
    if args.result == "verify":
        if not args.file:
            raise ConfigError("report verify: give the report or result file to check")
        return cmd_report_verify(args)
    if args.result == "key":
        if not args.config:
            raise ConfigError("report key: give --config of this party")
        return cmd_report_key(args)
    if args.file:
        raise ConfigError(f"report: unexpected argument {args.file!r}")
    return cmd_report(args)
