"""Keys and certificates: a consortium CA, party certificates bound to name and index,
analyst signing keys, signed submissions and mutual-TLS contexts.

MPyC checks only that a peer's certificate chains to the CA. Each party certificate
therefore carries a SAN URI ``jointstats://party/<index>/<name>``; after the handshake a
node calls :func:`check_peer_identity` so that a valid certificate of one party cannot
be used to impersonate another.

Private keys are written unencrypted (PEM, PKCS#8) with mode 0600: protect them with
file-system permissions.
"""
from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import ipaddress
import json
import re
import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jointstats._files import atomic_write
from jointstats.errors import AuthError, ConfigError, StaleRequestError

__all__ = [
    "make_ca",
    "make_party_cert",
    "party_identity",
    "check_peer_identity",
    "make_analyst_key",
    "submission_message",
    "sign_submission",
    "verify_submission",
    "ssl_context",
    "PARTY_URI_SCHEME",
]

PARTY_URI_SCHEME = "jointstats://party/"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_URI_RE = re.compile(r"^jointstats://party/(0|[1-9][0-9]{0,5})/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
_SUBMISSION_DOMAIN = b"jointstats-submission-v1\n"
_CA_DAYS = 3650
_PARTY_DAYS = 825


# --------------------------------------------------------------------------- files

def _check_name(name: str, what: str) -> None:
    """Names become file names and URI parts: letters, digits, '_', '.', '-' only."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{what} name {name!r} must be 1-64 characters of letters, digits, "
                          f"'_', '.' or '-', starting with a letter or digit")


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode`` (also jointstats.consortium.crl)."""
    atomic_write(path, data, mode=mode)


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """Refuse to clobber existing keys unless asked to: a lost key cannot be recovered."""
    if overwrite:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"{', '.join(existing)} already exists; refusing to overwrite "
                          f"(pass overwrite=True to replace it)")


def _read(path: str | Path, what: str) -> bytes:
    """Read a key or certificate file, turning a missing file into a ConfigError."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from exc


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """PEM PKCS#8, unencrypted."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> _dt.datetime:
    """Current UTC time."""
    return _dt.datetime.now(_dt.timezone.utc)


# --------------------------------------------------------------------------- CA and party certs

