"""Loopback ports for party processes, without the bind-0-and-release race; one retry on a clash.

Party configs name their MPC ports before any party runs, so a test (or benchmark) has to pick
ports that are free *later*. Binding port 0 and releasing it picks from the kernel's ephemeral
range, the same range every outgoing connection on the machine draws from: a party's own
connections, a node's, another test run's could take the port before the party binds it.

:func:`free_ports` therefore picks ports *below* the ephemeral range (the kernel never hands
those out by itself), checks each is free now, never hands one out twice in a process, and
reserves it across processes with a file in ``$TMPDIR/jointstats-test-ports`` (expired after
:data:`RESERVATION_SECONDS`, removed at exit), so two test runs on one machine do not pick the
same port. What is left (an unrelated program binding the very port explicitly) is handled by
:func:`pytest_runtest_protocol`: a test whose call fails because a port was in use (the error
says so: ``cannot listen on``, ``EADDRINUSE``, ``Address already in use``) runs once more, with
fresh fixtures and so fresh ports; the terminal summary lists such reruns.
"""
from __future__ import annotations

import atexit
import os
import random
import socket
import tempfile
import time
from pathlib import Path

#: a reservation older than this is treated as left by a process that died
RESERVATION_SECONDS = 3600
#: the text of an error that means "a port was taken" (party, node, OS)
CLASH_MARKERS = ("cannot listen on", "EADDRINUSE", "Address already in use", "[Errno 98]")
#: the lowest port picked (below it: well-known and registered services more often listen)
LOWEST = 20000

_handed_out: set[int] = set()
_reserved: list[Path] = []


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535  # IANA's dynamic range: macOS and Windows use it


def _pool() -> range:
    """Ports the kernel never assigns on its own: below the ephemeral range (or above it)."""
    lo, hi = _ephemeral_range()
    if lo - LOWEST >= 2000:
        return range(LOWEST, lo)
    if 65535 - hi >= 2000:
        return range(hi + 1, 65536)
    return range(1024, 65536)  # no room outside it: reservation and the retry still apply


def _reservation_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "jointstats-test-ports"
    d.mkdir(mode=0o777, exist_ok=True)
    return d


def _reserve(port: int) -> bool:
    """Claim ``port`` for this process across processes (False: another process holds it)."""
    path = _reservation_dir() / str(port)
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            _reserved.append(path)
            return True
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime < RESERVATION_SECONDS:
                    return False
                path.unlink()  # stale: its process died without removing it
            except FileNotFoundError:
                pass
        except OSError:
            return True  # no shared folder (read-only TMPDIR): the in-process checks still apply
    return False


@atexit.register
def _release_all() -> None:
    for path in _reserved:
        try:
            path.unlink()
        except OSError:
            pass
    _reserved.clear()


def can_bind(address: str = "127.0.0.1", port: int = 0) -> bool:
    """True if a TCP socket binds to ``(address, port)`` now (e.g. 127.0.0.2 for a second client
    address: not every system routes all of 127/8). Without SO_REUSEADDR: a port still in
    TIME_WAIT counts as taken."""
    try:
        with socket.socket() as s:
            s.bind((address, port))
        return True
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on loopback, free now and reserved for this process.

    Outside the kernel's ephemeral range, so no outgoing connection takes one meanwhile; never
    the same port twice in a process; reserved against other processes using this helper."""
    pool = _pool()
    ports: list[int] = []
    tries = 0
    while len(ports) < count:
        tries += 1
        if tries > 20 * len(pool):
            raise RuntimeError(f"no {count} free ports in {min(pool)}-{max(pool)}")
        if len(_handed_out) > len(pool) // 2:
            _handed_out.clear()  # a very long run: start over (reservations still guard others)
        port = random.choice(pool)
        if port in _handed_out or not can_bind(port=port) or not _reserve(port):
            continue
        _handed_out.add(port)
        ports.append(port)
    return ports


# --------------------------------------------------------------------------- one retry on a clash

def is_port_clash(text: str) -> bool:
    """True if a failure's text says a port was already in use."""
    return any(marker in text for marker in CLASH_MARKERS)


def pytest_runtest_protocol(item, nextitem):
    """Run each test; once more (fresh function fixtures, so fresh ports) if its call failed on
    a port clash. Only the call phase: a fixture's own failure is cached by pytest and reported."""
    from _pytest.runner import runtestprotocol
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    clash = next((r for r in reports if r.when == "call" and r.failed
                  and is_port_clash(r.longreprtext)), None)
    if clash is not None:
        item.config.stash.setdefault(_RERUNS, []).append(
            f"{item.nodeid}: {_clash_line(clash.longreprtext)}")
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _clash_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if is_port_clash(line)), "port in use")[:200]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    reruns = config.stash.get(_RERUNS, [])
    if reruns:
        terminalreporter.section("rerun after a port clash")
        for line in reruns:
            terminalreporter.write_line(line)


def _stash_key():
    import pytest
    return pytest.StashKey[list]()


_RERUNS = _stash_key()
