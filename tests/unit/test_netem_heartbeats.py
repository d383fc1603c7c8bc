"""The link emulator (bench/netem.py) and the parties' heartbeats (jointstats.mpc.runtime)."""
from __future__ import annotations

from bench import netem
from jointstats.mpc import runtime as _mpc


def test_heartbeat_chunks_count_for_no_round():
    # parties send heartbeats on a timer: a chunk of heartbeats only must not chain the
    # parties' round clocks, or a slow job would count a round per second
    assert netem.HEARTBEAT_FRAME == _mpc._FRAME.pack(_mpc.HEARTBEAT_PC, 0)
    assert netem._heartbeats_only(netem.HEARTBEAT_FRAME * 3)
    assert not netem._heartbeats_only(netem.HEARTBEAT_FRAME + b"x")
    assert not netem._heartbeats_only(b"")
