"""An emulated wide-area network between local party processes: a TCP link emulator on loopback.

This kernel has no netem, so the links are emulated in user space: every connection one
party opens to another goes through a proxy of its own, on 127.0.0.1, that forwards the bytes
of each direction after

* a one-way **delay** (``rtt / 2``),
* the **serialisation delay** of a bandwidth cap (``mbit`` per direction of each pair: a
  chunk of n bytes occupies the link for ``8 n / rate`` seconds, queued behind the chunks
  before it), and
* optionally a **loss** penalty: each 1448-byte segment of a chunk is lost with probability
  ``loss``, and a chunk with a lost segment arrives one retransmission later
  (``max(0.2 s, rtt)``, Linux's minimum RTO), holding back everything behind it as TCP does;

with a **bounded buffer** per direction (``buffer`` bytes in flight; beyond it the proxy stops
reading from the sender, whose own socket buffer then fills, as a real window would).
Opening a connection costs one RTT before its first byte can leave (the TCP handshake).

A link can be **cut** at a chosen moment (``cut``: both sides closed, each party sees its peer
disconnect; ``mode="reset"`` aborts them; ``mode="blackhole"`` keeps them open and silently
drops every byte from then on, as a firewall would), at once or when the link's traffic
reaches a given depth or byte count (``cut_when``).

Parties keep listening on their real ports. MPyC connects the lower index to the higher, so
party i reaches party j > i through the proxy of the directed pair (i, j), and each party's
config lists, for its peers, the proxy addresses it must use (:func:`peer_lists`). Configs of
one consortium then differ in their addresses, which party processes (and nodes) accept; only
the local runner's consistency check wants identical lists, so the harness relaxes it to the
names (:func:`per_party_addresses`).

**Rounds.** The emulator counts communication rounds on the wire, as Lamport clocks: a chunk a
party sends has depth 1 + the largest depth among the chunks delivered to that party before
it was sent; the job's rounds are the largest depth (:meth:`LinkEmulator.rounds`). That is the
length of the longest chain of messages each of which was sent after the one before it had
arrived, so the job's time grows by at least ``rounds x rtt / 2`` over its loopback time
(a "round" is one one-way message latency: in MPyC an opening, a resharing or an input is one
such round, every party sending and then waiting for the others). It is an upper bound on the
protocol's true dependency depth when a party sends something unrelated to what it has just
received, which cannot happen often when links are slow and computing is fast; the latency
slope (extra seconds per extra one-way delay) is the other way to read it, and both are
reported by ``bench/wan.py``. The parties' heartbeats (an empty frame a second on every link,
``jointstats.mpc.runtime``) are forwarded like everything else, but a chunk of heartbeats only has
depth 0: sent on a timer, not in answer to anything, they would otherwise chain the clocks.

Loopback only: every listener and every connection of this module is on 127.0.0.1.

Every benchmark of the harness runs over emulated links with ``JOINTSTATS_BENCH_NETEM=rtt=50,mbit=100``
(``python -m bench ...``: each job of ours through its own emulator; the baselines' programs
are not routed). Usage (see ``bench/wan.py`` and ``tests/multiparty/test_link_cut.py``)::

    with LinkEmulator(rtt=0.05, mbit=100) as net:
        configs = write_configs(root, files, peers_of=net.peer_lists)   # bench.jobs
        with per_party_addresses():
            runner.run(spec, configs)
        print(net.rounds(), net.stats())
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import math
import random
import socket
import struct
import threading
import time
from typing import Callable

HOST = "127.0.0.1"
SEGMENT = 1448  # bytes of payload per TCP segment (MSS on a 1500-byte MTU)
MIN_RTO = 0.2  # Linux's minimum retransmission timeout
DEFAULT_BUFFER = 4 << 20
#: ``rtt=50,mbit=100`` (RTT in ms; also ``loss``, ``buffer``): every job the harness runs
#: (bench/jobs.py ``run_job``) goes through emulated links with these settings.
ENV = "JOINTSTATS_BENCH_NETEM"
CONNECT_PATIENCE = 60.0  # seconds a proxy retries a party that does not listen yet
#: A party's heartbeat frame (jointstats.mpc.runtime.HEARTBEAT_PC, empty payload). A chunk made of
#: heartbeats only is forwarded like any other but counts for no round: heartbeats go out on
#: a timer, not in answer to anything, and would otherwise chain the parties' clocks.
HEARTBEAT_FRAME = struct.pack("<qI", -(1 << 63) + 1, 0)


def _heartbeats_only(data: bytes) -> bool:
    n = len(HEARTBEAT_FRAME)
    return bool(data) and len(data) % n == 0 and data == HEARTBEAT_FRAME * (len(data) // n)


@dataclasses.dataclass(frozen=True)
class Link:
    """One direction of a link: one-way ``delay`` (s), ``mbit`` (Mbit/s, None: unlimited),
    segment ``loss`` probability, ``buffer`` (bytes held before the sender is paused)."""

    delay: float = 0.0
    mbit: float | None = None
    loss: float = 0.0
    buffer: int = DEFAULT_BUFFER

    @property
    def rtt(self) -> float:
        return 2 * self.delay


class _Pipe:
    """One direction of one proxied connection: delay, rate, loss, bounded buffer, depth."""

    def __init__(self, conn: "_Connection", src: str, dst: str, link: Link):
        self.conn, self.src, self.dst, self.link = conn, src, dst, link
        self.loop = conn.net.loop
        self.queue: collections.deque = collections.deque()  # (arrival time, bytes, depth)
        self.queued = 0
        self.free_at = conn.opened + 2 * link.delay  # the handshake's round trip
        self.last_arrival = 0.0
        self.timer = None
        self.reader = None  # the _Side whose transport sends into this pipe
        self.writer = None  # the _Side whose transport receives from it
        self.paused = False
        self.blocked = False  # the receiving side's transport asked us to stop writing

    def push(self, data: bytes) -> None:
        net = self.conn.net
        now = self.loop.time()
        n = len(data)
        depth = 0 if _heartbeats_only(data) else net.depth_of(self.src) + 1
        net.record(self, now, n, depth)
        if self.conn.blackholed:
            return
        link = self.link
        start = max(now, self.free_at)
        self.free_at = start + (8.0 * n / (link.mbit * 1e6) if link.mbit else 0.0)
        arrival = self.free_at + link.delay
        if link.loss:
            segments = max(1, math.ceil(n / SEGMENT))
            if net.rng.random() < 1 - (1 - link.loss) ** segments:
                arrival += max(MIN_RTO, link.rtt)
                net.losses += 1
        arrival = max(arrival, self.last_arrival)  # in order, as TCP delivers
        self.last_arrival = arrival
        self.queue.append((arrival, data, depth))
        self.queued += n
        if self.queued > link.buffer and not self.paused and self.reader is not None:
            self.paused = True
            self.reader.transport.pause_reading()
        self._schedule()

    def _schedule(self) -> None:
        if self.timer is None and self.queue and not self.blocked:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        if self.conn.closed or self.writer is None or self.writer.transport is None:
            return
        now = self.loop.time()
        net = self.conn.net
        while self.queue and self.queue[0][0] <= now + 0.0002 and not self.blocked:
            _, data, depth = self.queue.popleft()
            self.queued -= len(data)
            if self.conn.blackholed:
                continue
            self.writer.transport.write(data)
            net.delivered(self.dst, depth)
        if self.paused and self.queued <= self.link.buffer // 2 and self.reader is not None:
            self.paused = False
            self.reader.transport.resume_reading()
        self._schedule()

    def end(self) -> None:
        """The sender closed its socket (a FIN): its queued bytes are still delivered, then the
        receiver sees the connection closed, one delay after the last byte left, as over TCP."""
        fin = max(self.loop.time() + self.link.delay, self.last_arrival)
        self.loop.call_at(fin, self._fin)

    def _fin(self) -> None:
        if self.queue and not self.conn.closed:
            self.loop.call_at(max(self.queue[-1][0], self.loop.time() + 0.001), self._fin)
            return
        self.conn.close()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the accepted client side, or the upstream side)."""

    def __init__(self, conn: "_Connection", out: _Pipe | None, into: _Pipe | None):
        self.conn, self.out, self.into = conn, out, into  # out: bytes we read go there
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle on the proxy's legs

    def data_received(self, data):
        if self.out is not None and not self.conn.closed:
            self.out.push(data)

    def connection_lost(self, exc):
        if exc is None and self.out is not None and not self.conn.closed:
            self.out.end()  # an orderly close: what was sent before it still arrives
        else:
            self.conn.close(abort=exc is not None)

    def pause_writing(self):
        if self.into is not None:
            self.into.blocked = True

    def resume_writing(self):
        if self.into is not None:
            self.into.blocked = False
            self.into._schedule()


