"""The only module that imports MPyC.

MPyC parses ``sys.argv`` when it is imported (and eats abbreviations such as ``--l``),
so the import is shielded here; runtimes for real parties are built explicitly.
"""
from __future__ import annotations

import sys

_saved_argv = sys.argv
sys.argv = [_saved_argv[0] if _saved_argv else "jointstats"]
try:
    import mpyc  # noqa: E402
    import mpyc.runtime as _mpyc_runtime  # noqa: E402
    from mpyc import asyncoro as _asyncoro  # noqa: E402
    from mpyc import sectypes as _sectypes  # noqa: E402
finally:
    sys.argv = _saved_argv

Runtime = _mpyc_runtime.Runtime
MPYC_VERSION: str = mpyc.__version__


def _trust_fixed_primes() -> None:
    """Create MPyC's prime fields for the fixed regression primes without its primality test.

    ``mpyc.finfields.pGF`` runs ``gmpy2.is_prime`` on every new modulus (about 15 ms per
    2048-bit prime, per party, per job); these primes are public constants checked once by
    ``tests/unit/test_fields.py``, so the test is skipped for exactly them (pGF is cached).
    """
    from mpyc import finfields
    from ._fields import all_regression_primes
    trusted = set(all_regression_primes())
    real = finfields.gmpy2

    class _Trusting:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def is_prime(n, *args):
            return int(n) in trusted or real.is_prime(n, *args)

    finfields.gmpy2 = _Trusting()
    try:
        for p in trusted:
            finfields.pGF(p, 2, p - 1)  # the (p, n, w) key that finfields.GF(p) uses
    finally:
        finfields.gmpy2 = real


_trust_fixed_primes()


def local_runtime() -> "Runtime":
    """The single-process MPyC runtime (one party, no network): for unit tests only."""
    return _mpyc_runtime.mpc


def _install(rt: "Runtime") -> None:
    """Make ``rt`` the runtime that MPyC's secure types and helpers use."""
    _sectypes.runtime = rt
    _asyncoro.runtime = rt
    mpyc.mpctools.runtime = rt
    mpyc.seclists.runtime = rt
    mpyc.secpols.runtime = rt
    mpyc.secgroups.runtime = rt
    mpyc.random.runtime = rt
    mpyc.statistics.runtime = rt
    _mpyc_runtime.mpc = rt


def make_runtime(pid: int, addresses: list[tuple[str, int]], threshold: int | None = None,
                 runtime_class: type | None = None) -> "Runtime":
    """Build (but do not start) the runtime of party ``pid`` among ``addresses``.

    Must be called inside the running asyncio loop that will drive the computation.
    """
    options = mpyc._get_arg_parser().parse_args([])
    m = len(addresses)
    options.threshold = (m - 1) // 2 if threshold is None else threshold
    options.no_async = m == 1
    options.no_prss = False
    options.no_log = True
    options.sec_param = options.sec_param or 30
    options.bit_length = options.bit_length or 32
    parties = [_mpyc_runtime.Party(i, host, int(port)) for i, (host, port) in enumerate(addresses)]
    cls = runtime_class or Runtime
    rt = cls(pid, parties, options)
    _install(rt)
    return rt


# ----------------------------------------------------------------------------- real parties

import asyncio  # noqa: E402
import socket  # noqa: E402
import ssl as _ssl  # noqa: E402
from typing import Awaitable, Callable  # noqa: E402

from .errors import AuthError, PartyError  # noqa: E402


def _keepalive(transport) -> None:
    """Short TCP keepalive so a silently dropped network surfaces within seconds."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    except OSError:
        pass


class _Exchanger(_asyncoro.MessageExchanger):
    """MPyC's message exchanger plus peer identity checks and loss reporting."""

    def connection_made(self, transport):
        _keepalive(transport)
        rt = self.runtime
        self.identity = None
        if rt.verify_peer is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            self.identity = cert
            if self.peer_pid is not None and not self._check(self.peer_pid, transport):
                return
        super().connection_made(transport)

    def _check(self, pid: int, transport) -> bool:
        rt = self.runtime
        try:
            rt.verify_peer(self.identity, pid)
        except AuthError as exc:
            rt.report_failure(pid, str(exc))
            transport.close()
            return False
        return True

    def data_received(self, data):
        known = self.peer_pid
        if known is None and self.runtime.verify_peer is not None and len(self.bytes) + len(data) >= 2:
            pid = int.from_bytes((bytes(self.bytes) + bytes(data))[:2], "little")
            if not self._check(pid, self.transport):
                return
        super().data_received(data)

    def connection_lost(self, exc):
        rt = self.runtime
        if not rt.closing and self.peer_pid is not None:
            rt.report_failure(self.peer_pid, f"party {rt.name_of(self.peer_pid)!r} disconnected"
                              + (f" ({exc})" if exc else ""))
        if self.peer_pid is not None and rt.parties[self.peer_pid].protocol is self:
            rt.unset_protocol(self.peer_pid)


