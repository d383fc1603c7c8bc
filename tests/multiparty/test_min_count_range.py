"""A huge crosstab ``min_count`` (from a spec or a peer's floor) suppresses every cell.

Found by the security review of 2026-12-04, fixed by ``_secure.suppression_threshold``:

``_secure._crosstab`` (and ``_dp.prepare``) compute ``keep = total >= min_count`` in a SecInt
of the statistic's ``secure_bits`` (43 bits here). A ``min_count`` beyond that range makes
MPyC's comparison return a non-bit (-32767, -29103, ...), so ``total * keep`` opens every
cell times a constant: the cells below every party's floor are revealed. Reachable by a
listed analyst (spec ``min_count: 1e15`` passes the limit of 1e15 and every floor check) and
by any certified party (its status record's ``min_count_floor``, up to 2**63 - 1, even when
the spec sets none). Exact mode: the exact counts.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cohort_frame, write_consortium

ROOT = Path(__file__).resolve().parents[2]
FLOOR = 10
SPEC = """dataset: cohort
schema:
  smoker: {{type: categorical, levels: ["no", "yes"]}}
  region: {{type: categorical, levels: [north, south, east, west]}}
statistics:
  t: {{kind: crosstab, rows: smoker, cols: region, min_count: {mc}}}
"""
HOSTILE = """
import sys
from jointstats.mpc import codec as _codec
orig = _codec.RECORD.encode
def evil(rec):
    return orig({**rec, "min_count_floor": 1 << 50})
_codec.RECORD.encode = evil
from jointstats.engine.party import exit_now, main
exit_now(main(sys.argv[1:]))  # as a party process exits: no teardown race
"""


def _frames():
    return [cohort_frame(40, i) for i in range(3)]


def _check(counts) -> None:
    df = pd.concat(_frames(), ignore_index=True)
    truth = pd.crosstab(df.smoker, df.region)
    truth = truth[["north", "south", "east", "west"]].loc[["no", "yes"]].to_numpy()
    pairs = [(shown, int(true)) for row, true_row in zip(counts, truth)
             for shown, true in zip(row, true_row)]
    leaked = [(shown, true) for shown, true in pairs if true < FLOOR and shown is not None]
    assert not leaked, f"cells below every party's floor {FLOOR} revealed (shown, true): {leaked}"
    assert all(shown is None or shown == true for shown, true in pairs), pairs


def _run(tmp_path: Path, mc: int, hostile: bool) -> list[dict]:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(mc=mc))
    cfgs = write_consortium(tmp_path, _frames(), policy={"min_count": FLOOR},
                            names=["party_a", "party_b", "party_c"])
    procs = []
    for cfg in cfgs:
        out = tmp_path / f"{cfg.stem}.json"
        head = ([sys.executable, "-c", HOSTILE] if hostile and cfg.stem == "party_b"
                else [sys.executable, "-m", "jointstats.engine.party"])
        procs.append((cfg.stem, subprocess.Popen(
            head + ["--config", str(cfg), "--spec", str(spec), "--job-id", "mc", "--out", str(out),
                    "--connect-timeout", "20"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL), out))
    results = []
    for name, proc, out in procs:
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name} did not finish")
        if name != "party_b" or not hostile:
            results.append(json.loads(out.read_text()))
    return results


def test_analyst_min_count_of_1e15_reveals_no_cell_below_the_floors(tmp_path):
    for outcome in _run(tmp_path, 10 ** 15, hostile=False):
        if outcome["ok"]:
            _check(outcome["result"]["results"]["t"]["counts"])


def test_peer_min_count_floor_reveals_no_cell_below_the_floors(tmp_path):
    for outcome in _run(tmp_path, FLOOR, hostile=True):
        if outcome["ok"]:
            _check(outcome["result"]["results"]["t"]["counts"])
