"""Party processes on one machine share its cores instead of each starting a thread per core."""
from __future__ import annotations

import os

from jointstats.local import runner


def test_each_local_party_gets_its_share_of_the_cores(monkeypatch):
    for var in runner.THREAD_VARIABLES + ("JOINTSTATS_THREADS",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    env = runner.party_environment(3)
    assert {env[v] for v in runner.THREAD_VARIABLES} == {"2"} and env["JOINTSTATS_THREADS"] == "2"
    assert runner.party_environment(16)["OPENBLAS_NUM_THREADS"] == "1"  # never zero
    assert env["PYTHONUNBUFFERED"] == "1"


def test_a_users_own_thread_settings_are_kept(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env = runner.party_environment(3)
    assert env["OPENBLAS_NUM_THREADS"] == "4" and env["OMP_NUM_THREADS"] == "1"
