"""The only module that imports MPyC.

MPyC parses ``sys.argv`` when it is imported (and eats abbreviations such as ``--l``),
so the import is shielded here; runtimes for real parties are built explicitly.

MPyC 0.11 pickles the messages it exchanges, so a peer could run code on the receiver. Every
runtime with peers built here is a :class:`JointRuntime`, whose transfer, input, output and
resharing steps send and receive with the typed codec of ``jointstats.mpc.codec`` instead: each
receiving step decodes exactly what it expects, and a peer sending anything else is dropped
and named. MPyC's own ``pickle`` is replaced by a stand-in that never unpickles.
"""
from __future__ import annotations

import sys

from jointstats.mpc import codec as _codec
from jointstats.errors import (AuthError, PartyError, PartyTimeoutError, PeerLostError, PeerTlsError,
                     PeerUnreachableError)

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
#: The one MPyC version whose private API this module and ``_mpc_speedups`` replace (the
#: runtime's message handling, its exchanger, thresha's share functions): checked here only.
SUPPORTED_MPYC = "0.11"
if MPYC_VERSION != SUPPORTED_MPYC:
    raise ImportError(f"jointstats needs MPyC {SUPPORTED_MPYC} exactly (it replaces parts of its "
                      f"runtime, so that no peer message is ever unpickled), found MPyC {MPYC_VERSION}")


class _Kept:
    """An object handed from MPyC's runtime to itself, in this process, without pickling."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj


class _NoPickle:
    """Stands in for ``pickle`` inside ``mpyc.runtime``: nothing there is ever pickled again.

    The party runtime (:class:`JointRuntime`) sends and receives every message with the typed
    codec (``jointstats.mpc.codec``) and never reaches MPyC's pickling paths. What is left of them
    (the single-process runtime handing a value to itself) gets the object back as it was;
    bytes from anywhere else are refused, so a path overlooked here fails instead of
    unpickling a peer's message."""

    @staticmethod
    def dumps(obj, *args, **kwargs):
        return _Kept(obj)

    @staticmethod
    def loads(data, *args, **kwargs):
        if type(data) is _Kept:
            return data.obj
        raise PartyError("refused to unpickle a message (MPyC's pickling path is disabled)")


_mpyc_runtime.pickle = _NoPickle


def _trust_fixed_primes() -> None:
    """Create MPyC's prime fields for the fixed regression primes without its primality test.

    ``mpyc.finfields.pGF`` runs ``gmpy2.is_prime`` on every new modulus (about 15 ms per
    2048-bit prime, per party, per job); these primes are public constants checked once by
    ``tests/unit/test_fields.py``, so the test is skipped for exactly them (pGF is cached).
    """
    from mpyc import finfields
    from jointstats.plan.fields import all_regression_primes
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


_SINGLE = _mpyc_runtime.mpc  # MPyC's own single-process runtime, as built at its import


def local_runtime() -> "Runtime":
    """The single-process MPyC runtime (one party, no network): for unit tests only.

    Made current again each time: a party runtime built in the same process (a test's)
    replaces MPyC's current runtime and its event loop ends with that runtime's."""
    if _mpyc_runtime.mpc is not _SINGLE:
        _install(_SINGLE)
    return _SINGLE


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
    # every runtime with peers is a JointRuntime: typed messages, never MPyC's pickles
    cls = runtime_class or (JointRuntime if m > 1 else Runtime)
    rt = cls(pid, parties, options)
    _install(rt)
    return rt


# ----------------------------------------------------------------------------- real parties

import asyncio  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import ssl as _ssl  # noqa: E402
from typing import Awaitable, Callable  # noqa: E402


#: Seconds between two heartbeats on each link (sent on a fixed period, busy or idle).
HEARTBEAT_INTERVAL = 1.0
#: Seconds without a single byte from a peer (heartbeats included) after which the job fails
#: naming it: a peer whose process is stopped or hung, or whose link silently drops traffic.
SILENCE_LIMIT = 7.0
#: The signal by which a party's watchdog thread asks its main thread for heartbeats while
#: its event loop is busy computing (default action: ignored, so a stray one is harmless).
BEAT_SIGNAL = signal.SIGURG
#: Files whose code a heartbeat written from a signal handler must not interrupt: the
#: transports, TLS and the selector (the handler then waits for the next signal).
_TRANSPORT_CODE = tuple(os.path.join(*parts) for parts in (
    ("asyncio", "selector_events.py"), ("asyncio", "sslproto.py"), ("asyncio", "transports.py"),
    ("asyncio", "streams.py"), ("asyncio", "proactor_events.py"), ("ssl.py",), ("selectors.py",),
    ("socket.py",)))


def _outside_transports(frame) -> bool:
    """True if no frame of the stack runs transport, TLS or selector code (then a write to a
    transport, from a signal handler in this thread, re-enters none of them)."""
    while frame is not None:
        if frame.f_code.co_filename.endswith(_TRANSPORT_CODE):
            return False
        frame = frame.f_back
    return True


