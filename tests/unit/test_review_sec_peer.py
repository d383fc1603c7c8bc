"""Security review (2026-12-04): attacks on the MPC channel that still succeed.

Each test asserts the *secure* behaviour. All three weaknesses were present at commit
d2e25e0 and are addressed by the changes in progress (per-peer MAX_UNREAD, index-only
notices, the certificate holder named): these tests fail at d2e25e0 and pass with them.
Loopback only, bounded sizes and timeouts.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

from jointstats.mpc import codec as _codec
from jointstats.mpc import runtime as _mpc
from jointstats.node.service import Node, NodeJob
from tests.conftest import cohort_frame, free_ports, write_consortium


def _hello(rt_keys: int) -> bytes:
    return (0).to_bytes(2, "little") + os.urandom(rt_keys)


def test_unread_frames_from_a_peer_are_bounded(monkeypatch):
    # review: at d2e25e0 frames at program counters no step reads were buffered without bound
    # (_mpc._Exchanger.data_received); the fix in progress bounds them per peer (MAX_UNREAD,
    # 2 GiB by default), patched down here so that the test sends 64 MiB only
    monkeypatch.setattr(_codec, "MAX_UNREAD", 8 << 20, raising=False)
    async def attack():
        p0, p1 = free_ports(2)
        rt = _mpc.make_party_runtime(1, ["a", "b"], [("127.0.0.1", p0), ("127.0.0.1", p1)])
        start = asyncio.ensure_future(rt.start(10))
        await asyncio.sleep(0.2)
        _, w = await asyncio.open_connection("127.0.0.1", p1)
        w.write(_hello(rt._prss_keys_from_peer(0)))
        await start
        chunk = b"\0" * (1 << 20)
        for i in range(64):  # 64 MiB at program counters no step will ever read
            if rt.failed.done():
                break
            try:
                w.write(struct.pack("<qI", 10_000 + i, len(chunk)) + chunk)
                await w.drain()
            except ConnectionError:  # dropped
                break
        await asyncio.sleep(0.5)
        held = sum(len(v) for v in rt.parties[0].protocol.buffers.values() if isinstance(v, bytes)) \
            if rt.parties[0].protocol is not None else 0
        dropped = rt.failed.done()
        rt.abort()
        w.close()
        return held, dropped
    held, dropped = asyncio.run(asyncio.wait_for(attack(), 60))
    assert dropped and held < 16 << 20, f"{held >> 20} MiB of unread frames held, peer not dropped"


@pytest.mark.slow
def test_peer_notice_text_cannot_fail_the_whole_queue(tmp_path):
    # review: at d2e25e0 a peer's notice text containing 'TLS' made Node._schedule fail every
    # queued job at once ('TLS' in msg counts as permanent), with the peer's text as the error
    cfgs = write_consortium(tmp_path, [cohort_frame(5, i) for i in range(2)])
    node = Node(cfgs[1], attempt_timeout=5.0, peer_wait=120.0, log=lambda m: None)
    now = int(time.time())
    for i in range(3):
        job = NodeJob(job_id=f"job-{i}", analyst="alice", timestamp=now + i, spec_sha256="0" * 64,
                      protocol="p", dataset="cohort", mode="exact", epsilon=None, received=time.time())
        node.store.create(job, "x", {})
        node.jobs[job.job_id] = job
    port = node.config.peers[1].port
    node._scheduler.start()
    try:
        deadline = time.time() + 20
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.time() < deadline, "the node never listened for the rendezvous"
                time.sleep(0.05)
        s.sendall(_hello(16))  # party 0 of two: 16 bytes of PRSS keys
        text = _codec.encode_text("TLS session renegotiation required")  # d2e25e0's notice format
        s.sendall(struct.pack("<qI", _mpc.NOTICE_PC, len(text)) + text)
        time.sleep(3)
        s.close()
        statuses = {j.job_id: j.status for j in node.jobs.values()}
    finally:
        node._stop.set()
        node._wake.set()
        node._scheduler.join(10)
        node.state.close()
    # within --peer-wait a rendezvous failure is retried: the jobs must still be queued
    assert set(statuses.values()) == {"queued"}, statuses


def test_index_claim_names_the_certificate_holder(tmp_path):
    # review: at d2e25e0 a certified party announcing another's index failed the job naming
    # the impersonated (innocent) party (_Exchanger._hello)
    import yaml
    from jointstats.consortium.config import load_party_config
    from jointstats.consortium.keys import make_ca, make_party_cert, ssl_context
    from jointstats.consortium.tls import configure_tls
    make_ca(tmp_path / "ca")
    names = ["party_a", "party_b", "party_c"]
    for i, n in enumerate(names):
        make_party_cert(n, i, tmp_path / "ca", tmp_path)
    ports = free_ports(3)
    path = tmp_path / "party_c.yaml"
    path.write_text(yaml.safe_dump({"party": "party_c", "mpc": {
        "parties": [{"name": n, "host": "127.0.0.1", "port": p} for n, p in zip(names, ports)],
        "tls": {"cert": "party_c.crt", "key": "party_c.key", "ca": "ca/ca.crt"}}}))
    cfg = load_party_config(path)

    async def attack():
        rt = _mpc.make_party_runtime(2, names, [("127.0.0.1", p) for p in ports])
        configure_tls(rt, cfg)
        start = asyncio.ensure_future(rt.start(5))
        await asyncio.sleep(0.3)
        ctx = ssl_context("client", tmp_path / "party_b.crt", tmp_path / "party_b.key",
                          tmp_path / "ca/ca.crt")
        _, w = await asyncio.open_connection("127.0.0.1", ports[2], ssl=ctx,
                                             server_hostname="127.0.0.1")
        w.write(_hello(64))  # party_b's certificate, party_a's index
        await w.drain()
        with pytest.raises(Exception):
            await start
        rt.abort()
        return rt.failed.result()
    pid, reason = asyncio.run(asyncio.wait_for(attack(), 30))
    assert pid == 1 and reason.startswith("TLS identity check of party 'party_b'"), (pid, reason)
