"""The node API's server: uvicorn (HTTP/1.1 on h11, TLS through uvicorn's own options) with
the limits an outsider must not be able to exceed.

Connections and requests are bounded at two levels:

* **connections** (:class:`Connections`, kept by :class:`_Protocol`, a subclass of uvicorn's
  h11 protocol): at most ``max_per_client`` from one client address (an IPv6 client counts by
  its /64, which one holder gets whole) and ``max_connections`` in all. When all are taken,
  a new connection takes the place of one that has not yet sent its whole request (the
  oldest of the address holding the most connections): idle or slow connections from a few
  addresses can never lock other clients out. Others are answered 503 at once, unread.
  A connection must send its whole request (line, headers, body) within
  ``request_deadline`` seconds and may last ``connection_deadline`` seconds in all,
  however slowly it trickles its bytes; past that it is cut.
* **requests** (:class:`Guard`, ASGI middleware in front of the app): the body is refused
  from its declared size before it is read (411 without a Content-Length, 413 above
  ``max_body``), read whole within the deadline, and only then handed to the app; at most
  ``max_requests`` requests are served at once, ``max_requests_per_client`` per client
  address (503 at once otherwise). One request per connection (``Connection: close``).

uvicorn's own limits are set too: the request head size (``h11_max_incomplete_event_size``)
and ``limit_concurrency`` as a backstop above ``max_connections``. Malformed HTTP (a bad
request line, Content-Length or header) is answered by uvicorn's protocol with one line of
JSON like every other refusal.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from jointstats.node.errors import ApiError
from jointstats.errors import ConfigError

if TYPE_CHECKING:
    from jointstats.node.service import Node

__all__ = ["Limits", "Connections", "Guard", "ApiServer", "make_server", "client_key"]

# _Protocol overrides these methods of uvicorn's h11 protocol (uvicorn 0.30 to 0.55 have them):
# fail at import, naming them, on a uvicorn without them
_OVERRIDDEN = ("connection_made", "connection_lost", "eof_received", "send_400_response",
               "handle_events")
if not all(callable(getattr(H11Protocol, name, None)) for name in _OVERRIDDEN):
    raise ImportError(f"jointstats' node API needs uvicorn's H11Protocol with "
                      f"{', '.join(_OVERRIDDEN)} (written for uvicorn 0.30-0.55; this is "
                      f"uvicorn {uvicorn.__version__})")


@dataclass(frozen=True)
class Limits:
    """What one client, and all clients together, may take of the API server."""

    #: Largest request body accepted (bytes).
    max_body: int = 1 << 20
    #: Largest request line plus headers (bytes); above it 431.
    max_head: int = 64 << 10
    #: Seconds a client has to send its whole request (line, headers and body), from its connection.
    request_deadline: float = 20.0
    #: Seconds a connection may last in all, the node's answer included.
    connection_deadline: float = 120.0
    #: Connections at once, in all and per client address.
    max_connections: int = 64
    max_per_client: int = 16
    #: Requests being served at once (read whole, answer not yet sent), in all and per address.
    max_requests: int = 32
    max_requests_per_client: int = 8

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ConfigError(f"api limits: {f.name} must be positive")


def client_key(host: str | None) -> str:
    """The address limits count by: an IPv4 address, or the /64 of an IPv6 address (an
    IPv4-mapped IPv6 address counts as its IPv4 address)."""
    try:
        ip = ipaddress.ip_address((host or "").split("%", 1)[0])
    except ValueError:
        return host or "?"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# ----------------------------------------------------------------------------- connections

class _Conn:
    """One connection as the limits see it."""

    __slots__ = ("key", "peer", "protocol", "since", "state", "released")

    def __init__(self, key: str, peer: tuple | None, protocol: Any):
        self.key, self.peer, self.protocol = key, peer, protocol
        self.since = time.monotonic()
        self.state = "reading"  # "reading" until the request is read whole, then "serving"
        self.released = False


class Connections:
    """The connections and requests being served, per client address. Used only from the
    server's event loop (no lock needed)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.by_peer: dict[tuple, _Conn] = {}
        self._conns: set[_Conn] = set()
        self._per_key: Counter[str] = Counter()
        self._serving: Counter[str] = Counter()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._conns)

    def admit(self, conn: _Conn) -> bool:
        """Take ``conn`` in, or False (then it is answered 503). When all slots are taken, the
        oldest connection still reading its request, of the address holding the most
        connections, is cut to make room."""
        lim = self.limits
        if self._per_key[conn.key] >= lim.max_per_client:
            return False
        if len(self._conns) >= lim.max_connections:
            victim = self._victim()
            if victim is None:
                return False
            self.release(victim)
            self.evicted += 1
            victim.protocol.transport.abort()
        self._conns.add(conn)
        if conn.peer is not None:
            self.by_peer[conn.peer] = conn
        self._per_key[conn.key] += 1
        return True

    def _victim(self) -> _Conn | None:
        reading = [c for c in self._conns if c.state == "reading"]
        if not reading:
            return None
        return max(reading, key=lambda c: (self._per_key[c.key], -c.since))

    def release(self, conn: _Conn) -> None:
        if conn.released:
            return
        conn.released = True
        self._conns.discard(conn)
        if conn.peer is not None and self.by_peer.get(conn.peer) is conn:
            del self.by_peer[conn.peer]
        self._per_key[conn.key] -= 1
        if not self._per_key[conn.key]:
            del self._per_key[conn.key]
        if conn.state == "serving":
            self._serve_done(conn)

    def start_serving(self, conn: _Conn) -> str | None:
        """Mark ``conn``'s request read whole; a reason to answer 503 if it must wait."""
        lim = self.limits
        if sum(self._serving.values()) >= lim.max_requests:
            return "too many requests at once; try again later"
        if self._serving[conn.key] >= lim.max_requests_per_client:
            return "too many requests at once from this client address; try again later"
        conn.state = "serving"
        self._serving[conn.key] += 1
        return None

    def _serve_done(self, conn: _Conn) -> None:
        self._serving[conn.key] -= 1
        if not self._serving[conn.key]:
            del self._serving[conn.key]

    def finish_serving(self, conn: _Conn) -> None:
        if conn.state == "serving" and not conn.released:
            self._serve_done(conn)
        conn.state = "done"

    def serving(self) -> int:
        return sum(self._serving.values())