#: Milliseconds that data sent on a link may stay unacknowledged before the kernel drops the
#: connection (TCP_USER_TIMEOUT): the second line behind the heartbeats, for a dead network.
USER_TIMEOUT_MS = 10_000


def _keepalive(transport) -> None:
    """TCP options of every party link: no Nagle delay, a short keepalive and a user timeout,
    so that a network that drops everything surfaces within seconds even without heartbeats."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except OSError:
        pass


#: Program counter of a notice frame: an honest party telling the others why it stops.
#: (MPyC's program counters are small integers or 64-bit hashes; this one is reserved.)
NOTICE_PC = -(1 << 63)
#: Program counter of a heartbeat frame (empty payload), never handed to MPyC's steps.
HEARTBEAT_PC = NOTICE_PC + 1
_FRAME = struct.Struct("<qI")
#: Seconds a party that told the others why it stops waits for them to hang up.
NOTICE_WAIT = 5.0
#: Seconds a party holds a failure it only heard of (a peer's notice naming a third party)
#: before it stops on it: evidence of its own found meanwhile (an echo mismatch, a silent or
#: lost link) is reported instead, so a hostile peer's notice cannot pre-empt it.
HEARSAY_GRACE = 1.0


class _Exchanger(_asyncoro.MessageExchanger):
    """MPyC's message exchanger with peer identity checks, loss reporting and bounded frames.

    Frames are MPyC's (8-byte program counter, 4-byte length, payload); a frame longer than
    the runtime's ``unread_limit`` is malformed (the peer is dropped and named) as soon as its
    header arrives, and so are frames no step has asked for beyond that many bytes: a peer
    makes this party hold at most twice the limit (one partial frame, the unread ones). Frames
    on HEARTBEAT_PC only prove the peer alive; those on NOTICE_PC say why it stops. A connection
    from a client claiming an index it cannot have is closed. Payloads are handed
    over as bytes; the runtime decodes each with the codec of what it expects.
    """

    def connection_made(self, transport):
        _keepalive(transport)
        rt = self.runtime
        self.identity = None
        self.dropped = False
        self.decoders = {}  # program counter -> decoder of a typed receive still waiting
        self.unread = 0  # bytes of messages held in self.buffers that no step has asked for
        self.unread_peak = 0  # the most bytes ever held unread at once
        self.largest = 0  # the longest frame received
        self.last_heard = rt._loop.time()  # when the last bytes came from the peer (liveness)
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
            rt.report_failure(getattr(exc, "culprit", pid), str(exc))
            transport.close()
            return False
        return True

    def _hello(self, buf: bytearray) -> bool:
        """The first bytes from a client: its index and its PRSS keys (MPyC's handshake)."""
        rt = self.runtime
        if len(buf) < 2:
            return False
        pid = int.from_bytes(buf[:2], "little")
        if not 0 <= pid < rt.pid or rt.parties[pid].protocol is not None:
            # only lower indices connect to us, each once: this is no party of the job
            self.dropped = True
            self.transport.close()
            return False
        if rt.verify_peer is not None and not self._check(pid, self.transport):
            self.dropped = True
            return False
        size = rt._prss_keys_from_peer(pid)
        if len(buf) < 2 + size:
            return False
        rt._prss_keys_from_peer(pid, bytes(buf[2:2 + size]))
        del buf[:2 + size]
        self.peer_pid = pid
        rt.set_protocol(pid, self)
        return True

    def _malformed(self, what: str) -> None:
        self.dropped = True
        self.runtime.drop_peer(self.peer_pid, what)

    def data_received(self, data):
        if self.dropped:
            return
        self.last_heard = self.runtime._loop.time()
        buf = self.bytes
        buf.extend(data)
        if self.peer_pid is None and not self._hello(buf):
            return
        limit = min(self.runtime.unread_limit, _codec.MAX_UNREAD)
        frame = min(self.runtime.frame_limit or limit, limit)
        while len(buf) >= 12:
            pc, size = _FRAME.unpack_from(buf)
            if size > _codec.MAX_MESSAGE:
                self._malformed(f"a message of {size} bytes, over the limit of {_codec.MAX_MESSAGE}")
                return
            if size > frame:  # refused before it is buffered: no step of this job needs it
                self._malformed(f"a message of {size} bytes, over this job's limit of {frame}")
                return
            if len(buf) < 12 + size:
                break
            if size > self.largest:
                self.largest = size
            payload = struct.unpack_from(f"{size}s", buf, 12)[0]  # one copy, as MPyC
            del buf[:12 + size]
            if pc == HEARTBEAT_PC:  # liveness only (last_heard): no step ever sees it
                try:
                    _codec.decode_heartbeat(payload)
                except _codec.CodecError as exc:
                    self._malformed(f"a malformed heartbeat ({exc})")
                    return
                continue
            if pc == NOTICE_PC:
                self._notice(payload)
                return
            held = self.buffers.get(pc)
            if not isinstance(held, asyncio.Future):
                self.unread += size
                if self.unread > self.unread_peak:
                    self.unread_peak = self.unread
                if self.unread > limit:
                    self._malformed(f"over {limit} bytes of messages no step has read")
                    return
            if held is None:
                self.buffers[pc] = payload
            elif isinstance(held, asyncio.Future):
                del self.buffers[pc]
                decode = self.decoders.pop(pc, None)
                if decode is not None:  # a typed receive: the future gets the decoded value
                    payload = self.runtime._decode(self.peer_pid, decode, payload)
                    if payload is _MALFORMED:
                        return
                if not held.done():
                    held.set_result(payload)
            elif isinstance(held, list):
                held.append(payload)
            else:  # a step that sends at a program counter whose last message is unread
                self.buffers[pc] = [held, payload]

    def receive(self, pc):
        """The payload for ``pc`` (or a future of it); messages for one program counter are
        handed out in the order they came (MPyC's own code can send a second one, e.g. its
        shutdown after a step at the same top-level counter, before the first is read)."""
        held = self.buffers.pop(pc, None)
        if held is None:
            held = self.buffers[pc] = self.runtime._loop.create_future()
        elif isinstance(held, list):
            held, rest = held[0], held[1:]
            self.buffers[pc] = rest if len(rest) > 1 else rest[0]
        if not isinstance(held, asyncio.Future):
            self.unread -= len(held)
        return held

    def _notice(self, payload: bytes) -> None:
        """A peer says which party made it stop the job, and why: the job fails naming that
        party first (the culprit), then the peer that reported it."""
        rt = self.runtime
        try:
            notice = _codec.decode_notice(payload, len(rt.parties))
        except _codec.CodecError as exc:
            self._malformed(f"a malformed notice ({exc})")
            return
        rt._noticed.add(self.peer_pid)  # it has stopped: no need to wait for it to hear ours
        if self.peer_pid not in rt._told and not self.transport.is_closing():
            # acknowledge (the same notice back): the sender may hang up once it has this,
            # without risking a reset that discards its notice before this party reads it
            rt._told.add(self.peer_pid)
            self.send(NOTICE_PC, payload)
        if notice.culprit == self.peer_pid:
            # a party speaking of itself (its node, after its worker died before connecting:
            # jointstats.node.schedule) is first-hand
            rt.report_failure(notice.culprit, f"party {rt.name_of(notice.culprit)!r} "
                                              f"{_codec.CAUSES[notice.cause]}")
            return
        rt.report_failure(notice.culprit, f"party {rt.name_of(notice.culprit)!r} "
                                          f"{_codec.CAUSES[notice.cause]} (reported by party "
                                          f"{rt.name_of(self.peer_pid)!r}, which stopped the job)",
                          hearsay=True)

    def connection_lost(self, exc):
        rt = self.runtime
        if self.peer_pid in rt._noticed:
            pass  # it told us why it stops, then hung up: its notice stands (after the grace)
        elif not rt.closing and self.peer_pid is not None and not self.dropped:
            rt.blame(self.peer_pid, _codec.LOST, f"party {rt.name_of(self.peer_pid)!r} disconnected"
                     + (f" ({exc})" if exc else ""))
        if self.peer_pid is not None and rt.parties[self.peer_pid].protocol is self:
            rt.unset_protocol(self.peer_pid)


_MALFORMED = object()


def _digest(data) -> bytes:
    import hashlib
    return hashlib.sha256(data).digest()


def _field_decoder(order: int, count: int) -> Callable:
    """Decoder of exactly ``count`` elements of the field of ``order`` elements."""
    return lambda data: _codec.decode_field_values(data, order, count)


def _values(row):
    """A row of shares (a list or numpy array of ints) as a flat numpy object array."""
    return np.asarray(row, dtype=object).reshape(-1)


def _field_values(x: list):
    """The field, shape (None for scalars) and flat share values of gathered output operands:
    a list of field elements, or a field array (only the first, as MPyC)."""
    if isinstance(x[0], _mpyc_runtime.finfields.FiniteFieldElement):
        return type(x[0]), None, _values([a.value for a in x])
    return x[0].field, x[0].value.shape, x[0].value.reshape(-1)


def _recombined(field, shape, points: list) -> list:
    """Lagrange recombination of the received and own shares: field elements for scalars,
    one field array of ``shape`` otherwise (MPyC's thresha, speed-ups included)."""
    thresha = _mpyc_runtime.thresha
    if shape is None:
        return [field(int(a)) for a in thresha.recombine(field, [(i, list(s)) for i, s in points])]
    return [thresha.np_recombine(field, points).reshape(shape)]


class JointRuntime(Runtime):
    """An MPyC runtime for one party of a job: named peers, timeouts, TLS identity checks.

    ``report_failure`` resolves ``failed`` as soon as a peer is lost or misbehaves, so every
    wait in :meth:`guard` stops with an error naming that peer instead of hanging.
    """

    names: list[str] = []
    closing = False
    failed_lost = False  # whether the failure in ``failed`` is a lost peer (report_failure)
    #: Most bytes of messages any one peer may have waiting unread (and the longest message
    #: it may send): a job's own bound from its plan (``_party.unread_limit``), this floor else.
    unread_limit: int = _codec.UNREAD_FLOOR
    #: The longest message a peer may send, when a job knows a tighter bound than
    #: ``unread_limit`` (a linked job: its share messages are chunked), else None.
    frame_limit: int | None = None
    #: A linked job's secret seed per peer for pseudorandom shares (``shamir.pair_seeds``).
    pair_seeds: dict[int, bytes] | None = None
    _notified: tuple | list = ()  # peers told why this party stops (blame), not yet gone
    _noticed: set  # peers that told this party why they stop (they need no notice from it)
    _told: set  # peers this party has sent a notice (it acknowledges a notice only once)
    verify_peer: Callable[[bytes | None, int], None] | None = None
    ssl_server: _ssl.SSLContext | None = None
    ssl_client: _ssl.SSLContext | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._noticed, self._told = set(), set()
        self._hearsay = None

    def name_of(self, pid: int) -> str:
        """Name of the party with MPC index ``pid``."""
        return self.names[pid] if 0 <= pid < len(self.names) else f"#{pid}"

    def report_failure(self, pid: int, reason: str, hearsay: bool = False, lost: bool = False) -> None:
        """Record the first failure of a peer; wakes every guarded wait. A failure only heard
        of (``hearsay``: a peer's notice) counts HEARSAY_GRACE seconds later, unless a failure
        this party finds itself comes first (or the reporting peer hangs up). ``lost``: the
        peer's connection dropped (guarded waits raise PeerLostError)."""
        if self.failed.done():
            return
        if not hearsay:
            self.failed_lost = lost
            self.failed.set_result((pid, reason))
        elif self._hearsay is None:
            self._hearsay = (pid, reason)
            self._loop.call_later(HEARSAY_GRACE, self._hearsay_due)

    def _hearsay_due(self) -> None:
        if self._hearsay is not None and not self.failed.done():
            self.failed.set_result(self._hearsay)

    def blame(self, peer_pid: int, cause: int, reason: str) -> bool:
        """Fail the job naming ``peer_pid`` (for ``cause``, one of ``_codec.CAUSES``) and tell
        every other connected party so in a notice, so that they name the same party instead
        of the first party that hangs up on them. Only the first failure counts (False after)."""
        if self.failed.done():
            return False
        self.report_failure(peer_pid, reason, lost=cause == _codec.LOST)
        if peer_pid is None:  # not yet identified: nothing to tell the others
            return True
        notice = _codec.encode_notice(peer_pid, cause)
        self._notified = []
        for peer in self.parties:
            proto = peer.protocol
            if peer.pid not in (self.pid, peer_pid) and isinstance(proto, _Exchanger) \
                    and not proto.dropped and not proto.transport.is_closing():
                proto.send(NOTICE_PC, notice)
                self._notified.append(peer.pid)
                self._told.add(peer.pid)
        return True

    # -- liveness: heartbeats out, silence in ------------------------------------------------

    max_stall = 0.0  # the longest this party's event loop was late for a heartbeat (seconds)
    _ticker = None
    _skipped = False  # the last tick came late and judged no peer

    _last_beat = 0.0  # time.monotonic() of the last heartbeats sent
    _watchdog: threading.Event | None = None  # set to stop the watchdog thread
    _old_handler = None

    def _start_heartbeats(self) -> None:
        self._tick_due = self._loop.time() + HEARTBEAT_INTERVAL
        self._ticker = self._loop.call_at(self._tick_due, self._tick)
        self._last_beat = time.monotonic()
        if threading.current_thread() is threading.main_thread() and self._watchdog is None:
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        """Keep heartbeats going while the event loop is busy in a long computation (a large
        regression's matrix products and inverses can hold it for tens of seconds): a thread
        that finds no heartbeat sent for 1.5 intervals signals the main thread (the loop's),
        whose handler, run between two bytecodes of the computation, writes the heartbeats
        itself unless it interrupted transport, TLS or selector code. So a party that computes
        is never taken for hung; one that is stopped (SIGSTOP), dead, or cut off is."""
        stop = self._watchdog = threading.Event()
        main = threading.main_thread().ident

        def on_signal(signum, frame):
            if time.monotonic() - self._last_beat > HEARTBEAT_INTERVAL and _outside_transports(frame):
                self._beat()

        def watch():
            while not stop.wait(HEARTBEAT_INTERVAL / 2):
                if self.closing or self._loop.is_closed():  # a runtime left without abort()
                    return
                if time.monotonic() - self._last_beat > 1.5 * HEARTBEAT_INTERVAL:
                    try:
                        signal.pthread_kill(main, BEAT_SIGNAL)
                    except (OSError, ValueError):
                        return
        try:
            self._old_handler = signal.signal(BEAT_SIGNAL, on_signal)
        except (ValueError, OSError):  # not the main thread of the main interpreter
            self._watchdog = None
            return
        threading.Thread(target=watch, daemon=True, name="jointstats-heartbeat").start()

    def _beat(self) -> None:
        """Send every connected peer a heartbeat (an empty frame on HEARTBEAT_PC)."""
        self._last_beat = time.monotonic()
        for peer in self.parties:
            proto = peer.protocol
            if peer.pid != self.pid and isinstance(proto, _Exchanger) and not proto.dropped \
                    and proto.transport is not None and not proto.transport.is_closing():
                proto.transport.write(_FRAME.pack(HEARTBEAT_PC, 0))

    def _tick(self) -> None:
        """Every HEARTBEAT_INTERVAL: send each connected peer a heartbeat (an empty frame on
        its reserved program counter, on a fixed period whatever the job is doing; while the
        loop computes, the watchdog has the main thread send them), and fail the job naming
        a peer from which nothing at all has come for SILENCE_LIMIT seconds.

        Data that arrived while this party's own loop was busy is read before this runs (the
        event loop handles ready sockets before due timers), and a tick that comes late
        judges nobody (the next one does), so a party that was itself slow or stopped does not
        blame a peer for it."""
        self._ticker = None
        if self.closing or self.failed.done():
            return
        now = self._loop.time()
        late = now - self._tick_due
        self.max_stall = max(self.max_stall, late)
        # this party's own loop was held up (stopped, or busy): what the peers sent meanwhile
        # may still be on its way through the loop (a reset is reported a turn later), so
        # judge at the next tick, not this one (once: a loop always late still judges)
        judge = late <= HEARTBEAT_INTERVAL or self._skipped
        self._skipped = not judge
        for peer in self.parties:
            proto = peer.protocol
            if peer.pid == self.pid or not isinstance(proto, _Exchanger) or proto.dropped \
                    or proto.transport is None or proto.transport.is_closing():
                continue
            silent = now - proto.last_heard
            if judge and silent > SILENCE_LIMIT:
                self.blame(peer.pid, _codec.SILENT,
                           f"party {self.name_of(peer.pid)!r} went silent: nothing came from it for "
                           f"{silent:.0f} s (its process hangs, or the network to it drops traffic)")
                proto.dropped = True
                proto.transport.abort()
                return
        self._beat()
        self._tick_due = now + HEARTBEAT_INTERVAL
        self._ticker = self._loop.call_at(self._tick_due, self._tick)

    def _stop_heartbeats(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._watchdog is not None:
            self._watchdog.set()
            self._watchdog = None
            try:
                signal.signal(BEAT_SIGNAL, self._old_handler or signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass

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

    # -- typed messages: every payload from a peer is decoded as what this step expects ------

    def _receive_typed(self, peer_pid: int, decode: Callable):
        """The message of ``peer_pid`` for the current step, decoded by ``decode`` (a function
        of ``_codec`` bound to what is expected): the value, or a future of it.

        A message that does not decode drops the peer (:meth:`drop_peer`); its future then
        never completes, and every guarded wait fails naming the peer (an exception inside
        an MPyC coroutine would stop the event loop instead)."""
        protocol = self.parties[peer_pid].protocol
        if protocol is None:  # lost: the loss is reported, this never arrives
            return self._loop.create_future()
        pc = self._program_counter[0]
        raw = protocol.receive(pc)
        if isinstance(raw, asyncio.Future):
            protocol.decoders[pc] = decode  # decoded as it arrives (_Exchanger.data_received)
            return raw
        value = self._decode(peer_pid, decode, raw)
        return self._loop.create_future() if value is _MALFORMED else value

    def _decode(self, peer_pid: int, decode: Callable, data):
        try:
            return decode(data)
        except _codec.CodecError as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever a peer sent, it never raises here
            why = f"{type(exc).__name__}: {exc}"
        self.drop_peer(peer_pid, why)
        return _MALFORMED

    def drop_peer(self, peer_pid: int, why: str) -> None:
        """Fail the job naming ``peer_pid``, which sent a malformed message; tell the other
        parties why (so that they name it too) and drop its connection."""
        reason = f"party {self.name_of(peer_pid)!r} sent a malformed message ({why}); dropped"
        self.blame(peer_pid, _codec.MALFORMED, reason)
        proto = self.parties[peer_pid].protocol if peer_pid is not None else None
        if proto is not None and not isinstance(proto, asyncio.Future):
            proto.dropped = True
            proto.transport.close()

    def receive_array(self, peer_pid: int, dtype, shape):
        """A numpy integer array of ``dtype`` and ``shape`` from ``peer_pid`` (a future, or
        the array); see :meth:`_receive_typed`."""
        return self._receive_typed(peer_pid, lambda data: _codec.decode_array(data, dtype, shape))

    async def transfer(self, obj, senders=None, receivers=None, sender_receivers=None, *,
                       codec: _codec.Codec | None = None):
        """MPyC's ``transfer`` (send ``obj`` from every sender to every receiver), with the
        typed ``codec`` (an int or a short text by default) instead of pickle."""
        if sender_receivers is not None:
            raise NotImplementedError("transfer with sender_receivers is not used by jointstats")
        m = len(self.parties)
        one_sender = isinstance(senders, int)
        senders = list(range(m)) if senders is None else [senders] if one_sender else list(senders)
        receivers = (list(range(m)) if receivers is None else
                     [receivers] if isinstance(receivers, int) else list(receivers))
        codec = codec or _codec.codec_for(obj)
        payload = codec.encode(obj) if self.pid in senders else None
        if payload is not None:
            for peer in receivers:
                if peer != self.pid:
                    self._send_message(peer, payload)
        if self.pid not in receivers:
            return None if one_sender else []
        decode = codec.decode
        echo = codec.echoed and len(senders) == len(receivers) == m
        if echo:  # every party's record to every party: keep a digest of each for the echo
            def decode(data, _decode=codec.decode):
                return _digest(data), _decode(data)
        got = [decode(payload) if peer == self.pid else self._receive_typed(peer, decode)
               for peer in senders]
        got = await self.gather(got)
        if echo:
            await self._echo([d for d, _ in got])
            got = [value for _, value in got]
        return got[0] if one_sender else got

    @_asyncoro.mpc_coro
    async def scatter(self, parts, senders, codec: _codec.Codec, receivers=None, skip=None):
        """Every party in ``senders`` sends each receiver (every party by default) its own
        value: ``parts[j]`` to party j (``parts`` is ignored on a party that is no sender),
        encoded by ``codec`` (once per distinct object). Returns, on a receiver, the value
        each sender sent it (a sender's own ``parts[pid]`` as it is), decoded as ``codec``
        expects; on any other party, None for each sender. Shamir sharing, where every
        party's share differs, is this; ``transfer`` sends one value to all.

        Unlike ``transfer`` it is a step of its own on MPyC's program counter (every party
        calls it, senders, receivers and bystanders alike), so two in a row between the same
        parties can never be taken for one another.

        ``skip``: for a sender, the receivers it sends nothing (they make their value
        themselves: pseudorandom shares); None for each of them here too."""
        await self.returnType(asyncio.Future)
        m = len(self.parties)
        receivers = list(range(m)) if receivers is None else list(receivers)
        skip = skip or {}
        mine = self.pid in receivers
        got = []
        for sender in senders:
            if sender != self.pid:
                wanted = mine and self.pid not in skip.get(sender, ())
                got.append(self._receive_typed(sender, codec.decode) if wanted else None)
                continue
            encoded: dict[int, bytes] = {}
            for peer in receivers:
                if peer != self.pid and peer not in skip.get(sender, ()):
                    part = parts[peer]
                    if id(part) not in encoded:
                        encoded[id(part)] = codec.encode(part)
                    self._send_message(peer, encoded[id(part)])
            got.append(parts[self.pid] if mine else None)
        return await self.gather(got)

    async def _echo(self, digests: list[bytes]) -> None:
        """The echo round after a record every party sent every party: each party sends every
        other the digests of what it received from everyone (its own record for itself) and
        compares theirs with its own. A mismatch fails the job naming the party that told
        different parties different things (see docs/node.md, "Liveness and blame").

        Who is named: a peer whose echo misstates this party's own record, or the record that
        peer sent this party, is certainly at fault; otherwise a peer ``k`` reporting another
        record from a third party ``j`` than ``j`` sent here names ``j`` (it equivocated,
        unless ``k`` lies about it: without signatures the two cannot be told apart, and the
        error says so). Either way the job stops before anything depends on the records."""
        m = len(self.parties)
        payload = _codec.encode_digests(digests)
        peers = [p for p in range(m) if p != self.pid]
        for peer in peers:
            self._send_message(peer, payload)
        echoes = await self.gather([self._receive_typed(
            peer, lambda data: _codec.decode_digests(data, m)) for peer in peers])
        me = self.name_of(self.pid)
        culprit = reason = None
        for k, echo in zip(peers, echoes):
            if echo[self.pid] != digests[self.pid]:
                culprit, reason = k, (f"party {self.name_of(k)!r} misreported the record party "
                                      f"{me!r} sent it (echo round)")
            elif echo[k] != digests[k]:
                culprit, reason = k, (f"party {self.name_of(k)!r} sent different parties different "
                                      f"records (its echo contradicts the record it sent party {me!r})")
            if culprit is not None:
                break
        else:
            for k, echo in zip(peers, echoes):
                for j in peers:
                    if j != k and echo[j] != digests[j]:
                        culprit, reason = j, (
                            f"party {self.name_of(j)!r} sent different parties different records "
                            f"(party {self.name_of(k)!r} received another one than party {me!r}; "
                            f"unless party {self.name_of(k)!r} misreports it)")
                        break
                if culprit is not None:
                    break
        if culprit is not None:
            self.blame(culprit, _codec.EQUIVOCATED, reason)
            raise PartyError(reason)

    @_asyncoro.mpc_coro
    async def _distribute(self, x, senders):
        """MPyC's input step (each sender secret-shares its x), shares sent as fixed-width
        field elements and decoded as the receiver's own x prescribes (field and shape)."""
        if not x:
            return [[] for _ in senders]
        sftype = type(x[0])
        if issubclass(sftype, self.SecureObject) and hasattr(sftype, "_input"):
            return sftype._input(x, senders)
        finfields = _mpyc_runtime.finfields
        if issubclass(sftype, self.SecureArray):
            field, shape = sftype.sectype.field, x[0].shape
        elif issubclass(sftype, self.SecureObject):
            field, shape = sftype.field, None
        elif issubclass(sftype, finfields.FiniteFieldElement):
            field, shape = sftype, None
        else:
            field, shape = sftype.field, x[0].shape
        if issubclass(sftype, self.SecureObject):
            extra = (x[0].integral,) if sftype.frac_length else ()
            rettype = ((sftype, *extra, shape) if shape is not None else
                       (sftype, *extra) if extra else sftype)
            await self.returnType(rettype, len(senders), len(x))
        else:
            await self.returnType(asyncio.Future)
        order = field.order
        count = len(x) if shape is None else math.prod(shape)
        decode = _field_decoder(order, count)
        thresha = _mpyc_runtime.thresha
        t, m = self.threshold, len(self.parties)
        shares = [None] * len(senders)
        for i, peer in enumerate(senders):
            if peer != self.pid:
                shares[i] = self._receive_typed(peer, decode)
                continue
            if issubclass(sftype, self.SecureObject):
                x = await self.gather(x)
            if shape is None:
                split = thresha.random_split(field, x, t, m)
            else:
                split = thresha.np_random_split(field, x[0].reshape(-1), t, m)
            for other, row in enumerate(split):
                if other == self.pid:
                    shares[i] = _values(row)
                else:
                    self._send_message(other, _codec.encode_field_values(row, order))
        shares = await self.gather(shares)
        if shape is None:
            return [[field(int(a)) for a in s] for s in shares]
        return [[field.array(s, check=False).reshape(shape)] for s in shares]

    @_asyncoro.mpc_coro
    async def output(self, x, receivers=None, threshold=None, raw=False):
        """MPyC's ``output`` (open x to the receivers from shares of degree ``threshold``),
        shares sent as fixed-width field elements and decoded as this party's own share of
        x prescribes (field and number of elements)."""
        x_is_list = isinstance(x, list)
        x = x[:] if x_is_list else [x]
        await self.returnType(asyncio.Future)
        if not x:
            return []
        n = len(x)
        t = self.threshold if threshold is None else threshold
        m = len(self.parties)
        receivers = (list(range(m)) if receivers is None else
                     [receivers] if isinstance(receivers, int) else list(receivers))
        sftype = type(x[0])
        if issubclass(sftype, self.SecureObject):
            if hasattr(sftype, "_output"):
                y = await sftype._output(x, receivers, threshold)
                return y if x_is_list else y[0]
            x = await self.gather(x)
        field, shape, values = _field_values(x)
        order = field.order
        payload = None
        for peer in receivers:
            if 0 < (peer - self.pid) % m <= t:
                if payload is None:
                    payload = _codec.encode_field_values(values, order)
                self._send_message(peer, payload)
        if self.pid not in receivers:
            return [None] * n if x_is_list else None
        senders = [(self.pid - t + j) % m for j in range(t)]
        decode = _field_decoder(order, len(values))
        got = await self.gather([self._receive_typed(peer, decode) for peer in senders])
        points = [(peer + 1, s) for peer, s in zip(senders, got)] + [(self.pid + 1, values)]
        y = _recombined(field, shape, points)
        if issubclass(sftype, self.SecureObject):
            convert = sftype._output_conversion
            if not raw and convert is not None:
                y = [convert(a) for a in y]
        return y if x_is_list else y[0]

    @_asyncoro.mpc_coro
    async def _reshare(self, x):
        """MPyC's resharing (degree 2t to t, a la GRR98), shares sent as fixed-width field
        elements and decoded as this party's own share prescribes."""
        x_is_list = isinstance(x, list)
        x = x if x_is_list else [x]
        if not x:
            return []
        sftype = type(x[0])
        if issubclass(sftype, self.SecureObject):
            extra = (x[0].integral,) if sftype.frac_length else ()
            if issubclass(sftype, self.SecureArray):
                rettype = (sftype, *extra, x[0].shape)
            else:
                rettype = (sftype, *extra) if extra else sftype
            if x_is_list:
                await self.returnType(rettype, len(x))
            else:
                await self.returnType(rettype)
            x = await self.gather(x)
        else:
            await self.returnType(asyncio.Future)
        t = self.threshold
        if t == 0:
            return x if x_is_list else x[0]
        field, shape, values = _field_values(x)
        order = field.order
        thresha = _mpyc_runtime.thresha
        m = len(self.parties)
        first = self._program_counter[0] % m  # the 2t + 1 dealers, as MPyC balances them
        own = None
        if (self.pid - first) % m <= 2 * t:
            split = (thresha.random_split(field, values, t, m) if shape is None else
                     thresha.np_random_split(field, values, t, m))
            for peer, row in enumerate(split):
                if peer == self.pid:
                    own = _values(row)
                else:
                    self._send_message(peer, _codec.encode_field_values(row, order))
        decode = _field_decoder(order, len(values))
        dealers = [(first + j) % m for j in range(2 * t + 1)]
        got = await self.gather([self._receive_typed(peer, decode) for peer in dealers
                                 if peer != self.pid])
        points = [(peer + 1, s) for peer, s in zip([d for d in dealers if d != self.pid], got)]
        if own is not None:
            points.append((self.pid + 1, own))
        y = _recombined(field, shape, points)
        return y if x_is_list else y[0]

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
        self.failed_lost = False
        self._noticed, self._told = set(), set()
        self._hearsay = None
        self._start_heartbeats()
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
                        why = getattr(exc, "verify_message", None) or ""
                        why = ": certificate revoked" if "revoked" in why else ""  # by the CRL
                        raise PeerTlsError(f"TLS handshake with party {self.name_of(peer.pid)!r} "
                                           f"failed ({exc.reason}{why})") from None
                    if loop.time() > deadline:
                        raise PeerUnreachableError(
                            f"could not connect to party {self.name_of(peer.pid)!r} at "
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
            if isinstance(exc, PartyTimeoutError) and missing:
                raise PeerLostError(f"part{plural} {names} did not connect within {timeout:.0f} s") from None
            if missing and not isinstance(exc, PeerUnreachableError):
                raise type(exc)(f"{exc} (part{plural} {names} did not connect)") from None
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
            if not task.cancelled() and task.exception() is not None and self._notified:
                await self._deliver_notices()  # it blamed a peer (an echo mismatch) and told the others
            return task.result()
        task.cancel()
        # a gather cancelled here may still end with a child's error: retrieve it, so that
        # asyncio does not log "exception was never retrieved" when the node shuts down
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        if self.failed.done():
            pid, reason = self.failed.result()
            await self._deliver_notices()
            raise (PeerLostError if self.failed_lost else PartyError)(f"{reason} during {what}")
        waiting = [self.name_of(p.pid) for p in self.parties if p.pid != self.pid
                   and p.protocol is not None and not isinstance(p.protocol, asyncio.Future)
                   and any(isinstance(b, asyncio.Future) for b in p.protocol.buffers.values())]
        who = f" from part{'ies' if len(waiting) > 1 else 'y'} {', '.join(map(repr, waiting))}" if waiting else ""
        raise PartyTimeoutError(f"timed out after {timeout:.0f} s waiting{who} during {what}")

    async def _deliver_notices(self, timeout: float = NOTICE_WAIT) -> None:
        """Keep the connections to the parties told why this party stops open (and read)
        until each has acknowledged the notice or hung up, for at most ``timeout`` seconds:
        closing a socket with unread data resets the connection, which can discard the
        notice before the peer reads it."""
        told, self._notified = self._notified, []
        deadline = self._loop.time() + timeout
        while self._loop.time() < deadline and any(
                self.parties[pid].protocol is not None and pid not in self._noticed for pid in told):
            await asyncio.sleep(0.01)

    async def close(self, timeout: float = 30.0) -> None:
        """Synchronise with all peers, then close the connections.

        A peer lost before or during the final barrier fails the job (PartyError naming it)
        even if the reveals completed without it (an honest majority of shares suffices),
        so that no party reports success for a job that another party did not finish.
        """
        await self.guard(self.transfer("end", codec=_codec.TEXT), timeout, "the end of the job")
        self.closing = True  # from here on, connections closing are expected
        self._stop_heartbeats()
        try:
            await asyncio.wait_for(self.shutdown(), timeout)
        except asyncio.TimeoutError:
            pass

    def abort(self) -> None:
        """Drop every peer connection at once (after a failure): no shutdown handshake."""
        self.closing = True
        self._stop_heartbeats()
        for peer in self.parties:
            proto = peer.protocol
            if peer.pid != self.pid and proto is not None and hasattr(proto, "transport"):
                proto.transport.close()

    def link_metrics(self) -> dict:
        """Liveness and buffering figures of this party's links, for its metrics: the longest
        its loop was late for a heartbeat, the most bytes any peer had waiting unread, and
        the longest message received (they size SILENCE_LIMIT and the unread bound)."""
        protos = [p.protocol for p in self.parties
                  if p.pid != self.pid and isinstance(p.protocol, _Exchanger)]
        return {"max_loop_stall_seconds": round(self.max_stall, 3),
                "unread_peak_bytes": max((p.unread_peak for p in protos), default=0),
                "largest_message_bytes": max((p.largest for p in protos), default=0)}

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
    from jointstats.mpc import speedups as _mpc_speedups
    _mpc_speedups.install_exact()  # same values, and the same on every party
    _mpc_speedups.install()  # random splits drawn in bulk (the same distribution)
    rt = make_runtime(pid, addresses, runtime_class=JointRuntime)
    rt.names = list(names)
    return rt
