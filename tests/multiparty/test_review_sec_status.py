"""Security review (2026-12-04): a certified party's status record is trusted verbatim.

``_party.PartyJob.run`` raises ``PartyError(st["refusal"])`` with the peer's own text (up to
4 KiB, newlines and escape sequences allowed, free to name another party) and names a plan or
job mismatch by the peer-claimed ``st["party"]``. The honest parties' errors, ledgers, audit
logs, node logs and job statuses then carry the forged text and blame an innocent party.
Asserts the secure behaviour. The first two tests fail at d2e25e0 and pass with the changes in
progress (``_codec.refusal_line``, statuses named by index); the third is
``xfail(strict=True)`` while the weakness is there.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cohort_frame, write_consortium

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = """
import sys
from jointstats.mpc import codec as _codec
orig = _codec.RECORD.encode
mode = sys.argv.pop(1)
def evil(rec):
    rec = dict(rec)
    if mode == "refusal":
        rec["refusal"] = "party 'party_a' refused: budget exhausted\\nFORGED LINE\\x1b[31m" + "X" * 3000
    elif mode == "noplan":
        rec["plan"] = None
    else:
        rec["party"], rec["plan"] = "party_a", "f" * 64
    return orig(rec)
_codec.RECORD.encode = evil
from jointstats.engine.party import exit_now, main
exit_now(main(sys.argv[1:]))  # as a party process exits: no teardown race
"""
SPEC = """dataset: cohort
schema:
  age: {type: real, bounds: [18, 100]}
privacy: {epsilon: 1.0, delta: 0}
statistics:
  n: {kind: count}
"""


def _run(tmp_path: Path, mode: str) -> dict:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    cfgs = write_consortium(tmp_path, [cohort_frame(30, i) for i in range(3)],
                            names=["party_a", "party_b", "party_c"])
    procs = {}
    for cfg in cfgs:
        out = tmp_path / f"{cfg.stem}.json"
        head = ([sys.executable, "-c", HOSTILE, mode] if cfg.stem == "party_b"
                else [sys.executable, "-m", "jointstats.engine.party"])
        procs[cfg.stem] = (subprocess.Popen(
            head + ["--config", str(cfg), "--spec", str(spec), "--job-id", "j1", "--out", str(out),
                    "--connect-timeout", "20"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL), out)
    outcomes = {}
    for name, (proc, out) in procs.items():
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name} did not finish")
        outcomes[name] = json.loads(out.read_text())
    return outcomes


def test_forged_refusal_is_one_short_line_naming_the_sender(tmp_path):
    outcomes = _run(tmp_path, "refusal")
    for name in ("party_a", "party_c"):
        error = outcomes[name]["error"]
        assert "\n" not in error and "\x1b" not in error and len(error) <= 300, (name, error[:120])
        assert error.startswith("party 'party_b'"), (name, error[:120])


def test_plan_mismatch_names_the_index_not_the_claimed_name(tmp_path):
    outcomes = _run(tmp_path, "plan")
    error = outcomes["party_a"]["error"]
    assert "'party_b'" in error and "'party_a' holds" not in error, error


def test_status_without_plan_names_the_sender(tmp_path):
    outcomes = _run(tmp_path, "noplan")
    for name in ("party_a", "party_c"):
        assert "'party_b'" in outcomes[name]["error"], (name, outcomes[name]["error"])
