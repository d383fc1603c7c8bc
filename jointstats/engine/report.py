"""Release provenance and the release report: who released what, under which agreement, signed.

Every party attests each result it releases (``attest``): the job, the analyst and purpose,
the data-use agreement it ran under at that party, the officers' approvals there, a
fingerprint of the data it read (HMAC-SHA256 under the node's secret of the source file's
bytes and of its consent withdrawal list: two runs on the same data show the same
fingerprint, and nothing about rows can be learnt from it), the software version, and an
Ed25519 signature with the node's release key (``<state>.release.key``, made on first use)
over the canonical JSON of the whole released result plus that attestation. The runner or
client gathers the parties' attestations into the result's ``provenance`` (``merge``).

``render`` makes the release report (Markdown or HTML) from a result alone: it shows only
released values. The report embeds the result it was rendered from, and ``verify_file``
checks (1) every party's signature over that result (optionally against pinned public keys)
and (2) that the document is byte for byte the rendering of that embedded result, so a
report fails to verify after any byte of it changes.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jointstats.errors import ConfigError, ReportError

if TYPE_CHECKING:  # pragma: no cover
    from jointstats.ledger.consent import Exclusion
    from jointstats.consortium.config import PartyConfig

__all__ = ["ReportError", "attest", "merge", "verify_result", "render", "verify_file",
           "fingerprint", "release_public_key", "approvals_of"]

_DOMAIN = "jointstats-release-v1"
_BEGIN = "<!-- jointstats-release "
_END = " -->"
_CHUNK = 1 << 20


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


# ----------------------------------------------------------------------------- node key

def _key_path(config: "PartyConfig") -> Path:
    return config.state.with_name(config.state.stem + ".release.key")


def _release_key(config: "PartyConfig"):
    """This node's Ed25519 release key (created 0600 beside the state file on first use)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    path = _key_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
        except FileExistsError:
            pass
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"party {config.party!r}: {path} is not an Ed25519 private key")
    return key


def release_public_key(config: "PartyConfig") -> str:
    """This node's release public key (PEM text): publish it so reviewers can pin it."""
    from cryptography.hazmat.primitives import serialization
    return _release_key(config).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


# ----------------------------------------------------------------------------- fingerprint

def fingerprint(config: "PartyConfig", dataset: str, exclusion: "Exclusion | None" = None) -> dict:
    """A keyed hash of the data this party reads for ``dataset`` (never row-level).

    File sources (CSV, Parquet, SQLite): HMAC-SHA256 under the node's secret of the file's
    bytes; engine sources (PostgreSQL, DuckDB, Spark, file globs): of the source's identity
    only (its contents are not versioned here). The withdrawal list in force is hashed in.
    """
    from jointstats.ledger.consent import node_secret
    from jointstats.engine.sources import _resolve
    if not config.dataset_governance(dataset).fingerprint:
        return {"algorithm": None, "scope": f"withheld by the party (datasets.{dataset}.fingerprint: "
                                            "false)", "value": None}
    mac = hmac.new(node_secret(config), b"jointstats-dataset-v1\0", hashlib.sha256)
    source = config.dataset_source(dataset)
    raw = source[len("sqlite:///"):].split("?", 1)[0] if source.startswith("sqlite:///") else source
    path = _resolve(raw, config.base_dir) if "://" not in raw and not raw.startswith("spark:") else None
    if path is not None and path.is_file():
        scope = "file contents"
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                mac.update(block)
    else:
        scope = "source identity only (an engine source is not versioned)"
        mac.update(source.encode("utf-8"))
        mac.update(json.dumps(config.dataset_options(dataset), sort_keys=True).encode())
    if exclusion is not None:
        mac.update(b"\0withdrawals\0" + "\n".join(sorted(exclusion.ids)).encode("utf-8"))
    return {"algorithm": "HMAC-SHA256 under the party's secret", "scope": scope,
            "value": mac.hexdigest()}


# ----------------------------------------------------------------------------- attestations

def approvals_of(config: "PartyConfig", job_id: str) -> list[dict]:
    """The officers' decisions a node recorded for ``job_id`` (none for local runs)."""
    path = config.state.with_name(config.state.stem + ".jobs") / job_id / "job.json"
    try:
        job = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    decisions = job.get("decisions") if isinstance(job, dict) else None
    return [d for d in decisions or [] if isinstance(d, dict)]


def attest(config: "PartyConfig", result: dict, *, analyst: str, purpose: str | None,
           agreement: str | None, dataset_fingerprint: dict | None, approvals: list[dict]) -> dict:
    """This party's signed attestation of ``result`` (the released result, without provenance)."""
    from jointstats import __version__
    body = {"party": config.party, "job_id": result.get("job_id"), "analyst": analyst,
            "purpose": purpose, "agreement": agreement, "approvals": approvals,
            "dataset_fingerprint": dataset_fingerprint,
            "software": {"jointstats": __version__, "python": platform.python_version()},
            "public_key": release_public_key(config)}
    sig = _release_key(config).sign(_signed_bytes(result, body))
    return {**body, "signature": base64.b64encode(sig).decode("ascii")}


