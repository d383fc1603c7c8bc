"""Test-only: a party (or node) process that sends a pickle instead of one kind of message.

Used by ``tests/multiparty/test_hostile_peer.py``; nothing in ``jointstats`` knows about it.
The pickle's ``__reduce__`` would create a sentinel file when unpickled, so the test can
tell whether any party ran code sent by a peer.

    python -m tests.multiparty.hostile_party [--attack KIND SENTINEL MARKER] party ARGS...
    python -m tests.multiparty.hostile_party [--attack KIND SENTINEL MARKER] rendezvous CONFIG OUT

``party ARGS`` runs ``jointstats.engine.party`` with ARGS; ``rendezvous`` runs one node
rendezvous (``Node._rendezvous``) for CONFIG and writes its outcome to OUT as JSON. With
``--attack``, every message that the runtime sends from the function named by KIND carries
the pickle instead (and MARKER is created, to show that the attack happened).

The ``equivocate-*`` kinds send no pickle: the party tells the last party (index 2) another
record than it tells the others at the job agreement (``EQUIVOCATIONS``: a different plan
hash, job id, minimum-count floor, or rendezvous queue), and reports in its own echo what it
meant to send; SENTINEL is unused. The ``lying-echo`` kind tells party index 2, in the echo
round, that it sent another record than it did. The ``flood`` kind sends every peer ``FLOOD_BYTES`` of
messages that no step will read, after its status record.
"""
from __future__ import annotations

import asyncio
import json
import pickle
import sys
import types
from pathlib import Path

#: Attack kind -> the JointRuntime (or _noise) function whose messages are replaced.
SENDERS = {"status": "transfer", "input": "_distribute", "output": "output",
           "reshare": "_reshare", "noise": "and_", "rendezvous": "transfer"}


class _Exploit:
    """Unpickling this creates ``path`` (code run by the receiver)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def arm(kind: str, sentinel: str, marker: str) -> None:
    """Replace the payload of every message sent from ``SENDERS[kind]`` by the exploit."""
    from jointstats.mpc import runtime as _mpc
    payload = pickle.dumps(_Exploit(sentinel))
    original = _mpc.JointRuntime._send_message
    sender = SENDERS[kind]

    def send(self, peer_pid, data):
        if sys._getframe(1).f_code.co_name == sender:
            data = payload
            Path(marker).touch()
        original(self, peer_pid, data)
    _mpc.JointRuntime._send_message = send


#: Equivocation kind -> how the record told to party index 2 differs from the others'.
EQUIVOCATIONS = {
    "equivocate-plan": lambda r: {**r, "plan": "0" * 64},
    "equivocate-job": lambda r: {**r, "job": "another-job"},
    "equivocate-floor": lambda r: {**r, "min_count_floor": r["min_count_floor"] + 100},
    "equivocate-rendezvous": lambda r: {**r, "queue": [[1_600_000_000, "forged", "mallory", "f" * 64]]},
}


def arm_equivocation(kind: str, marker: str) -> None:
    """Tell party index 2 a changed record (``EQUIVOCATIONS[kind]``) in every record transfer."""
    from jointstats.mpc import codec as _codec, runtime as _mpc
    original = _mpc.JointRuntime._send_message
    change = EQUIVOCATIONS[kind]

    def send(self, peer_pid, data):
        if peer_pid == 2 and sys._getframe(1).f_code.co_name == "transfer":
            try:
                record = _codec.decode_record(data)
            except _codec.CodecError:
                record = None
            if record is not None:
                data = _codec.encode_record(change(record))
                Path(marker).touch()
        original(self, peer_pid, data)
    _mpc.JointRuntime._send_message = send


def arm_lying_echo(marker: str) -> None:
    """In the echo round, tell party index 2 that it sent another record than it did."""
    from jointstats.mpc import codec as _codec, runtime as _mpc
    original = _mpc.JointRuntime._send_message

    def send(self, peer_pid, data):
        if peer_pid == 2 and sys._getframe(1).f_code.co_name == "_echo":
            size = _codec.DIGEST_SIZE
            data = data[:2 * size] + bytes(size) + data[3 * size:]
            Path(marker).touch()
        original(self, peer_pid, data)
    _mpc.JointRuntime._send_message = send


#: Bytes the ``flood`` attack sends each peer, in 1 MiB messages no step will ever read.
FLOOD_BYTES = 96 << 20


def arm_flood(marker: str) -> None:
    """After its status record, send every peer FLOOD_BYTES at program counters no step uses."""
    from jointstats.mpc import runtime as _mpc
    original = _mpc.JointRuntime._send_message
    chunk = b"\0" * (1 << 20)

    def send(self, peer_pid, data):
        original(self, peer_pid, data)
        if sys._getframe(1).f_code.co_name == "transfer" and not getattr(self, "_flooded", set()) >= {peer_pid}:
            self._flooded = getattr(self, "_flooded", set()) | {peer_pid}
            proto = self.parties[peer_pid].protocol
            for i in range(FLOOD_BYTES // len(chunk)):
                proto.send(1 << 40 | i, chunk)
            Path(marker).touch()
    _mpc.JointRuntime._send_message = send


def rendezvous(config: str, out: str) -> int:
    """One node rendezvous for ``config`` (with one queued job); its outcome as JSON."""
    from jointstats.consortium.config import load_party_config
    from jointstats.errors import JointStatsError
    from jointstats.node.service import Node
    cfg = load_party_config(config)
    node = types.SimpleNamespace(config=cfg, names=[p.name for p in cfg.peers], attempt_timeout=20.0)
    node._party_runtime = lambda: Node._party_runtime(node)  # the node's own runtime set-up
    entries = [(1_700_000_000, "job-1", "alice", "0" * 64)]
    try:
        queues = asyncio.run(Node._rendezvous(node, entries))
        payload = {"ok": True, "queues": queues}
    except JointStatsError as exc:
        payload = {"ok": False, "error": str(exc)}
    Path(out).write_text(json.dumps(payload))
    return 0 if payload["ok"] else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--attack"]:
        if argv[1] in EQUIVOCATIONS:
            arm_equivocation(argv[1], argv[3])
        elif argv[1] == "flood":
            arm_flood(argv[3])
        elif argv[1] == "lying-echo":
            arm_lying_echo(argv[3])
        else:
            arm(*argv[1:4])
        argv = argv[4:]
    if argv[0] == "rendezvous":
        return rendezvous(*argv[1:3])
    from jointstats.engine.party import main as party_main
    return party_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