def make_ca(out_dir: str | Path, *, common_name: str = "jointstats consortium CA",
            overwrite: bool = False) -> tuple[Path, Path]:
    """Create a self-signed ECDSA P-256 consortium CA: ``out_dir/ca.crt`` and ``out_dir/ca.key`` (0600)."""
    out = Path(out_dir)
    crt_path, key_path = out / "ca.crt", out / "ca.key"
    _refuse_overwrite([crt_path, key_path], overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path


def _load_ca(ca_dir: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load ``ca.crt`` and ``ca.key`` from ``ca_dir`` and check that they belong together."""
    d = Path(ca_dir)
    try:
        cert = x509.load_pem_x509_certificate(_read(d / "ca.crt", "CA certificate"))
        key = serialization.load_pem_private_key(_read(d / "ca.key", "CA key"), password=None)
    except ValueError as exc:
        raise ConfigError(f"CA in {d}: cannot parse ca.crt/ca.key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"CA key {d / 'ca.key'} is not an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise ConfigError(f"CA in {d}: ca.key does not match ca.crt")
    return cert, key


def make_party_cert(name: str, index: int, ca_dir: str | Path, out_dir: str | Path, *,
                    overwrite: bool = False) -> tuple[Path, Path]:
    """Issue ``out_dir/NAME.crt`` and ``NAME.key`` for party ``name`` at ``index``, bound by a SAN URI."""
    _check_name(name, "party")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ConfigError(f"party {name!r}: index must be an integer >= 0, got {index!r}")
    ca_cert, ca_key = _load_ca(ca_dir)
    out = Path(out_dir)
    crt_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _refuse_overwrite([crt_path, key_path], overwrite)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + _dt.timedelta(days=_PARTY_DAYS), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.UniformResourceIdentifier(f"{PARTY_URI_SCHEME}{index}/{name}"),
        ]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return crt_path, key_path


def _load_cert(data: bytes) -> x509.Certificate:
    """Parse a certificate given as DER or PEM bytes; AuthError if it is neither."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AuthError(f"expected certificate bytes, got {type(data).__name__}")
    raw = bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise AuthError(f"peer certificate cannot be parsed: {exc}") from exc


def party_identity(cert_der_or_pem: bytes) -> tuple[str, int]:
    """The (name, index) a party certificate is bound to, from its ``jointstats://party/I/NAME`` SAN URI."""
    cert = _load_cert(cert_der_or_pem)
    subject = cert.subject.rfc4514_string()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    ours = [u for u in uris if u.startswith(PARTY_URI_SCHEME)]
    if not ours:
        raise AuthError(f"certificate {subject!r} carries no jointstats party identity "
                        f"(no {PARTY_URI_SCHEME}<index>/<name> SAN URI)")
    if len(ours) > 1:
        raise AuthError(f"certificate {subject!r} carries {len(ours)} party identities; expected one")
    m = _URI_RE.match(ours[0])
    if not m:
        raise AuthError(f"certificate {subject!r} has a malformed party identity {ours[0]!r}")
    index, name = int(m.group(1)), m.group(2)
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [name]:
        raise AuthError(f"certificate {subject!r}: common name {cns!r} does not match its "
                        f"party identity {name!r}")
    return name, index


def check_peer_identity(cert_der: bytes | None, expected_name: str, expected_index: int) -> None:
    """Raise AuthError unless the (already CA-verified) peer certificate is bound to this name and index."""
    if not cert_der:
        raise AuthError(f"peer at index {expected_index} presented no certificate, "
                        f"expected one for {expected_name!r} (index {expected_index})")
    try:
        name, index = party_identity(cert_der)
    except AuthError as exc:
        raise AuthError(f"peer at index {expected_index} (expected {expected_name!r}): {exc}") from exc
    if (name, index) != (expected_name, expected_index):
        raise AuthError(f"peer at index {expected_index} presented a certificate for {name!r} "
                        f"(index {index}), expected {expected_name!r} (index {expected_index})")


# --------------------------------------------------------------------------- analyst keys

def make_analyst_key(name: str, out_dir: str | Path, *, overwrite: bool = False
                     ) -> tuple[Path, Path]:
    """Create an Ed25519 signing pair: ``NAME.key`` (PKCS#8 PEM, 0600) and ``NAME.pub`` (for policy.analysts)."""
    _check_name(name, "analyst")
    out = Path(out_dir)
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    _refuse_overwrite([key_path, pub_path], overwrite)
    key = ed25519.Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(pub_path, pub, 0o644)
    return key_path, pub_path


def submission_message(spec_text: str, job_id: str, timestamp: int, analyst: str) -> bytes:
    """The canonical bytes an analyst signs: domain tag + sorted JSON of analyst, job id, spec hash, timestamp."""
    if not isinstance(spec_text, str):
        raise TypeError("spec_text must be str")
    if not isinstance(job_id, str) or not job_id:
        raise AuthError("job id must be a non-empty string")
    if not isinstance(analyst, str) or not analyst:
        raise AuthError("analyst must be a non-empty string")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise AuthError(f"timestamp must be an integer (seconds since the epoch), "
                        f"got {type(timestamp).__name__}")
    body = {
        "analyst": analyst,
        "job_id": job_id,
        "spec_sha256": hashlib.sha256(spec_text.encode("utf-8")).hexdigest(),
        "timestamp": timestamp,
    }
    return _SUBMISSION_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=True).encode("ascii")


def sign_submission(key_path: str | Path, spec_text: str, job_id: str, timestamp: int,
                    analyst: str) -> str:
    """Sign a submission with the analyst's Ed25519 key; returns the base64 signature."""
    try:
        key = serialization.load_pem_private_key(_read(key_path, "analyst key"), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"analyst key {key_path}: cannot parse: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"analyst key {key_path} is not an Ed25519 private key")
    sig = key.sign(submission_message(spec_text, job_id, timestamp, analyst))
    return base64.b64encode(sig).decode("ascii")


def _load_pub(pub_path: str | Path) -> ed25519.Ed25519PublicKey:
    """Load an analyst's Ed25519 public key (PEM) from the node's policy."""
    try:
        pub = serialization.load_pem_public_key(_read(pub_path, "analyst public key"))
    except ValueError as exc:
        raise ConfigError(f"analyst public key {pub_path}: cannot parse: {exc}") from exc
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        raise ConfigError(f"analyst public key {pub_path} is not an Ed25519 key")
    return pub


def verify_submission(pub_path: str | Path, spec_text: str, job_id: str, timestamp: int,
                      analyst: str, signature: str, *, now: int, max_skew: int = 300) -> None:
    """Raise AuthError unless ``signature`` is the analyst's over these exact four values and fresh."""
    pub = _load_pub(pub_path)
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise AuthError(f"submission {job_id!r} from {analyst!r}: signature is not valid base64") from None
    try:
        pub.verify(sig, submission_message(spec_text, job_id, timestamp, analyst))
    except InvalidSignature:
        raise AuthError(f"submission {job_id!r} from {analyst!r}: invalid signature (signed with "
                        f"another key, or the spec, job id, timestamp or analyst was altered)") from None
    age = now - timestamp
    if age > max_skew:
        raise StaleRequestError(f"submission {job_id!r} from {analyst!r} is stale: signed {age} s "
                                f"before the node's clock (at most {max_skew} s allowed)")
    if -age > max_skew:
        raise StaleRequestError(f"submission {job_id!r} from {analyst!r} is dated {-age} s in the "
                                f"future (at most {max_skew} s of clock skew allowed)")


# --------------------------------------------------------------------------- TLS

def ssl_context(role: Literal["server", "client"], crt: str | Path, key: str | Path,
                ca: str | Path) -> ssl.SSLContext:
    """A mutual-TLS context (TLS >= 1.2, peer cert required both ways); identity is checked by check_peer_identity."""
    if role == "server":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    elif role == "client":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    else:
        raise ValueError(f"role must be 'server' or 'client', got {role!r}")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False          # we verify the bound party identity instead
    ctx.verify_mode = ssl.CERT_REQUIRED
    for path, what in ((crt, "certificate"), (key, "key"), (ca, "CA certificate")):
        if not Path(path).is_file():
            raise ConfigError(f"tls {what} {path}: no such file")
    try:
        ctx.load_cert_chain(str(crt), str(key))
    except ssl.SSLError as exc:
        raise ConfigError(f"tls: cannot load certificate {crt} with key {key}: {exc}") from exc
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise ConfigError(f"tls: cannot load CA certificate {ca}: {exc}") from exc
    return ctx
