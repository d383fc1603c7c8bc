"""The party runtime's own rules (jointstats.mpc.runtime.JointRuntime), each in a fresh interpreter:
building a runtime takes over the process's MPyC and event loop."""
from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_messages_to_and_from_a_lost_peer_do_not_raise():
    """After a peer's connection is lost (its protocol unset), MPyC's own send would raise
    AttributeError inside a task and stop the event loop, hiding the loss; ours drops the
    message and the receive never completes, so the guarded wait reports the loss."""
    code = (
        "import asyncio\n"
        "from jointstats.mpc import runtime as _mpc\n"
        "async def main():\n"
        "    rt = _mpc.make_party_runtime(0, ['a', 'b', 'c'], [('127.0.0.1', 0)] * 3)\n"
        "    rt.parties[1].protocol = None\n"
        "    rt._send_message(1, b'data')\n"
        "    pending = rt._receive_message(1)\n"
        "    await asyncio.sleep(0.01)\n"
        "    print('sent', 'pending' if not pending.done() else 'done')\n"
        "asyncio.run(main())\n")
    assert _run(code) == ["sent", "pending"]