class _Connection:
    """One proxied TCP connection between two parties: two pipes, two sockets."""

    def __init__(self, net: "LinkEmulator", client: str, server: str):
        self.net, self.client, self.server = net, client, server
        self.opened = net.loop.time()
        self.closed = False
        self.blackholed = False
        self.up = _Pipe(self, client, server, net.link(client, server))  # client -> server
        self.down = _Pipe(self, server, client, net.link(server, client))
        self.client_side = _Side(self, self.up, self.down)
        self.server_side = _Side(self, self.down, self.up)
        self.up.reader, self.up.writer = self.client_side, self.server_side
        self.down.reader, self.down.writer = self.server_side, self.client_side
        self.pending: list[bytes] = []

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in (self.up, self.down):
            if pipe.timer is not None:
                pipe.timer.cancel()
        for side in (self.client_side, self.server_side):
            if side.transport is not None:
                (side.transport.abort if abort else side.transport.close)()
        self.net.connections.discard(self)

    @property
    def pair(self) -> frozenset:
        return frozenset((self.client, self.server))


class _Accept(asyncio.Protocol):
    """The client side of a new connection, before its upstream leg is up: bytes are held."""

    def __init__(self, net: "LinkEmulator", client: str, server: str, port: int):
        self.net, self.client, self.server, self.port = net, client, server, port
        self.conn: _Connection | None = None
        self.held: list[bytes] = []
        self.transport = None
        self.lost = False
        self.ready = False  # the upstream leg is up and the held bytes are on their way

    def connection_made(self, transport):
        self.transport = transport
        pair = frozenset((self.client, self.server))
        if pair in self.net.cut_pairs:
            transport.close()  # a cut link stays cut: no new connection gets through
            return
        conn = self.conn = _Connection(self.net, self.client, self.server)
        conn.client_side.connection_made(transport)
        self.net.connections.add(conn)
        self.net.loop.create_task(self._upstream())

    async def _upstream(self):
        """Connect to the real party. A party that is not listening yet is retried (every
        2-50 ms, up to ``CONNECT_PATIENCE`` s) while the client's bytes are held: the client
        saw its connection accepted by the proxy, so a refusal cannot be passed back to it as
        the refusal it would have got (and retried on) without the proxy."""
        conn = self.conn
        deadline = self.net.loop.time() + CONNECT_PATIENCE
        pause = 0.002
        while True:
            if conn.closed:
                return
            try:
                await self.net.loop.create_connection(lambda: conn.server_side, HOST, self.port)
                break
            except OSError:
                if self.net.loop.time() > deadline:
                    conn.close()
                    return
                await asyncio.sleep(pause)
                pause = min(1.5 * pause, 0.05)
        for data in self.held:
            conn.up.push(data)
        self.held = []
        self.ready = True
        if self.lost:  # the client has already closed: its bytes, then its FIN
            conn.up.end()

    def data_received(self, data):
        conn = self.conn
        if conn is None or conn.closed:
            return
        if not self.ready:
            self.held.append(data)
        else:
            conn.up.push(data)

    def connection_lost(self, exc):
        self.lost = True
        conn = self.conn
        if conn is None:
            return
        if exc is not None:
            conn.close(abort=True)
        elif self.ready and not conn.closed:
            conn.up.end()  # an orderly close: what was sent before it still arrives
        # not ready: _upstream delivers the held bytes, then the FIN

    def pause_writing(self):
        if self.conn is not None:
            self.conn.client_side.pause_writing()

    def resume_writing(self):
        if self.conn is not None:
            self.conn.client_side.resume_writing()


