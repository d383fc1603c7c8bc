"""Revocation of party TLS certificates: a certificate revocation list (CRL) of the
consortium CA, checked by every node on every MPC connection.

``jointstats keys revoke CERT --ca DIR [--out FILE]`` adds a party certificate to the CA's
CRL (``DIR/ca.crl`` by default; made, signed by the CA key, on first use) and
``jointstats keys crl --ca DIR`` issues an empty one. Each party names the CRL in its
config (``mpc.tls.crl: keys/ca.crl``) and distributes new versions like the CA certificate.
A node builds its TLS contexts anew for every job and every rendezvous, reading the CRL
file each time, so a revocation takes effect at the next connection without a restart: a
revoked peer fails the TLS handshake (OpenSSL's leaf CRL check), and the error names it.
"""
from __future__ import annotations

import datetime as _dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from jointstats.errors import ConfigError

__all__ = ["CRL_DAYS", "issue_crl", "revoke", "apply_crl", "revoked_serials"]

#: Days a CRL stays valid (OpenSSL refuses an expired CRL: reissue it before then).
CRL_DAYS = 365


def _write(path: Path, data: bytes) -> None:
    from jointstats.consortium.keys import _write_atomic
    _write_atomic(path, data, 0o644)


def revoked_serials(crl_path: Path) -> list[int]:
    """The serial numbers a CRL file revokes (empty if the file does not exist)."""
    if not crl_path.exists():
        return []
    try:
        crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    except ValueError as exc:
        raise ConfigError(f"CRL {crl_path}: cannot parse: {exc}") from None
    return [r.serial_number for r in crl]


def issue_crl(ca_dir: str | Path, serials: list[int], out: str | Path | None = None) -> Path:
    """Sign a CRL revoking ``serials`` with the CA in ``ca_dir``; write it (default ``ca.crl``)."""
    from jointstats.consortium.keys import _load_ca
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _dt.datetime.now(_dt.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - _dt.timedelta(minutes=5))
               .next_update(now + _dt.timedelta(days=CRL_DAYS)))
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    path = Path(out) if out else Path(ca_dir) / "ca.crl"
    _write(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def revoke(cert_path: str | Path, ca_dir: str | Path, out: str | Path | None = None) -> tuple[Path, str]:
    """Add the certificate at ``cert_path`` to the CA's CRL; (CRL path, the certificate's party)."""
    from jointstats.consortium.keys import party_identity
    try:
        data = Path(cert_path).read_bytes()
        cert = x509.load_pem_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"certificate {cert_path}: cannot read ({type(exc).__name__})") from None
    name, index = party_identity(data)
    path = Path(out) if out else Path(ca_dir) / "ca.crl"
    issue_crl(ca_dir, revoked_serials(path) + [cert.serial_number], path)
    return path, f"{name} (index {index})"


def apply_crl(ctx: ssl.SSLContext, crl: Path | None) -> None:
    """Make ``ctx`` check peers' certificates against the CRL file ``crl`` (if configured)."""
    if crl is None:
        return
    if not crl.is_file():
        raise ConfigError(f"tls crl {crl}: no such file (issue one with jointstats keys crl)")
    try:
        ctx.load_verify_locations(cafile=str(crl))
    except ssl.SSLError as exc:
        raise ConfigError(f"tls crl {crl}: cannot load: {exc}") from None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


# ----------------------------------------------------------------------------- rotation

def _pending_path(crl_path: Path) -> Path:
    return crl_path.with_name(crl_path.name + ".pending.json")


def rotate(name: str, index: int, ca_dir: str | Path, out_dir: str | Path, old_cert: str | Path,
           until: _dt.datetime, crl: str | Path | None = None) -> tuple[Path, Path]:
    """Issue party ``name`` a new certificate in ``out_dir`` and schedule the old one
    (``old_cert``) for revocation at ``until``: both work until then (identity is the party's
    name and index, not the certificate), and ``issue_pending`` (``jointstats keys crl``) adds
    the old one to the CRL once ``until`` has passed. Returns (new certificate, new key)."""
    import json
    from jointstats.consortium.keys import make_party_cert, party_identity
    try:
        data = Path(old_cert).read_bytes()
        old = x509.load_pem_x509_certificate(data)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--old {old_cert}: cannot read a certificate ({type(exc).__name__})") from None
    if party_identity(data) != (name, index):
        raise ConfigError(f"--old {old_cert} is not party {name!r}'s certificate at index {index}")
    if until.tzinfo is None:
        raise ConfigError("--until: give a time zone, e.g. 2027-01-31T00:00:00+00:00")
    out = Path(out_dir)
    if (out / f"{name}.crt").resolve() == Path(old_cert).resolve():
        raise ConfigError("--out: write the new certificate beside, not over, the old one")
    crt, key = make_party_cert(name, index, ca_dir, out)
    crl_path = Path(crl) if crl else Path(ca_dir) / "ca.crl"
    pending_path = _pending_path(crl_path)
    pending = json.loads(pending_path.read_text()) if pending_path.exists() else []
    pending.append({"serial": old.serial_number, "party": name, "index": index,
                    "revoke_at": until.isoformat()})
    _write(pending_path, json.dumps(pending, indent=1).encode())
    return crt, key


def issue_pending(ca_dir: str | Path, out: str | Path | None = None,
                  now: _dt.datetime | None = None) -> tuple[Path, int]:
    """Reissue the CRL with every scheduled revocation whose time has come; (path, how many
    scheduled revocations took effect now)."""
    import json
    path = Path(out) if out else Path(ca_dir) / "ca.crl"
    pending_path = _pending_path(path)
    pending = json.loads(pending_path.read_text()) if pending_path.exists() else []
    now = now or _dt.datetime.now(_dt.timezone.utc)
    due = [p for p in pending if _dt.datetime.fromisoformat(p["revoke_at"]) <= now]
    issue_crl(ca_dir, revoked_serials(path) + [p["serial"] for p in due], path)
    if due:
        _write(pending_path, json.dumps([p for p in pending if p not in due], indent=1).encode())
    return path, len(due)
