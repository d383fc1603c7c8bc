"""What the party runtime accepts from peers (jointstats.mpc.runtime._Exchanger, JointRuntime's typed
receive) and when a party may go without TLS (jointstats.consortium.config). Runtime checks run in a
fresh interpreter each: building a runtime takes over the process's MPyC and event loop."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jointstats import ConfigError, load_party_config
from jointstats.consortium.config import is_loopback

ROOT = Path(__file__).resolve().parents[2]

SETUP = """
import asyncio, pickle, struct
import numpy as np
from jointstats.mpc import codec as _codec
from jointstats.mpc import runtime as _mpc

class Transport:
    def __init__(self):
        self.closed, self.sent = False, []
    def close(self):
        self.closed = True
    abort = close
    def is_closing(self):
        return self.closed
    def write(self, data):
        self.sent.append(bytes(data))
    def writelines(self, parts):
        self.sent.extend(bytes(p) for p in parts)
    def get_extra_info(self, name, default=None):
        return default

def frame(pc, payload):
    return struct.pack('<qI', pc, len(payload)) + payload

async def party_b():
    '''Party 'b' (index 1) of a, b, c, with 'a' connected to it (as a client) and 'c' too.'''
    rt = _mpc.make_party_runtime(1, ['a', 'b', 'c'], [('127.0.0.1', 0)] * 3)
    loop = asyncio.get_running_loop()
    rt.failed = loop.create_future()
    for p in rt.parties:
        p.protocol = loop.create_future() if p.pid == 1 else None
    a, ta = _mpc._Exchanger(rt), Transport()
    a.connection_made(ta)
    a.data_received((0).to_bytes(2, 'little') + b'k' * rt._prss_keys_from_peer(0))
    c, tc = _mpc._Exchanger(rt, 2), Transport()
    c.connection_made(tc)
    return rt, a, ta, c, tc
"""


def _run(body: str) -> list[str]:
    code = SETUP + "\nasync def main():\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    code += "asyncio.run(main())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def test_a_pickle_drops_the_peer_names_it_and_tells_the_others(tmp_path):
    sentinel = tmp_path / "PWNED"
    out = _run(f"""
rt, a, ta, c, tc = await party_b()
class Exploit:
    def __reduce__(self):
        return (open, ({str(sentinel)!r}, 'w'))
pc = rt._program_counter[0]
a.data_received(frame(pc, pickle.dumps(Exploit())))
pending = rt.receive_array(0, np.uint64, (2, 3))
await asyncio.sleep(0.01)
print(isinstance(pending, asyncio.Future) and not pending.done(), ta.closed, tc.closed)
print(rt.failed.result()[0])
print(rt.failed.result()[1])
pc, size = struct.unpack_from('<qI', tc.sent[-1])
print(pc == _mpc.NOTICE_PC, _codec.decode_notice(tc.sent[-1][12:], 3).culprit)
""")
    assert out[0] == "True True False"
    assert out[1] == "0"
    assert out[2].startswith("party 'a' sent a malformed message (expected 48 bytes of a uint64 array")
    assert out[2].endswith("; dropped")
    assert out[3] == "True 0"
    assert not sentinel.exists()


def test_a_message_arriving_later_is_decoded_as_expected_or_dropped():
    out = _run("""
rt, a, ta, c, tc = await party_b()
pc = rt._program_counter[0]
good = rt.receive_array(0, np.uint64, (2,))
a.data_received(frame(pc, _codec.encode_array(np.array([7, 8], np.uint64), np.uint64)))
print((await good).tolist())
rt._program_counter[0] += 1
bad = rt._receive_typed(2, _codec.decode_record)
c.data_received(frame(rt._program_counter[0], b'\\x80\\x04junk'))
await asyncio.sleep(0.01)
print(bad.done(), tc.closed, rt.failed.result()[1])
""")
    assert out[0] == "[7, 8]"
    assert out[1].startswith("False True party 'c' sent a malformed message (unknown record kind 128); dropped")


def test_oversized_frames_are_refused_before_they_are_buffered():
    out = _run("""
rt, a, ta, c, tc = await party_b()
a.data_received(struct.pack('<qI', 5, _codec.MAX_MESSAGE + 1))
print(ta.closed, rt.failed.result()[1])
""")
    assert out[0] == (f"True party 'a' sent a malformed message (a message of {(1 << 30) + 1} bytes, "
                      f"over the limit of {1 << 30}); dropped")


def test_a_client_claiming_an_index_it_cannot_have_is_closed():
    out = _run("""
rt, a, ta, c, tc = await party_b()
for claim in (2, 1, 0, 9):  # higher indices connect the other way; 0 is connected already
    x, tx = _mpc._Exchanger(rt), Transport()
    x.connection_made(tx)
    x.data_received(claim.to_bytes(2, 'little') + b'k' * 64)
    print(claim, tx.closed, rt.parties[0].protocol is a)
print(rt.failed.done())
""")
    assert out == ["2 True True", "1 True True", "0 True True", "9 True True", "False"]


@pytest.mark.slow
def test_a_notice_fails_the_job_naming_the_culprit_then_its_sender_and_only_an_index():
    out = _run("""
