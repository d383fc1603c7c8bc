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


def rendezvous(config: str, out: str) -> int:
    """One node rendezvous for ``config`` (with one queued job); its outcome as JSON."""
    from jointstats.consortium.config import load_party_config
    from jointstats.errors import JointStatsError
    from jointstats.node.service import Node
    cfg = load_party_config(config)
    node = types.SimpleNamespace(config=cfg, names=[p.name for p in cfg.peers], attempt_timeout=20.0)
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
        arm(*argv[1:4])
        argv = argv[4:]
    if argv[0] == "rendezvous":
        return rendezvous(*argv[1:3])
    from jointstats.engine.party import main as party_main
    return party_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
