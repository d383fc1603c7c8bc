"""The link emulator of the benchmarks and network tests (bench/netem.py), on loopback."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from bench import netem


@pytest.fixture
def echo_port():
    """An echo server on loopback (one connection at a time, each in a thread)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve(conn):
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(2)
    srv.close()


def _client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def test_round_trips_take_the_rtt_and_are_counted(echo_port):
    with netem.LinkEmulator(rtt=0.04) as net:
        with _client(net.proxy("a", "b", echo_port)) as s:
            s.sendall(b"x")
            _recv_exactly(s, 1)  # the first also pays the handshake's RTT
            times = []
            for _ in range(3):
                t = time.perf_counter()
                s.sendall(b"ping")
                _recv_exactly(s, 4)
                times.append(time.perf_counter() - t)
        assert all(0.039 <= t < 0.2 for t in times), times
        st = net.stats()
        assert st["rounds"] == 8  # 4 exchanges, 2 one-way hops each
        assert st["links"]["a->b"]["bytes"] == 13 and st["links"]["b->a"]["bytes"] == 13


def test_bandwidth_cap_serialises_bytes(echo_port):
    payload = b"z" * 500_000  # 4 Mbit: 0.2 s each way at 20 Mbit/s
    with netem.LinkEmulator(rtt=0.0, mbit=20) as net:
        with _client(net.proxy("a", "b", echo_port)) as s:
            t = time.perf_counter()
            s.sendall(payload)
            assert _recv_exactly(s, len(payload)) == payload
            took = time.perf_counter() - t
    assert 0.19 <= took < 1.5, took  # the two directions overlap: at least one transfer time


def test_bounded_buffer_holds_the_sender_back(echo_port):
    # a 64 kB buffer at 8 Mbit/s: a sender of 1 MB must wait for the link, not queue it all
    with netem.LinkEmulator(rtt=0.0, mbit=8, buffer=64_000) as net:
        port = net.proxy("a", "b", echo_port)
        with _client(port) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32_000)
            s.setblocking(False)
            sent = 0
            t = time.perf_counter()
            while time.perf_counter() - t < 0.3:
                try:
                    sent += s.send(b"q" * 65536)
                except BlockingIOError:
                    time.sleep(0.005)
        # 0.3 s at 1 MB/s is 0.3 MB on the wire; add the buffers (ours, both kernels')
        assert sent < 1_500_000, sent


def test_cut_closes_both_sides_and_refuses_new_connections(echo_port):
    with netem.LinkEmulator(rtt=0.01) as net:
        port = net.proxy("a", "b", echo_port)
        with _client(port) as s:
            s.sendall(b"hi")
            assert _recv_exactly(s, 2) == b"hi"
            assert net.cut("a", "b") == 1
            s.settimeout(2)
            assert s.recv(10) == b""  # closed
        with _client(port) as s2:  # accepted by the proxy, then closed at once
            s2.settimeout(2)
            try:
                assert s2.recv(10) == b""
            except ConnectionResetError:
                pass
        assert net.stats()["cuts"][0]["connections"] == 1


def test_blackhole_drops_silently_and_cut_when_fires_at_a_depth(echo_port):
    with netem.LinkEmulator(rtt=0.0) as net:
        port = net.proxy("a", "b", echo_port)
        net.cut_when("a", "b", depth=5, mode="blackhole")
        with _client(port) as s:
            s.settimeout(0.3)
            s.sendall(b"1")
            assert _recv_exactly(s, 1) == b"1"  # depths 1 and 2
            s.sendall(b"2")
            assert _recv_exactly(s, 1) == b"2"  # 3 and 4
            s.sendall(b"3")  # depth 5: the cut fires after it is queued
            time.sleep(0.05)
            s.sendall(b"4")
            got = b""
            with pytest.raises(socket.timeout):
                while True:
                    chunk = s.recv(10)
                    assert chunk, "a blackhole does not close"
                    got += chunk
            assert b"4" not in got
        cut = net.stats()["cuts"][0]
        assert cut["mode"] == "blackhole" and cut["why"] == "depth 5"


def test_peer_lists_route_each_party_to_higher_indices_through_proxies():
    peers = [{"name": n, "host": "127.0.0.1", "port": p} for n, p in (("a", 1001), ("b", 1002), ("c", 1003))]
    with netem.LinkEmulator() as net:
        lists = net.peer_lists(peers)
        assert [row[0] for row in lists] == [peers[0]] * 3  # the lowest index listens nowhere else
        assert lists[0][1]["port"] != 1002 and lists[0][2]["port"] != 1003  # a reaches b, c by proxies
        assert lists[1][1] == peers[1] and lists[1][2]["port"] != 1003
        assert lists[2] == peers  # c connects to nobody: it only listens, on its real port
        assert len({lists[0][1]["port"], lists[0][2]["port"], lists[1][2]["port"]}) == 3
        with pytest.raises(ValueError, match="loopback only"):
            net.peer_lists([{"name": "a", "host": "10.0.0.1", "port": 1}, peers[1]])


def test_orderly_close_delivers_what_was_sent_before_it():
    # a FIN follows the data: bytes still in flight when the sender closes arrive, then EOF
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
            got.append(data)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with netem.LinkEmulator(rtt=0.1) as net:
            with _client(net.proxy("a", "b", srv.getsockname()[1])) as s:
                s.sendall(b"last words")
            thread.join(3)
    finally:
        srv.close()
    assert got == [b"last words"]


def test_settings_from_the_environment_format():
    net = netem.LinkEmulator.from_spec("rtt=50, mbit=100,loss=0.001,buffer=65536")
    assert net.default == netem.Link(delay=0.025, mbit=100.0, loss=0.001, buffer=65536)
    assert netem.LinkEmulator.from_spec("").default == netem.Link()
    with pytest.raises(ValueError, match="unknown setting 'latency'"):
        netem.LinkEmulator.from_spec("latency=5")