def _signed_bytes(result: dict, attestation: dict) -> bytes:
    core = {k: v for k, v in result.items() if k != "provenance"}
    att = {k: v for k, v in attestation.items() if k != "signature"}
    return _canonical({"domain": _DOMAIN, "result": core, "attestation": att})


def merge(result: dict, attestations: dict[str, dict]) -> dict:
    """``result`` with its ``provenance`` block built from every party's attestation."""
    first = next(iter(attestations.values()), {})
    ids = {a.get("agreement") for a in attestations.values() if isinstance(a, dict)}
    block = {"purpose": first.get("purpose"), "analyst": first.get("analyst"),
             # the one agreement every party ran under; null when ids differ (each party's
             # own id is in its attestation) or when parties have no agreements
             "agreement": ids.pop() if len(ids) == 1 else None,
             "software": first.get("software"),
             "parties": {p: attestations[p] for p in result.get("parties", []) if p in attestations}}
    return {**{k: v for k, v in result.items() if k != "provenance"}, "provenance": block}


def verify_result(result: dict, keys: dict[str, str] | None = None) -> list[str]:
    """Check every party's signature over ``result``; one line per party. ReportError naming
    the first party whose signature (or pinned key) does not match."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    prov = result.get("provenance")
    if not isinstance(prov, dict) or not isinstance(prov.get("parties"), dict):
        raise ReportError("the result carries no provenance (made without signatures)")
    lines = []
    for party in result.get("parties", []):
        att = prov["parties"].get(party)
        if not isinstance(att, dict):
            raise ReportError(f"party {party!r} did not sign this result")
        if att.get("party") != party or att.get("job_id") != result.get("job_id"):
            raise ReportError(f"party {party!r}: its attestation names another party or job")
        pem = att.get("public_key", "")
        if keys is not None:
            pinned = keys.get(party)
            if pinned is None:
                raise ReportError(f"party {party!r}: no pinned release key given for it")
            if pinned.strip() != str(pem).strip():
                raise ReportError(f"party {party!r}: signed with a key other than its pinned release key")
        try:
            pub = serialization.load_pem_public_key(str(pem).encode("ascii"))
            if not isinstance(pub, ed25519.Ed25519PublicKey):
                raise ValueError
            pub.verify(base64.b64decode(att.get("signature", ""), validate=True),
                       _signed_bytes(result, att))
        except (InvalidSignature, ValueError, TypeError):
            raise ReportError(f"party {party!r}: signature does NOT match (the result or its "
                              f"attestation was changed)") from None
        fp = (att.get("dataset_fingerprint") or {}).get("value", "none")
        lines.append(f"party {party}: signature ok (agreement {att.get('agreement')}, "
                     f"dataset fingerprint {str(fp)[:16]}, "
                     f"{len(att.get('approvals') or [])} approval(s))"
                     + ("" if keys is not None else "; key not pinned"))
    if merge(result, prov["parties"])["provenance"] != prov:
        raise ReportError("the provenance summary (purpose, analyst, agreement, software) differs "
                          "from what the parties signed")
    return lines


# ----------------------------------------------------------------------------- rendering

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "null" if v is None else str(v)


def _nulls(x: Any) -> int:
    if isinstance(x, list):
        return sum(_nulls(v) for v in x)
    return 1 if x is None else 0


def _lines(result: dict) -> list[str]:
    """The report as Markdown lines (HTML wraps the same text)."""
    prov = result.get("provenance") or {}
    spec_sha = result.get("spec_sha256")
    out = [f"# Release report: {result.get('protocol')}", "",
           f"- job: `{result.get('job_id')}`",
           f"- spec sha256: `{spec_sha}`",
           f"- purpose: {prov.get('purpose') or 'none stated'}",
           f"- analyst: {prov.get('analyst')}",
           f"- parties: {', '.join(result.get('parties', []))}",
           f"- software: {_fmt((prov.get('software') or {}).get('jointstats'))} "
           f"(python {_fmt((prov.get('software') or {}).get('python'))})", ""]
    privacy = result.get("privacy")
    out += ["## Privacy", ""]
    if privacy is None:
        out += ["Exact mode: no differential privacy; every party's policy consented to exact answers.",
                "- clipping: numeric values outside a column's declared bounds are clipped by their "
                "owner; values outside the declared levels or of the wrong type fail an exact job", ""]
    else:
        for key in ("epsilon", "delta", "mechanism", "noise", "neighbours", "misfit", "guarantee",
                    "rho", "two_party"):
            if key in privacy:
                out.append(f"- {key}: {_fmt(privacy[key]) if not isinstance(privacy[key], dict) else json.dumps(privacy[key], sort_keys=True)}")
        out.append("")
    out += ["## Parties: agreement, approvals, data version, signature", ""]
    for party in result.get("parties", []):
        att = (prov.get("parties") or {}).get(party) or {}
        fp = att.get("dataset_fingerprint") or {}
        out.append(f"### {party}")
        out.append(f"- agreement: {att.get('agreement') or 'none (party has no agreements)'}")
        approvals = att.get("approvals") or []
        out.append("- approvals: " + ("; ".join(f"{a.get('decision')} by {a.get('officer')}"
                                                + (f" ({a.get('reason')})" if a.get("reason") else "")
                                                for a in approvals) or "none required"))
        out.append(f"- dataset fingerprint: `{fp.get('value', 'none (compute-only party)')}` "
                   f"({fp.get('scope', '-')})")
        key_id = hashlib.sha256(str(att.get("public_key", "")).encode()).hexdigest()[:16]
        out.append(f"- release key: `{key_id}`; Ed25519 signature: `{att.get('signature', 'MISSING')}`")
        out.append("")
    out += ["## Statistics (released values only)", ""]
    for name, res in (result.get("results") or {}).items():
        kind = res.get("kind")
        out.append(f"### {name} ({kind})")
        for key in ("value", "columns", "rows", "cols", "edges", "terms", "coefficients", "std_errors",
                    "conf_int", "n", "r_squared", "min_count"):
            if key in res:
                out.append(f"- {key}: {_fmt(res[key])}")
        for key in ("counts", "matrix"):
            if key in res:
                out.append(f"- {key}: {_fmt(res[key])}")
                if key == "counts" and _nulls(res[key]):
                    out.append(f"- suppressed cells (below min_count): {_nulls(res[key])}")
        noise = res.get("noise")
        if noise:
            out.append(f"- noise: {noise.get('mechanism')}, scale {_fmt(noise.get('scale'))}, "
                       f"95% half-width {_fmt(noise.get('ci95_halfwidth'))} (in the statistic's units)")
            extra = {k: v for k, v in noise.items() if k not in ("mechanism", "scale", "ci95_halfwidth")}
            if extra:
                out.append(f"- noise detail: {json.dumps(extra, sort_keys=True)}")
        out.append("")
    return out


def render(result: dict, fmt: str = "md") -> str:
    """The release report of ``result`` as Markdown (``md``) or HTML (``html``); it embeds the
    result (base64 of its canonical JSON) so that ``verify_file`` can check it."""
    # the result as given (key order kept: the rendering follows it), compact ASCII JSON
    embedded = base64.b64encode(json.dumps(result, separators=(",", ":"), ensure_ascii=True,
                                           allow_nan=False).encode("ascii")).decode("ascii")
    lines = _lines(result)
    if fmt == "md":
        return "\n".join(lines) + f"\n{_BEGIN}{embedded}{_END}\n"
    if fmt != "html":
        raise ConfigError(f"report format {fmt!r}: expected md or html")
    body = "\n".join(f"<p>{html.escape(line)}</p>" if line and not line.startswith("#") else
                     (f"<h{len(line) - len(line.lstrip('#'))}>{html.escape(line.lstrip('# '))}"
                      f"</h{len(line) - len(line.lstrip('#'))}>" if line else "") for line in lines)
    title = html.escape(str(result.get("protocol")))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Release report: {title}"
            f"</title></head>\n<body>\n{body}\n</body></html>\n{_BEGIN}{embedded}{_END}\n")


def _embedded(text: str) -> tuple[dict, str]:
    start = text.rfind(_BEGIN)
    if start < 0:
        raise ReportError("not a jointstats release report (no embedded result)")
    end = text.find(_END, start + len(_BEGIN))
    try:
        raw = base64.b64decode(text[start + len(_BEGIN):end], validate=True)
        result = json.loads(raw)
    except (ValueError, TypeError):
        raise ReportError("the embedded result is damaged") from None
    return result, ("html" if text.lstrip().startswith("<!DOCTYPE html>") else "md")


def load_keys(directory: str | Path | None) -> dict[str, str] | None:
    """Pinned release keys: ``DIR/<party>.pub`` (PEM) per party, or None."""
    if directory is None:
        return None
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"--keys {d}: not a directory of <party>.pub release keys")
    return {p.stem: p.read_text() for p in d.glob("*.pub")}


def verify_file(path: str | Path, keys: dict[str, str] | None = None) -> list[str]:
    """Verify a result JSON (``--out``) or a release report; the lines to print, or ReportError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({type(exc).__name__})") from None
    if text.lstrip().startswith("{"):
        try:
            result = json.loads(text)
        except ValueError:
            raise ReportError(f"{path}: not valid JSON") from None
        lines = verify_result(result, keys)
        from jointstats.result import Result
        if text.rstrip("\n") != Result.from_dict(result).to_json():
            raise ReportError(f"{path}: the signatures hold but the file is not as released "
                              f"(bytes changed outside the signed values)")
        return lines + [f"{path}: result verified"]
    result, fmt = _embedded(text)
    lines = verify_result(result, keys)
    if render(result, fmt) != text:
        raise ReportError(f"{path}: the report text differs from the signed result it embeds "
                          f"(the report was changed)")
    return lines + [f"{path}: report verified ({fmt})"]