def _raw_answer(status: int, message: str, kind: str) -> bytes:
    """A whole HTTP answer with a one-line JSON error, for the protocol level."""
    from http import HTTPStatus
    body = json.dumps({"error": message, "kind": kind}).encode()
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n"
            + ("Retry-After: 1\r\n" if status == 503 else "") + "\r\n").encode() + body


_BUSY = _raw_answer(503, "too many connections; try again later", "Busy")


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the connection limits and deadlines, one-line JSON
    for malformed HTTP, and an answer even to a client that half-closes after its request.
    A subclass per server (:func:`_protocol_for`) carries its ``registry``."""

    registry: Connections

    def connection_made(self, transport) -> None:  # type: ignore[override]
        # TCP_NODELAY: asyncio sets it only on sockets whose proto is IPPROTO_TCP, and the
        # listening socket from socket.create_server has proto 0; without it the answer's
        # second TLS record waits for the client's delayed ACK (about 40 ms a request)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        super().connection_made(transport)
        self._timers: list[asyncio.TimerHandle] = []
        conn = _Conn(client_key(self.client[0] if self.client else None), self.client, self)
        if not self.registry.admit(conn):
            self._conn = None
            transport.write(_BUSY)
            transport.close()
            return
        self._conn = conn
        lim = self.registry.limits
        self._timers = [self.loop.call_later(lim.request_deadline, self._late, False),
                        self.loop.call_later(lim.connection_deadline, self._late, True)]

    def _late(self, whole: bool) -> None:
        """A deadline passed: cut the connection (the request deadline only while reading)."""
        conn = self._conn
        if conn is not None and (whole or conn.state == "reading"):
            self.registry.release(conn)
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._conn is not None:
            self.registry.release(self._conn)
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:
        """The client half-closed. Mid-body: answer 400 (the body is shorter than its
        Content-Length). Request read whole: keep the connection to send the answer.
        Otherwise (nothing or part of a request head) close it."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self.conn.receive_data(b"")
            self.handle_events()  # h11 raises: the body ended early -> send_400_response
            return True
        if state in (h11.DONE, h11.MUST_CLOSE, h11.MIGHT_SWITCH_PROTOCOL):
            return True
        return None

    def send_400_response(self, msg: str) -> None:
        """Malformed HTTP (uvicorn calls this while handling h11's error): one line of JSON
        naming what h11 found, with h11's status (400, or 431 for a head too large)."""
        exc = sys.exc_info()[1]
        reason = str(exc) if isinstance(exc, h11.ProtocolError) and str(exc) else msg
        status = getattr(exc, "error_status_hint", 400)
        status = status if 400 <= status < 500 else 400
        self.transport.write(_raw_answer(status, f"malformed HTTP request: {reason}"[:300],
                                         "HTTPError"))
        self.transport.close()


def _protocol_for(registry: Connections) -> type[_Protocol]:
    return type("Protocol", (_Protocol,), {"registry": registry})


# ----------------------------------------------------------------------------- requests

_CONTENT_LENGTH_DIGITS = 12