class JointRuntime(Runtime):
    """An MPyC runtime for one party of a job: named peers, timeouts, TLS identity checks.

    ``report_failure`` resolves ``failed`` as soon as a peer is lost or misbehaves, so every
    wait in :meth:`guard` stops with an error naming that peer instead of hanging.
    """

    names: list[str] = []
    closing = False
    verify_peer: Callable[[bytes | None, int], None] | None = None
    ssl_server: _ssl.SSLContext | None = None
    ssl_client: _ssl.SSLContext | None = None

    def name_of(self, pid: int) -> str:
        """Name of the party with MPC index ``pid``."""
        return self.names[pid] if 0 <= pid < len(self.names) else f"#{pid}"

    def report_failure(self, pid: int, reason: str) -> None:
        """Record the first failure of a peer; wakes every guarded wait."""
        if not self.failed.done():
            self.failed.set_result((pid, reason))

    def _send_message(self, peer_pid, data):
        """MPyC's, except that a message to a peer already lost is dropped: the loss has been
        reported (``failed``) and ends every guarded wait, where MPyC would raise
        AttributeError inside one of its tasks and stop the event loop, hiding the reason."""
        protocol = self.parties[peer_pid].protocol
        if protocol is not None:
            protocol.send(self._program_counter[0], data)

    def _receive_message(self, peer_pid):
        """MPyC's, except that a message from a peer already lost never arrives (as above)."""
        protocol = self.parties[peer_pid].protocol
        if protocol is None:
            return self._loop.create_future()
        return protocol.receive(self._program_counter[0])

    def unset_protocol(self, peer_pid):
        """Deregister a peer, tolerating a connection that closes before it registered."""
        if self.parties[self.pid].protocol is None or self.parties[self.pid].protocol.done():
            self.parties[peer_pid].protocol = None
            return
        super().unset_protocol(peer_pid)

    async def start(self, timeout: float = 60.0) -> None:
        """Listen for lower-index peers, connect to higher ones; fail naming who is missing."""
        loop = self._loop
        self.failed = loop.create_future()
        for peer in self.parties:
            peer.protocol = asyncio.Future(loop=loop) if peer.pid == self.pid else None
        me = self.parties[self.pid]
        self._server = None
        if self.pid:
            try:
                self._server = await loop.create_server(lambda: _Exchanger(self), host=me.host,
                                                        port=me.port, ssl=self.ssl_server,
                                                        reuse_address=True)
            except OSError as exc:
                raise PartyError(f"party {self.name_of(self.pid)!r} cannot listen on "
                                 f"{me.host}:{me.port} ({exc.strerror})") from None
        deadline = loop.time() + timeout

        async def connect(peer):
            pause = 0.002  # a peer listens as soon as its process is up: poll it briskly
            while True:
                try:
                    await loop.create_connection(lambda: _Exchanger(self, peer.pid), peer.host,
                                                 peer.port, ssl=self.ssl_client,
                                                 server_hostname=peer.host if self.ssl_client else None)
                    return
                except (OSError, _ssl.SSLError) as exc:
                    if isinstance(exc, _ssl.SSLError):
                        raise PartyError(f"TLS handshake with party {self.name_of(peer.pid)!r} "
                                         f"failed ({exc.reason})") from None
                    if loop.time() > deadline:
                        raise PartyError(f"could not connect to party {self.name_of(peer.pid)!r} at "
                                         f"{peer.host}:{peer.port} within {timeout:.0f} s") from None
                    await asyncio.sleep(pause)
                    pause = min(1.25 * pause, 0.1)

        try:
            await self.guard(asyncio.gather(*(connect(p) for p in self.parties[self.pid + 1:])),
                             timeout + 5, "connecting")
            await self.guard(me.protocol, max(deadline - loop.time(), 1.0), "connecting")
        except PartyError as exc:
            missing = [self.name_of(p.pid) for p in self.parties
                       if p.pid != self.pid and p.protocol is None]
            names = ", ".join(map(repr, missing))
            plural = "ies" if len(missing) > 1 else "y"
            if "timed out" in str(exc) and missing:
                raise PartyError(f"part{plural} {names} did not connect within {timeout:.0f} s") from None
            if missing and "could not connect" not in str(exc):
                raise PartyError(f"{exc} (part{plural} {names} did not connect)") from None
            raise
        finally:
            if self._server is not None:
                self._server.close()
        self.start_time = __import__("time").time()

    async def guard(self, awaitable: Awaitable, timeout: float, what: str):
        """Await ``awaitable`` unless a peer fails first or ``timeout`` seconds pass."""
        task = asyncio.ensure_future(awaitable)
        done, _ = await asyncio.wait({task, self.failed}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if self.failed.done():
            pid, reason = self.failed.result()
            raise PartyError(f"{reason} during {what}")
        waiting = [self.name_of(p.pid) for p in self.parties if p.pid != self.pid
                   and p.protocol is not None and not isinstance(p.protocol, asyncio.Future)
                   and any(isinstance(b, asyncio.Future) for b in p.protocol.buffers.values())]
        who = f" from part{'ies' if len(waiting) > 1 else 'y'} {', '.join(map(repr, waiting))}" if waiting else ""
        raise PartyError(f"timed out after {timeout:.0f} s waiting{who} during {what}")

    async def close(self, timeout: float = 30.0) -> None:
        """Synchronise with all peers, then close the connections.

        A peer lost before or during the final barrier fails the job (PartyError naming it)
        even if the reveals completed without it (an honest majority of shares suffices),
        so that no party reports success for a job that another party did not finish.
        """
        await self.guard(self.transfer("end"), timeout, "the end of the job")
        self.closing = True  # from here on, connections closing are expected
        try:
            await asyncio.wait_for(self.shutdown(), timeout)
        except asyncio.TimeoutError:
            pass

    def abort(self) -> None:
        """Drop every peer connection at once (after a failure): no shutdown handshake."""
        self.closing = True
        for peer in self.parties:
            proto = peer.protocol
            if peer.pid != self.pid and proto is not None and hasattr(proto, "transport"):
                proto.transport.close()

    def bytes_sent(self) -> int:
        """Bytes this party has sent to all peers so far."""
        return sum(p.protocol.nbytes_sent for p in self.parties
                   if p.pid != self.pid and p.protocol is not None
                   and not isinstance(p.protocol, asyncio.Future))


@_asyncoro.mpc_coro
async def _branch(coro) -> asyncio.Future:
    try:
        return True, await coro
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, never to the loop
        return False, exc


def start_branch(coro: Awaitable) -> asyncio.Future:
    """Start ``coro`` (an un-awaited coroutine of MPC steps) on its own branch of MPyC's
    program counter, fixed at the moment of this call, and return a future of its result.

    Several branches can then be in flight at once and share their round trips: every party
    starts them in the same order, so every message is still matched, whatever order the
    branches happen to resume in. An exception inside is re-raised by ``await_branch``
    (MPyC would otherwise stop the event loop).
    """
    return _branch(coro)


async def await_branch(future: asyncio.Future):
    """The result of a branch started by ``start_branch`` (its exception re-raised)."""
    ok, value = await future
    if not ok:
        raise value
    return value


@_asyncoro.mpc_coro
async def open_local(rt: "Runtime", compute: Callable, operands: list):
    """Reveal ``compute(*shares)``, a function of degree at most 2 of the secure ``operands``'
    own shares (their products, say), in one round and without resharing.

    Each party adds its share of a pseudorandom sharing of zero of degree 2t (MPyC's PRSS,
    as MPyC's own ``is_zero_public`` does) and the value is opened from 2t + 1 shares: the
    opened sharing is then a random one of the value, so nothing but the value is learnt.
    It saves the degree reduction (a round, and a random split of every value) that a secure
    product followed by ``rt.output`` costs. Needs 2t < m, which MPyC's threshold
    t = (m - 1) // 2 gives. Returns a future of the opened field array. (No return annotation:
    MPyC would take it for the placeholder's type and not expect the ``returnType`` below.)
    """
    await rt.returnType(asyncio.Future)
    shares = await rt.gather(list(operands))
    value = compute(*shares)
    t = rt.threshold
    if t:
        field = value.field
        zero = _mpyc_runtime.thresha.np_pseudorandom_share_0(
            field, len(rt.parties), rt.pid, rt.prfs(field.order), rt._prss_uci(), value.size)
        value = value + zero.reshape(value.shape)
    return await rt.output(value, threshold=2 * t)


def make_party_runtime(pid: int, names: list[str], addresses: list[tuple[str, int]]) -> JointRuntime:
    """Build the runtime of party ``pid`` (call inside the running asyncio loop)."""
    from . import _mpc_speedups
    _mpc_speedups.install_exact()  # same values, and the same on every party
    _mpc_speedups.install()  # random splits drawn in bulk (the same distribution)
    rt = make_runtime(pid, addresses, runtime_class=JointRuntime)
    rt.names = list(names)
    return rt
