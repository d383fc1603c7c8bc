"""keys: consortium CA, party certificates bound to name and index, analyst signatures, mutual TLS."""
from __future__ import annotations

import base64
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from jointstats.errors import AuthError, ConfigError
from jointstats.consortium.keys import (
    check_peer_identity,
    make_analyst_key,
    make_ca,
    make_party_cert,
    party_identity,
    sign_submission,
    ssl_context,
    submission_message,
    verify_submission,
)

SPEC = "name: cohort-summary\ndataset: cohort\nstatistics:\n  n: {kind: count}\n"
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One CA with two parties, and a foreign CA with an impostor using a valid-looking identity."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d / "ca")
    out = {"ca": d / "ca", "dir": d}
    for i, name in enumerate(["hospital_a", "hospital_b"]):
        out[name] = make_party_cert(name, i, d / "ca", d / "parties")
    make_ca(d / "foreign_ca")
    out["impostor"] = make_party_cert("hospital_a", 0, d / "foreign_ca", d / "foreign")
    return out


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --------------------------------------------------------------------------- CA and party certificates

def test_make_ca(tmp_path: Path) -> None:
    crt, key = make_ca(tmp_path)
    assert (crt, key) == (tmp_path / "ca.crt", tmp_path / "ca.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = _load(crt)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)                      # self-signed
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    k = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert k.public_key().public_numbers() == cert.public_key().public_numbers()


def test_keys_are_not_overwritten_silently(tmp_path: Path) -> None:
    make_ca(tmp_path)
    before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        make_ca(tmp_path)
    assert (tmp_path / "ca.key").read_bytes() == before
    make_ca(tmp_path, overwrite=True)
    assert (tmp_path / "ca.key").read_bytes() != before
    make_analyst_key("alice", tmp_path)
    with pytest.raises(ConfigError):
        make_analyst_key("alice", tmp_path)


def test_party_cert_contents(pki: dict[str, Path]) -> None:
    crt, key = pki["hospital_b"]
    assert crt.name == "hospital_b.crt" and key.name == "hospital_b.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = _load(crt)
    ca = _load(pki["ca"] / "ca.crt")
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=hospital_b"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["jointstats://party/1/hospital_b"]
    # the foreign CA's impostor does not chain to our CA
    with pytest.raises(Exception):
        _load(pki["impostor"][0]).verify_directly_issued_by(ca)


def test_party_identity_round_trip_pem_and_der(pki: dict[str, Path]) -> None:
    pem = pki["hospital_b"][0].read_bytes()
    der = _load(pki["hospital_b"][0]).public_bytes(serialization.Encoding.DER)
    assert party_identity(pem) == ("hospital_b", 1)
    assert party_identity(der) == ("hospital_b", 1)
    assert party_identity(pki["hospital_a"][0].read_bytes()) == ("hospital_a", 0)


def test_party_identity_absent_or_garbage(pki: dict[str, Path]) -> None:
    with pytest.raises(AuthError, match="no jointstats party identity"):
        party_identity((pki["ca"] / "ca.crt").read_bytes())       # the CA cert has no party URI
    with pytest.raises(AuthError, match="cannot be parsed"):
        party_identity(b"\x30\x03not a certificate")


def test_bad_party_names_and_indices(pki: dict[str, Path], tmp_path: Path) -> None:
    for bad in ["", "../evil", "a/b", "x" * 65, "spa ce"]:
        with pytest.raises(ConfigError):
            make_party_cert(bad, 0, pki["ca"], tmp_path)
    for bad_index in [-1, 1.5, True]:
        with pytest.raises(ConfigError):
            make_party_cert("ok", bad_index, pki["ca"], tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ca.crt"):
        make_party_cert("ok", 0, tmp_path / "no_such_ca", tmp_path)


def test_check_peer_identity(pki: dict[str, Path]) -> None:
    der_b = _load(pki["hospital_b"][0]).public_bytes(serialization.Encoding.DER)
    check_peer_identity(der_b, "hospital_b", 1)
    with pytest.raises(AuthError) as exc:
        check_peer_identity(der_b, "hospital_a", 0)
    assert str(exc.value) == ("peer at index 0 presented a certificate for 'hospital_b' (index 1), "
                              "expected 'hospital_a' (index 0)")
    with pytest.raises(AuthError, match=r"for 'hospital_b' \(index 1\), expected 'hospital_b' \(index 2\)"):
        check_peer_identity(der_b, "hospital_b", 2)       # right name, wrong index
    with pytest.raises(AuthError, match="presented no certificate"):
        check_peer_identity(None, "hospital_b", 1)
    ca_der = _load(pki["ca"] / "ca.crt").public_bytes(serialization.Encoding.DER)
    with pytest.raises(AuthError, match="peer at index 1"):
        check_peer_identity(ca_der, "hospital_b", 1)


# --------------------------------------------------------------------------- analyst keys and signed submissions

def test_make_analyst_key(tmp_path: Path) -> None:
    key, pub = make_analyst_key("alice", tmp_path / "k")
    assert (key.name, pub.name) == ("alice.key", "alice.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert isinstance(serialization.load_pem_private_key(key.read_bytes(), None), ed25519.Ed25519PrivateKey)
    assert isinstance(serialization.load_pem_public_key(pub.read_bytes()), ed25519.Ed25519PublicKey)


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_analyst_key("alice", tmp_path_factory.mktemp("analyst"))


def test_sign_and_verify(alice: tuple[Path, Path]) -> None:
    key, pub = alice
    sig = sign_submission(key, SPEC, "job-1", NOW, "alice")
    assert len(base64.b64decode(sig)) == 64
    verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW + 10)
    verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW + 300)     # boundary
    verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW - 300)