class LinkEmulator:
    """Proxies with emulated links between named parties, run on an asyncio loop in a thread.

    ``rtt`` (seconds), ``mbit``, ``loss`` and ``buffer`` apply to every direction of every
    pair unless :meth:`set_link` says otherwise. Use as a context manager (or ``start`` /
    ``close``).
    """

    def __init__(self, rtt: float = 0.0, mbit: float | None = None, loss: float = 0.0,
                 buffer: int = DEFAULT_BUFFER, seed: int = 0, max_events: int = 2_000_000):
        self.default = Link(rtt / 2, mbit, loss, buffer)
        self.links: dict[tuple[str, str], Link] = {}
        self.rng = random.Random(seed)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.servers: list = []
        self.connections: set[_Connection] = set()
        self.cut_pairs: set[frozenset] = set()
        self.cuts: list[dict] = []  # what was cut, when and how
        self.triggers: list[dict] = []
        self.max_events = max_events
        self.reset_counts()

    @classmethod
    def from_spec(cls, text: str) -> "LinkEmulator":
        """An emulator from ``rtt=MS,mbit=M,loss=P,buffer=BYTES`` (any subset; RTT in ms),
        the format of ``JOINTSTATS_BENCH_NETEM``."""
        kw: dict = {}
        for item in filter(None, (x.strip() for x in text.split(","))):
            key, _, value = item.partition("=")
            if key == "rtt":
                kw["rtt"] = float(value) / 1000.0
            elif key in ("mbit", "loss"):
                kw[key] = float(value)
            elif key == "buffer":
                kw["buffer"] = int(value)
            else:
                raise ValueError(f"{ENV}: unknown setting {key!r} (rtt, mbit, loss, buffer)")
        return cls(**kw)

    # ------------------------------------------------------------------ set-up

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "LinkEmulator":
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()
            self.loop.close()
        self.thread = threading.Thread(target=run, name="netem", daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the link emulator's event loop did not start")
        return self

    def _call(self, fn: Callable, *args, timeout: float = 10.0):
        """Run ``fn(*args)`` (a plain function or a coroutine function) on the emulator's loop."""
        async def wrap():
            out = fn(*args)
            return (await out) if asyncio.iscoroutine(out) else out
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def close(self) -> None:
        if self.loop is None:
            return

        def shut():
            for conn in list(self.connections):
                conn.close(abort=True)
            for server in self.servers:
                server.close()
        try:
            self._call(shut)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop = None

    def link(self, src: str, dst: str) -> Link:
        """The parameters of the direction ``src -> dst``."""
        return self.links.get((src, dst), self.default)

    def set_link(self, a: str, b: str, *, rtt: float | None = None, mbit: float | None = None,
                 loss: float | None = None, both: bool = True) -> None:
        """Parameters of ``a -> b`` (and ``b -> a`` if ``both``) for connections opened from now on."""
        for src, dst in ((a, b), (b, a)) if both else ((a, b),):
            old = self.link(src, dst)
            self.links[(src, dst)] = Link(old.delay if rtt is None else rtt / 2,
                                          old.mbit if mbit is None else mbit,
                                          old.loss if loss is None else loss, old.buffer)

    def proxy(self, client: str, server: str, port: int) -> int:
        """Start a proxy for connections from ``client`` to ``server`` (listening on ``port``);
        return the proxy's port on 127.0.0.1."""
        async def listen():
            srv = await self.loop.create_server(lambda: _Accept(self, client, server, port), HOST, 0)
            self.servers.append(srv)
            return srv.sockets[0].getsockname()[1]
        return self._call(listen)

    def peer_lists(self, peers: list[dict]) -> list[list[dict]]:
        """Per party (in ``peers`` order: dicts with name, host, port, the real listening
        addresses), the ``mpc.parties`` list its config must hold: its own real address, and
        for every peer of higher index (which it connects to) the proxy of that pair."""
        for p in peers:
            if p["host"] != HOST:
                raise ValueError(f"loopback only: {p['name']} is at {p['host']}")
        out = []
        for i, me in enumerate(peers):
            row = []
            for j, peer in enumerate(peers):
                if j > i:
                    row.append({**peer, "port": self.proxy(me["name"], peer["name"], peer["port"])})
                else:  # itself (where it listens), or a lower index that connects to it
                    row.append(dict(peer))
            out.append(row)
        return out

    # ------------------------------------------------------------------ cuts

    def cut(self, a: str, b: str | None = None, mode: str = "close") -> int:
        """Cut the link between ``a`` and ``b`` (every link of ``a`` if ``b`` is None) now:
        ``close`` (both sides see the connection closed), ``reset`` (aborted) or
        ``blackhole`` (kept open, every byte dropped from now on). Returns how many
        connections were cut; later connections of the pair are refused."""
        return self._call(self._cut, a, b, mode, "now")

    def _cut(self, a: str, b: str | None, mode: str, why: str) -> int:
        if mode not in ("close", "reset", "blackhole"):
            raise ValueError(f"unknown cut mode {mode!r}")
        hit = 0
        for conn in list(self.connections):
            if a in conn.pair and (b is None or b in conn.pair):
                hit += 1
                if mode == "blackhole":
                    conn.blackholed = True
                else:
                    conn.close(abort=mode == "reset")
                    if b is None:
                        self.cut_pairs.add(conn.pair)
        if b is not None:
            self.cut_pairs.add(frozenset((a, b)))
        self.cuts.append({"a": a, "b": b, "mode": mode, "why": why, "connections": hit,
                          "time": time.time(), "depth": self.max_depth, "bytes": self.bytes_total})
        return hit

    def cut_when(self, a: str, b: str | None = None, *, depth: int | None = None,
                 nbytes: int | None = None, mode: str = "close") -> None:
        """Cut like :meth:`cut` as soon as a chunk of depth ``depth`` (a round count, see the
        module's doc) or the ``nbytes``-th byte crosses any link of ``a`` (and ``b``)."""
        def add():
            self.triggers.append({"a": a, "b": b, "depth": depth, "nbytes": nbytes, "mode": mode,
                                  "bytes": 0})
        self._call(add)

    def call_when(self, a: str, action: Callable[[], object], *, depth: int) -> None:
        """Call ``action()`` (on the emulator's thread; say, to kill or stop a party's process)
        as soon as a chunk of depth ``depth`` crosses any link of party ``a``; recorded in
        ``stats()["cuts"]`` like a cut (mode ``"call"``) with the time it was called."""
        def add():
            self.triggers.append({"a": a, "b": None, "depth": depth, "nbytes": None, "mode": "call",
                                  "action": action, "bytes": 0})
        self._call(add)

    def _act(self, trig: dict, why: str) -> None:
        self.cuts.append({"a": trig["a"], "b": None, "mode": "call", "why": why, "connections": 0,
                          "time": time.time(), "depth": self.max_depth, "bytes": self.bytes_total})
        trig["action"]()

    # ------------------------------------------------------------------ counting

    def reset_counts(self) -> None:
        """Forget the rounds, bytes and events counted so far (between jobs)."""
        self.seen: dict[str, int] = collections.defaultdict(int)
        self.max_depth = 0
        self.bytes_total = 0
        self.chunks = 0
        self.losses = 0
        self.per_link: dict[tuple[str, str], dict] = {}
        self.events: list[tuple] = []

    def clear(self) -> None:
        """``reset_counts`` on the emulator's loop (safe while it runs)."""
        self._call(self.reset_counts)

    def depth_of(self, party: str) -> int:
        return self.seen[party]

    def delivered(self, party: str, depth: int) -> None:
        if depth > self.seen[party]:
            self.seen[party] = depth

    def record(self, pipe: _Pipe, now: float, n: int, depth: int) -> None:
        self.max_depth = max(self.max_depth, depth)
        self.bytes_total += n
        self.chunks += 1
        key = (pipe.src, pipe.dst)
        st = self.per_link.setdefault(key, {"bytes": 0, "chunks": 0, "max_depth": 0})
        st["bytes"] += n
        st["chunks"] += 1
        st["max_depth"] = max(st["max_depth"], depth)
        if len(self.events) < self.max_events:
            self.events.append((now, pipe.src, pipe.dst, n, depth))
        for trig in list(self.triggers):
            if trig["a"] not in (pipe.src, pipe.dst) or (trig["b"] is not None
                                                        and trig["b"] not in (pipe.src, pipe.dst)):
                continue
            trig["bytes"] += n
            if (trig["depth"] is not None and depth >= trig["depth"]) or (
                    trig["nbytes"] is not None and trig["bytes"] >= trig["nbytes"]):
                self.triggers.remove(trig)
                why = f"depth {depth}" if trig["depth"] is not None else f"{trig['bytes']} bytes"
                # after this chunk is queued: cut (or act) on the next turn of the loop
                if trig["mode"] == "call":
                    self.loop.call_soon(self._act, trig, why)
                else:
                    self.loop.call_soon(self._cut, trig["a"], trig["b"], trig["mode"], why)

    def rounds(self) -> int:
        """Communication rounds of the traffic since the last reset: the largest depth."""
        return self._call(lambda: self.max_depth)

    def stats(self) -> dict:
        """Rounds, bytes, chunks, retransmissions and per-link figures since the last reset."""
        def snap():
            return {"rounds": self.max_depth, "bytes": self.bytes_total, "chunks": self.chunks,
                    "losses": self.losses, "cuts": list(self.cuts),
                    "links": {f"{a}->{b}": dict(v) for (a, b), v in sorted(self.per_link.items())}}
        return self._call(snap)

    def timeline(self) -> list[tuple]:
        """(loop time, src, dst, bytes, depth) of every chunk sent since the last reset."""
        return self._call(lambda: list(self.events))


@contextlib.contextmanager
def per_party_addresses():
    """Let ``jointstats.local.runner`` run a consortium whose configs list different addresses for
    the same parties (each party its proxies): its consistency check is made on the names and
    their order (and roles) only, for the duration (in this process; party processes are untouched)."""
    from jointstats.local import runner
    from jointstats.errors import ConfigError
    original = runner.check_consortium

    def names_only(configs):
        if not configs:
            return original(configs)
        def who(cfg):
            return [(p.name, getattr(p, "role", "data")) for p in cfg.peers]
        for cfg in configs[1:]:
            if who(cfg) != who(configs[0]):
                raise ConfigError(f"party {cfg.party!r}: mpc.parties names differ from those of "
                                  f"{configs[0].party!r}")
        canon = configs[0].peers
        ordered = original([dataclasses.replace(c, peers=canon) for c in configs])
        by_name = {c.party: c for c in configs}
        return [by_name[c.party] for c in ordered]
    runner.check_consortium = names_only
    try:
        yield
    finally:
        runner.check_consortium = original