rt, a, ta, c, tc = await party_b()
c.data_received(frame(_mpc.NOTICE_PC, _codec.encode_notice(0)))
print(await rt.failed)
""")
    assert out == ["(0, \"party 'a' sent a malformed message (reported by party 'c', which stopped the job)\")"]
    out = _run("""
rt, a, ta, c, tc = await party_b()
c.data_received(frame(_mpc.NOTICE_PC, _codec.encode_notice(0, _codec.SILENT)))
print(rt.failed.done())  # hearsay: held for HEARSAY_GRACE, even if c hangs up meanwhile
c.connection_lost(None)
print(rt.failed.done(), _codec.decode_notice(tc.sent[-1][12:], 3))  # acknowledged to c
print(await rt.failed)
""")
    assert out == ["False", "False Notice(culprit=0, cause=1)",
                   "(0, \"party 'a' went silent (reported by party 'c', which stopped the job)\")"]
    # evidence of its own found during the grace wins over a peer's notice
    out = _run("""
rt, a, ta, c, tc = await party_b()
c.data_received(frame(_mpc.NOTICE_PC, _codec.encode_notice(0, _codec.EQUIVOCATED)))
a.connection_lost(None)
print(rt.failed.result())
""")
    assert out == ["(0, \"party 'a' disconnected\")"]
    out = _run("""
rt, a, ta, c, tc = await party_b()
c.data_received(frame(_mpc.NOTICE_PC, _codec.encode_text("TLS\\nforged")))
print(tc.closed, rt.failed.result())
""")
    assert out[0].startswith("True (2, \"party 'c' sent a malformed message (a malformed notice")


def test_unread_messages_from_a_peer_are_bounded(monkeypatch):
    out = _run("""
rt, a, ta, c, tc = await party_b()
rt.unread_limit = 1000
a.data_received(frame(1, b'x' * 600))
print(a.receive(1) == b'x' * 600, a.unread)
a.data_received(frame(2, b'x' * 600) + frame(3, b'x' * 600))
print(ta.closed, rt.failed.result()[1])
""")
    assert out[0] == "True 0"
    assert out[1] == ("True party 'a' sent a malformed message (over 1000 bytes of messages no step "
                      "has read); dropped")
    out = _run("""
rt, a, ta, c, tc = await party_b()
rt.unread_limit = 1000
a.data_received(struct.pack('<qI', 1, 1001))  # the header alone: refused before buffering
print(ta.closed, rt.failed.result()[1])
""")
    assert out[0] == ("True party 'a' sent a malformed message (a message of 1001 bytes, over this "
                      "job's limit of 1000); dropped")
    # a job that knows its longest message (a linked job's chunked shares) bounds frames apart
    out = _run("""
rt, a, ta, c, tc = await party_b()
rt.unread_limit, rt.frame_limit = 10_000, 700
a.data_received(frame(1, b'x' * 700))
print(a.receive(1) == b'x' * 700)
a.data_received(struct.pack('<qI', 2, 701))
print(ta.closed, rt.failed.result()[1])
""")
    assert out == ["True", "True party 'a' sent a malformed message (a message of 701 bytes, over "
                   "this job's limit of 700); dropped"]


def test_two_messages_for_one_program_counter_are_read_in_order():
    # MPyC's shutdown transfers at the top-level counter that the last step used
    out = _run("""
rt, a, ta, c, tc = await party_b()
a.data_received(frame(9, b'first') + frame(9, b'second') + frame(9, b'third'))
print(a.receive(9), a.receive(9), a.receive(9), isinstance(a.receive(9), asyncio.Future))
""")
    assert out == ["b'first' b'second' b'third' True"]


def test_mpyc_runtime_never_unpickles():
    out = _run("""
from jointstats.mpc.runtime import _mpyc_runtime
from jointstats.errors import PartyError
import pickle as real
kept = _mpyc_runtime.pickle.dumps({'x': 1})
print(_mpyc_runtime.pickle.loads(kept))
try:
    _mpyc_runtime.pickle.loads(real.dumps({'x': 1}))
except PartyError as exc:
    print('refused')