def test_canonical_message_covers_all_four(alice: tuple[Path, Path]) -> None:
    base = submission_message(SPEC, "job-1", NOW, "alice")
    assert len({base,
                submission_message(SPEC + " ", "job-1", NOW, "alice"),
                submission_message(SPEC, "job-2", NOW, "alice"),
                submission_message(SPEC, "job-1", NOW + 1, "alice"),
                submission_message(SPEC, "job-1", NOW, "alicf")}) == 5


@pytest.mark.parametrize("field", ["spec", "job_id", "timestamp", "analyst"])
def test_altered_submission_is_rejected(alice: tuple[Path, Path], field: str) -> None:
    key, pub = alice
    sig = sign_submission(key, SPEC, "job-1", NOW, "alice")
    args = {"spec_text": SPEC, "job_id": "job-1", "timestamp": NOW, "analyst": "alice"}
    args[{"spec": "spec_text"}.get(field, field)] = {
        "spec": SPEC.replace("count", "sum"), "job_id": "job-2",
        "timestamp": NOW + 1, "analyst": "mallory"}[field]
    with pytest.raises(AuthError, match="invalid signature"):
        verify_submission(pub, signature=sig, now=NOW, **args)


def test_wrong_key_and_bad_base64(alice: tuple[Path, Path], tmp_path: Path) -> None:
    key, pub = alice
    _, other_pub = make_analyst_key("bob", tmp_path)
    sig = sign_submission(key, SPEC, "job-1", NOW, "alice")
    with pytest.raises(AuthError, match="invalid signature"):
        verify_submission(other_pub, SPEC, "job-1", NOW, "alice", sig, now=NOW)
    with pytest.raises(AuthError, match="not valid base64"):
        verify_submission(pub, SPEC, "job-1", NOW, "alice", "!!!notbase64", now=NOW)
    with pytest.raises(AuthError, match="invalid signature"):
        verify_submission(pub, SPEC, "job-1", NOW, "alice", base64.b64encode(b"x" * 64).decode(), now=NOW)
    with pytest.raises(ConfigError, match="cannot parse"):      # a private key where the public one belongs
        verify_submission(tmp_path / "bob.key", SPEC, "job-1", NOW, "alice", sig, now=NOW)
    ec_pub = tmp_path / "ec.pub"
    ec_pub.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        verify_submission(ec_pub, SPEC, "job-1", NOW, "alice", sig, now=NOW)
    with pytest.raises(ConfigError, match="cannot read"):
        verify_submission(tmp_path / "nobody.pub", SPEC, "job-1", NOW, "alice", sig, now=NOW)


