"""Mutual TLS between parties, with each peer's certificate bound to its name and index.

MPyC itself only checks that a peer's certificate chains to the consortium CA. Here a
party also checks that the peer at MPC index ``i`` presents a certificate naming
``mpc.parties[i]`` (name *and* index, see :mod:`jointstats.consortium.keys`), so one valid party
certificate cannot be used to impersonate another party.

``configure_tls(rt, cfg)`` is called on a :class:`jointstats.mpc.runtime.JointRuntime` before
``rt.start()``. Refusals:

* the connecting side checks the listener's certificate (CA chain in the handshake,
  identity right after it) and fails at once naming the party it dialled;
* the listening side checks the identity as soon as the peer announces its index and
  fails at once naming it; a peer whose certificate does not chain to the CA fails the
  handshake before it can announce anything, so the listener reports it when that party
  then fails to connect ("party 'x' did not connect ...; a connection from ... presented
  a certificate not issued by the consortium CA").
"""
from __future__ import annotations

import ssl

from jointstats.consortium.config import PartyConfig
from jointstats.errors import AuthError, ConfigError, PartyError, PeerTlsError
from jointstats.consortium.keys import check_peer_identity, party_identity, ssl_context

__all__ = ["configure_tls", "check_own_certificate"]


def check_own_certificate(cfg: PartyConfig) -> None:
    """ConfigError unless this party's own certificate names it at its own index."""
    assert cfg.tls is not None
    try:
        pem = cfg.tls.cert.read_bytes()
    except OSError as exc:
        raise ConfigError(f"party {cfg.party!r}: tls certificate {cfg.tls.cert}: cannot read: "
                          f"{exc.strerror or exc}") from None
    try:
        name, index = party_identity(pem)
    except AuthError as exc:
        raise ConfigError(f"party {cfg.party!r}: tls certificate {cfg.tls.cert}: {exc}") from None
    if (name, index) != (cfg.party, cfg.index):
        raise ConfigError(f"party {cfg.party!r}: tls certificate {cfg.tls.cert} is issued to "
                          f"{name!r} (index {index}), but this party is {cfg.party!r} at index "
                          f"{cfg.index} of mpc.parties")


def _handshake_reason(exc: BaseException) -> str:
    """A short, operator-readable reason for a failed TLS handshake."""
    reason = getattr(exc, "reason", None) or ""
    text = getattr(exc, "verify_message", None) or reason or str(exc) or type(exc).__name__
    if reason == "CERTIFICATE_VERIFY_FAILED" and "revoked" in text:
        return f"the peer's certificate is revoked by the consortium CA's CRL ({text})"
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return f"the peer's certificate is not issued by the consortium CA ({text})"
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "the peer presented no certificate"
    if reason == "TLSV1_ALERT_UNKNOWN_CA":
        return "the peer does not trust this party's certificate (another consortium CA?)"
    return text


def _holder(cert_der: bytes | None, names: list[str], me: int) -> int | None:
    """The index of the other party this (CA-verified) certificate is bound to, if any."""
    from jointstats.consortium.keys import party_identity
    try:
        name, index = party_identity(cert_der) if cert_der else (None, -1)
    except Exception:  # noqa: BLE001 - no party identity in it: nobody to name
        return None
    return index if 0 <= index < len(names) and index != me and names[index] == name else None


def configure_tls(rt, cfg: PartyConfig) -> None:
    """Set ``rt.ssl_server``, ``rt.ssl_client`` and ``rt.verify_peer`` from ``cfg.tls``.

    Must be called inside the running asyncio loop of ``rt`` (as ``PartyJob.run`` does).
    """
    if cfg.tls is None:
        raise ConfigError(f"party {cfg.party!r}: mpc.tls is not configured")
    check_own_certificate(cfg)
    t = cfg.tls
    rt.ssl_server = ssl_context("server", t.cert, t.key, t.ca)
    rt.ssl_client = ssl_context("client", t.cert, t.key, t.ca)
    from jointstats.consortium.crl import apply_crl  # revoked party certificates: re-read for every runtime
    apply_crl(rt.ssl_server, t.crl)
    apply_crl(rt.ssl_client, t.crl)
    names = [p.name for p in cfg.peers]
    me = cfg.index

    def verify_peer(cert_der: bytes | None, pid: int) -> None:
        if not 0 <= pid < len(names) or pid == me:
            raise AuthError(f"a peer announced MPC index {pid}, which is not another party of "
                            f"this consortium ({len(names)} parties; this is {cfg.party!r} at {me})")
        try:
            check_peer_identity(cert_der, names[pid], pid)
        except AuthError as exc:
            holder = _holder(cert_der, names, me)
            if holder is not None and holder != pid:
                # a party of the consortium (its certificate chains to the CA) claiming
                # another's index: name the certificate's holder, not the impersonated party
                err = AuthError(f"TLS identity check of party {names[holder]!r} (index {holder}) "
                                f"failed: it announced index {pid} ({names[pid]!r})")
                err.culprit = holder
                raise err from None
            raise AuthError(f"TLS identity check of party {names[pid]!r} (index {pid}) "
                            f"failed: {exc}") from None

    rt.verify_peer = verify_peer

    # A peer whose certificate does not chain to the CA fails inside the TLS handshake,
    # before it announces its index, so no party can be named at that moment. Remember
    # why (through the context's documented ``sslobject_class`` hook) and add it to the
    # error if a party then fails to connect. Such a failure does not abort the job by
    # itself, so a stray connection to the port cannot disrupt a job.
    rejected: list[str] = []

    class _RecordingSSLObject(ssl.SSLObject):
        def do_handshake(self):
            try:
                return super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                rejected.append(_handshake_reason(exc))
                raise

    rt.ssl_server.sslobject_class = _RecordingSSLObject
    start = rt.start

    async def start_with_tls_report(timeout: float = 60.0) -> None:
        try:
            await start(timeout)
        except PartyError as exc:
            if rejected:
                raise PeerTlsError(f"{exc}; a connection to {cfg.party!r} was refused in the TLS "
                                   f"handshake: {rejected[-1]}") from None
            raise

    rt.start = start_with_tls_report