async def _answer(send, error: ApiError) -> None:
    body = json.dumps(error.payload()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]
                + ([(b"retry-after", b"1")] if error.status == 503 else [])})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: HTTP version, body size (from its Content-Length, before reading),
    the body read whole, the request limits, path normalisation, ``Connection: close``.
    The app finds the body in ``scope["state"]["body"]`` (``request.state.body``)."""

    def __init__(self, app, registry: Connections):
        self.app = app
        self.registry = registry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        conn = self.registry.by_peer.get(tuple(scope.get("client") or ()))

        async def closing_send(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"connection", b"close")]}
            await send(message)

        try:
            body = await self._read(scope, receive)
        except ApiError as exc:
            return await _answer(closing_send, exc)
        if body is None:  # the client went away
            return
        if conn is not None:
            busy = self.registry.start_serving(conn)
            if busy is not None:
                return await _answer(closing_send, ApiError(503, busy, "Busy"))
        try:
            # routed on the path as sent (percent escapes kept, as a signed read signs it),
            # trailing slashes dropped
            path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
            scope = {**scope, "path": path.rstrip("/") or "/",
                     "state": {**scope.get("state", {}), "body": body}}
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()
            await self.app(scope, replay, closing_send)
        finally:
            if conn is not None:
                self.registry.finish_serving(conn)

    async def _read(self, scope, receive) -> bytes | None:
        """The whole body, or None if the client went away (the connection's deadline cuts a
        slow one); ApiError for what is refused before reading."""
        limits = self.registry.limits
        if scope.get("http_version") not in ("1.0", "1.1"):
            raise ApiError(400, f"unsupported HTTP version {scope.get('http_version')!r}",
                           "HTTPError")
        lengths = []
        for name, value in scope.get("headers", []):
            if name == b"transfer-encoding":
                raise ApiError(411, "send the body with a Content-Length, not a Transfer-Encoding",
                               "HTTPError")
            if name == b"content-length":
                lengths.append(value.strip())
        if len(set(lengths)) > 1 or not all(v.isdigit() and len(v) <= _CONTENT_LENGTH_DIGITS
                                            for v in lengths):
            raise ApiError(400, "bad Content-Length (one non-negative integer)", "HTTPError")
        length = int(lengths[0]) if lengths else 0
        if length > limits.max_body:
            raise ApiError(413, f"request body larger than {limits.max_body} bytes", "HTTPError")
        if not length:  # nothing to read (and no "100 Continue" for an Expect header)
            return b""
        chunks, got = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            got += len(chunk)
            if got > limits.max_body:  # cannot happen with a Content-Length; kept as a bound
                raise ApiError(413, f"request body larger than {limits.max_body} bytes", "HTTPError")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


# ----------------------------------------------------------------------------- the server

def _quiet_uvicorn() -> None:
    """uvicorn's own log lines (a client's malformed request, a lost connection) are a
    client's doing, not the node's: kept out of the node's log."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        log = logging.getLogger(name)
        log.propagate = False
        if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
            log.addHandler(logging.NullHandler())


def _tls_context(config: uvicorn.Config, default) -> ssl.SSLContext:
    """uvicorn's server context for the API certificate, TLS 1.2 at least."""
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ApiServer:
    """The API of one node on uvicorn, bound at construction (so that the port is known and
    a taken port is a ConfigError at once). ``serve_forever`` runs it (in a thread of its
    own, with its own event loop); ``shutdown`` stops it and waits; ``server_close`` frees
    the port."""

    def __init__(self, node: "Node | None", sock: socket.socket, limits: Limits,
                 api_cert: str | Path | None = None, api_key: str | Path | None = None):
        from jointstats.node.http import create_app
        _quiet_uvicorn()
        self.limits = limits
        self.registry = Connections(limits)
        self._sock = sock
        self.server_address = sock.getsockname()
        config = uvicorn.Config(
            Guard(create_app(node), self.registry), http=_protocol_for(self.registry),
            ws="none", lifespan="off", loop="asyncio", interface="asgi3", log_config=None,
            access_log=False, proxy_headers=False, server_header=False,
            limit_concurrency=2 * limits.max_connections, timeout_keep_alive=5,
            timeout_graceful_shutdown=5, h11_max_incomplete_event_size=limits.max_head,
            ssl_certfile=str(api_cert) if api_cert else None,
            ssl_keyfile=str(api_key) if api_key else None,
            ssl_context_factory=_tls_context if api_cert else None)
        try:
            config.load()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"api tls: cannot load {api_cert} with key {api_key}: "
                              f"{exc}") from None
        self.tls = config.ssl
        self.server = uvicorn.Server(config)
        self._done = threading.Event()
        self._done.set()

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until :meth:`shutdown` (``poll_interval``: accepted for the callers of the
        earlier http.server API, unused)."""
        self._done.clear()
        try:
            self.server.run(sockets=[self._sock])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self._sock.close()

    def connections(self) -> int:
        """Connections being served now."""
        return len(self.registry)


def make_server(node: "Node", host: str | None = None, port: int | None = None,
                api_cert: str | Path | None = None, api_key: str | Path | None = None,
                **limits) -> ApiServer:
    """An API server for ``node`` bound to ``host:port`` (default: the config's ``api``);
    HTTPS with ``api_cert`` and ``api_key``; ``limits``: fields of :class:`Limits`."""
    host = node.config.api_host if host is None else host
    port = node.config.api_port if port is None else port
    if bool(api_cert) != bool(api_key):
        raise ConfigError("--api-cert and --api-key must be given together")
    try:
        lim = Limits(**limits)
    except TypeError as exc:
        raise ConfigError(f"api limits: {exc}") from None
    try:
        sock = socket.create_server((host, port), backlog=128)
    except OSError as exc:
        raise ConfigError(f"party {node.config.party!r}: cannot listen for analysts on "
                          f"{host}:{port} ({exc.strerror})") from None
    try:
        return ApiServer(node, sock, lim, api_cert, api_key)
    except BaseException:
        sock.close()
        raise