def test_stale_and_future_timestamps(alice: tuple[Path, Path]) -> None:
    key, pub = alice
    sig = sign_submission(key, SPEC, "job-1", NOW, "alice")
    with pytest.raises(AuthError, match=r"stale: signed 301 s before .*at most 300 s"):
        verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW + 301)
    with pytest.raises(AuthError, match=r"dated 301 s in the future"):
        verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW - 301)
    with pytest.raises(AuthError, match="stale"):
        verify_submission(pub, SPEC, "job-1", NOW, "alice", sig, now=NOW + 11, max_skew=10)
    with pytest.raises(AuthError, match="timestamp must be an integer"):
        sign_submission(key, SPEC, "job-1", float(NOW), "alice")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- mutual TLS over loopback

def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, object]:
    """Run one TLS connection over 127.0.0.1; returns each side's peer cert (DER) or exception."""
    out: dict[str, object] = {}
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(10)
    port = lsock.getsockname()[1]

    def server() -> None:
        try:
            conn, _ = lsock.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                out["server_peer"] = tls.getpeercert(binary_form=True)
                tls.sendall(b"hello from server")
                out["server_got"] = tls.recv(100)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["server_error"] = exc

    t = threading.Thread(target=server, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw) as tls:
                out["client_peer"] = tls.getpeercert(binary_form=True)
                out["client_got"] = tls.recv(100)
                tls.sendall(b"hello from client")
    except Exception as exc:  # noqa: BLE001
        out["client_error"] = exc
    t.join(15)
    lsock.close()
    assert not t.is_alive()
    return out


def _ctx(pki: dict[str, Path], role: str, who: str) -> ssl.SSLContext:
    crt, key = pki[who]
    ca = pki["ca"] / "ca.crt"
    return ssl_context(role, crt, key, ca)  # type: ignore[arg-type]


def test_mutual_tls_handshake_and_bound_identity(pki: dict[str, Path]) -> None:
    out = _handshake(_ctx(pki, "server", "hospital_a"), _ctx(pki, "client", "hospital_b"))
    assert "server_error" not in out and "client_error" not in out, out
    assert out["client_got"] == b"hello from server"
    assert out["server_got"] == b"hello from client"
    check_peer_identity(out["server_peer"], "hospital_b", 1)      # server checks its client
    check_peer_identity(out["client_peer"], "hospital_a", 0)      # client checks its server
    with pytest.raises(AuthError, match="presented a certificate for 'hospital_a'"):
        check_peer_identity(out["client_peer"], "hospital_b", 1)


def test_client_cert_from_foreign_ca_is_rejected(pki: dict[str, Path]) -> None:
    foreign = ssl_context("client", *pki["impostor"], pki["ca"] / "ca.crt")
    out = _handshake(_ctx(pki, "server", "hospital_b"), foreign)
    assert isinstance(out.get("server_error"), ssl.SSLError), out
    assert "server_got" not in out and "client_got" not in out


def test_server_cert_from_foreign_ca_is_rejected(pki: dict[str, Path]) -> None:
    foreign = ssl_context("server", *pki["impostor"], pki["ca"] / "ca.crt")
    out = _handshake(foreign, _ctx(pki, "client", "hospital_b"))
    assert isinstance(out.get("client_error"), ssl.SSLCertVerificationError), out
    assert "client_got" not in out and "server_got" not in out


def test_client_without_certificate_is_rejected(pki: dict[str, Path]) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(pki["ca"] / "ca.crt")
    out = _handshake(_ctx(pki, "server", "hospital_a"), bare)
    assert isinstance(out.get("server_error"), ssl.SSLError), out
    assert "server_got" not in out and "client_got" not in out


def test_ssl_context_settings_and_errors(pki: dict[str, Path], tmp_path: Path) -> None:
    for role in ("server", "client"):
        ctx = _ctx(pki, role, "hospital_a")
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="role"):
        ssl_context("peer", *pki["hospital_a"], pki["ca"] / "ca.crt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no such file"):
        ssl_context("client", tmp_path / "x.crt", pki["hospital_a"][1], pki["ca"] / "ca.crt")
    with pytest.raises(ConfigError, match="cannot load certificate"):
        ssl_context("client", pki["hospital_a"][0], pki["hospital_b"][1], pki["ca"] / "ca.crt")