""")
    assert out == ["{'x': 1}", "refused"]


# ----------------------------------------------------------------------------- TLS off loopback

def _config(tmp_path: Path, hosts: list[str], tls: bool = False) -> Path:
    mpc = {"parties": [{"name": n, "host": h, "port": 11400 + i}
                       for i, (n, h) in enumerate(zip("abc", hosts))]}
    if tls:
        mpc["tls"] = {"cert": "a.crt", "key": "a.key", "ca": "ca.crt"}
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"party": "a", "mpc": mpc}))
    return path


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "LocalHost", "::1"])
def test_loopback_consortia_may_go_without_tls(tmp_path, host):
    assert is_loopback(host)
    load_party_config(_config(tmp_path, ["127.0.0.1", host, "localhost"]))


@pytest.mark.parametrize("host", ["10.0.0.2", "0.0.0.0", "::", "hospital-b.example.org",
                                  "127.0.0.1.example.org", "::ffff:10.0.0.2"])
def test_mpc_without_tls_off_loopback_is_refused(tmp_path, host):
    assert not is_loopback(host)
    with pytest.raises(ConfigError) as err:
        load_party_config(_config(tmp_path, ["127.0.0.1", host, "127.0.0.1"]))
    assert str(err.value) == f"a.yaml: mpc.tls: required: party 'b' is not on loopback ({host})"
    load_party_config(_config(tmp_path, ["127.0.0.1", host, "127.0.0.1"], tls=True))


def test_demo_configs_stay_loopback_without_tls():
    for path in sorted((ROOT / "parties" / "demo").glob("*.yaml")):
        cfg = load_party_config(path)
        assert cfg.tls is None and all(is_loopback(p.host) for p in cfg.peers)


def test_a_certified_party_claiming_another_index_is_named_itself(tmp_path):
    # party_b's valid certificate presented for party_a's index: the error (and the party the
    # job fails on) is party_b, the holder of the certificate, not the impersonated party_a
    import types

    from jointstats.errors import AuthError
    from jointstats.consortium.keys import make_ca, make_party_cert
    from jointstats.consortium.tls import configure_tls
    make_ca(tmp_path / "ca")
    names = ["party_a", "party_b", "party_c"]
    for i, name in enumerate(names):
        make_party_cert(name, i, tmp_path / "ca", tmp_path)
    path = tmp_path / "party_c.yaml"
    path.write_text(yaml.safe_dump({"party": "party_c", "mpc": {
        "parties": [{"name": n, "host": "127.0.0.1", "port": 11500 + i} for i, n in enumerate(names)],
        "tls": {"cert": "party_c.crt", "key": "party_c.key", "ca": "ca/ca.crt"}}}))
    rt = types.SimpleNamespace(start=None)
    configure_tls(rt, load_party_config(path))
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    der = x509.load_pem_x509_certificate((tmp_path / "party_b.crt").read_bytes()).public_bytes(Encoding.DER)
    rt.verify_peer(der, 1)  # its own index: accepted
    with pytest.raises(AuthError) as err:
        rt.verify_peer(der, 0)
    assert err.value.culprit == 1
    assert str(err.value) == "TLS identity check of party 'party_b' (index 1) failed: it announced index 0 ('party_a')"


def test_heartbeats_are_never_handed_to_a_step_and_carry_nothing():
    out = _run("""
rt, a, ta, c, tc = await party_b()
a.data_received(frame(_mpc.HEARTBEAT_PC, b'') + frame(4, b'data'))
print(list(a.buffers), a.unread, rt.failed.done())
a.data_received(frame(_mpc.HEARTBEAT_PC, b'x'))
print(ta.closed, rt.failed.result()[1])
""")
    assert out[0] == "[4] 4 False"
    assert out[1] == ("True party 'a' sent a malformed message (a malformed heartbeat (expected 0 "
                      "bytes of a heartbeat, got 1)); dropped")


@pytest.mark.slow
def test_a_silent_peer_is_named_and_the_others_told(monkeypatch):
    # the liveness timer: heartbeats (empty frames) to every peer on each tick; a peer from
    # which nothing came for SILENCE_LIMIT seconds fails the job, named first, and the other
    # peers get a notice naming it (so they do not name whoever hangs up on them first)
    out = _run("""
_mpc.HEARTBEAT_INTERVAL = 0.05
_mpc.SILENCE_LIMIT = 1.0
rt, a, ta, c, tc = await party_b()
rt._start_heartbeats()
for _ in range(6):  # both peers heard from: nobody is silent
    await asyncio.sleep(0.05)
    a.data_received(frame(_mpc.HEARTBEAT_PC, b''))
    c.data_received(frame(_mpc.HEARTBEAT_PC, b''))
print(rt.failed.done(), sum(1 for m in ta.sent if m == frame(_mpc.HEARTBEAT_PC, b'')) >= 3)
for _ in range(200):  # then only c: a goes silent
    if rt.failed.done():
        break
    await asyncio.sleep(0.05)
    c.data_received(frame(_mpc.HEARTBEAT_PC, b''))
print(rt.failed.result()[0], rt.failed.result()[1].split(':')[0], ta.closed, tc.closed)
print(_codec.decode_notice(tc.sent[-1][12:], 3))
""")
    assert out[0] == "False True"
    assert out[1] == "0 party 'a' went silent True False"
    assert out[2] == "Notice(culprit=0, cause=1)"


def test_heartbeats_from_the_signal_handler_never_interrupt_transport_code():
    # the watchdog's handler writes heartbeats only where no transport, TLS or selector code
    # is on the stack (it would re-enter it); anywhere else (a computation) is fine
    import asyncio
    import sys

    from jointstats.mpc import runtime as _mpc
    assert _mpc._outside_transports(sys._getframe())
    seen = []

    class Probe(asyncio.Protocol):
        def data_received(self, data):
            seen.append(_mpc._outside_transports(sys._getframe()))

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Probe, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        await writer.drain()
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
    asyncio.run(main())
    assert seen == [False]  # called from selector_events: not outside
