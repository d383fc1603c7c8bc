"""The test helpers' ports (tests/ports.py): outside the ephemeral range, reserved, one retry on a clash."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import ports

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    lo, hi = ports._ephemeral_range()
    got = ports.free_ports(8)
    assert len(set(got)) == 8
    assert all(not lo <= p <= hi for p in got) or ports._pool() == range(1024, 65536)
    for p in got:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
    assert not set(got) & set(ports.free_ports(8))  # never twice in a process


def test_a_bound_port_is_passed_over(monkeypatch):
    busy, free = ports.free_ports(2)
    monkeypatch.setattr(ports, "_pool", lambda: [busy, free])
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setattr(ports, "_reserve", lambda port: True)
    assert ports.can_bind("127.0.0.1")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", busy))
        assert ports.free_ports(1) == [free]


def test_a_port_reserved_by_another_process_is_not_handed_out():
    code = textwrap.dedent("""
        import sys
        from tests import ports
        ports._pool = lambda: range(int(sys.argv[1]), int(sys.argv[1]) + 40)
        print(",".join(map(str, ports.free_ports(20))), flush=True)
        sys.stdin.read()  # hold the reservations until told to exit
    """)
    base = ports.free_ports(1)[0]
    other = subprocess.Popen([sys.executable, "-c", code, str(base)], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        theirs = {int(p) for p in other.stdout.readline().split(",")}
        assert (ports._reservation_dir() / str(min(theirs))).exists()
        saved = ports._pool
        ports._pool = lambda: range(base, base + 40)
        try:
            mine = ports.free_ports(10)
        finally:
            ports._pool = saved
        assert not theirs & set(mine)
    finally:
        other.communicate("", timeout=30)
    assert not (ports._reservation_dir() / str(min(theirs))).exists()  # released at exit


@pytest.mark.parametrize("text, clash", [
    ("PartyError: party 'party_b' cannot listen on 127.0.0.1:40001: address in use", True),
    ("OSError: [Errno 98] Address already in use", True),
    ("PartyError: party 'party_b' lost the connection", False)])
def test_clash_texts(text, clash):
    assert ports.is_port_clash(text) is clash


def test_a_test_failing_on_a_port_clash_runs_once_more_with_fresh_fixtures(pytester):
    pytester.makeconftest("from tests.ports import pytest_runtest_protocol, pytest_terminal_summary\n")
    pytester.makepyfile(test_flaky="""
        import itertools, pytest
        calls = itertools.count()
        made = []

        @pytest.fixture
        def fresh():
            made.append(object())
            return made[-1]

        def test_clash_once(fresh):
            if next(calls) == 0:
                raise RuntimeError("party 'party_b' cannot listen on 127.0.0.1:40001: in use")
            assert len(made) == 2

        def test_other_failure_not_rerun():
            raise RuntimeError("party 'party_b' lost the connection")

        def test_clash_twice():
            raise OSError(98, "Address already in use")
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["*rerun after a port clash*",
                                 "test_flaky.py::test_clash_once: *cannot listen on*",
                                 "test_flaky.py::test_clash_twice: *Address already in use*"])
    assert "test_other_failure_not_rerun:" not in result.stdout.str()
