"""Linked (vertical) jobs over real party processes (issue 19).

Each party holds different columns of the same synthetic patients (tests.conftest's cohort),
with partially overlapping ids, keys written with different case and spacing, and repeated
and missing keys at one party. Exact results equal pandas' merge (after the documented
key rule: a missing or repeated key leaves its rows out) plus numpy/statsmodels on the
joined rows. A recorded party's view (every message it received and sent, its own log)
is checked against what docs/linkage.md says it learns.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import yaml

from jointstats import PartyError, run, validate
from jointstats.engine import linkage as L
from tests.common import cohort_schema
from tests.conftest import cohort_frame, mpc_peers

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = """
name: linked
dataset: linked
partition: vertical
link: {key: pid%s}
""" + cohort_schema()

ALL_KINDS = """statistics:
  n:      {kind: count}
  n_bmi:  {kind: count, column: bmi}
  s_age:  {kind: sum, column: age}
  m_sbp:  {kind: mean, column: sbp}
  v_bmi:  {kind: variance, column: bmi}
  corr:   {kind: correlation, columns: [age, bmi, sbp]}
  ct:     {kind: crosstab, rows: smoker, cols: region}
  h:      {kind: histogram, column: age, bins: [18, 40, 60, 80, 100]}
  ols:    {kind: regression, target: sbp, features: [age, bmi, visits, smoker, region]}
"""

POLICY = {"budget": {"epsilon": 100.0, "delta": 1.0e-4}, "max_epsilon_per_job": 10.0,
          "min_count": 0, "allow_exact": True, "analysts": {}}


def linked_consortium(root: Path, frames, columns, compute=(), names=None, policy=None) -> list[Path]:
    """One CSV and one config per holder (declaring the columns it holds), then the
    compute-only parties (``policy``: entries added to every party's); returns the config paths."""
    names = names or [f"holder_{chr(97 + i)}" for i in range(len(frames))]
    base = {**POLICY, **(policy or {})}
    peers = mpc_peers(names[:len(frames)], compute)
    paths = []
    for name, frame, cols in zip(names, frames, columns):
        d = root / name
        (d / "data").mkdir(parents=True, exist_ok=True)
        frame.to_csv(d / "data" / "linked.csv", index=False)
        cfg = {"party": name, "mpc": {"parties": peers}, "api": {"host": "127.0.0.1", "port": 0},
               "datasets": {"linked": {"source": "data/linked.csv", "columns": ["pid", *cols]}},
               "policy": base, "state": f"state/{name}.sqlite"}
        paths.append(d / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in compute:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        cfg = {"party": name, "mpc": {"parties": peers}, "api": {"host": "127.0.0.1", "port": 0},
               "policy": {**base, "budget": {"epsilon": 0, "delta": 0}}, "state": f"state/{name}.sqlite"}
        paths.append(d / f"{name}.yaml")
        paths[-1].write_text(yaml.safe_dump(cfg, sort_keys=False))
    return paths


def people(n: int = 240, seed: int = 5) -> pd.DataFrame:
    df = cohort_frame(n, seed)
    df["pid"] = [f"P{i:05d}" for i in range(n)]
    return df


def split(df: pd.DataFrame, parts: list[list[str]], seed: int = 0) -> list[pd.DataFrame]:
    """Each part: 80% of the people (a different sample each), its columns and the id."""
    return [df.sample(frac=0.8, random_state=seed + i)[["pid", *cols]].reset_index(drop=True)
            for i, cols in enumerate(parts)]


BOUNDS = {"age": (18, 100), "bmi": (10, 60), "sbp": (80, 220), "visits": (0, 50)}


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """The documented key rule on pandas' side: trim, case-fold, drop missing and repeated
    keys; values clipped to the schema's bounds, as every owner does."""
    f = frame.copy()
    for col, (lo, hi) in BOUNDS.items():
        if col in f:
            f[col] = f[col].clip(lo, hi)
    f["pid"] = f["pid"].map(lambda k: L.normalise_key(None if pd.isna(k) else k))
    f = f[f["pid"].notna()]
    return f[~f["pid"].duplicated(keep=False)]


def joined(frames) -> pd.DataFrame:
    out = clean(frames[0])
    for f in frames[1:]:
        out = out.merge(clean(f), on="pid")
    return out


def write_spec(root: Path, stats: str, link: str = "", privacy: str = "") -> Path:
    path = root / "spec.yaml"
    path.write_text(SCHEMA % link + (f"privacy: {privacy}\n" if privacy else "") + stats)
    return path


def check_all_kinds(res: dict, j: pd.DataFrame) -> None:
    r = res["results"]
    assert r["n"]["value"] == len(j)
    assert r["n_bmi"]["value"] == len(j)
    assert r["s_age"]["value"] == pytest.approx(j.age.sum(), rel=1e-9)
    assert r["m_sbp"]["value"] == pytest.approx(j.sbp.mean(), rel=1e-9)
    assert r["v_bmi"]["value"] == pytest.approx(j.bmi.var(), rel=1e-9)
    assert np.allclose(np.array(r["corr"]["matrix"], dtype=float),
                       j[["age", "bmi", "sbp"]].corr().to_numpy(), atol=1e-9)
    truth = pd.crosstab(j.smoker, j.region).reindex(index=["no", "yes"],
                                                   columns=["north", "south", "east", "west"]).fillna(0)
    assert r["ct"]["counts"] == truth.astype(int).to_numpy().tolist()
    assert r["h"]["counts"] == np.histogram(j.age, [18, 40, 60, 80, 100])[0].tolist()
    x = pd.DataFrame({"age": j.age, "bmi": j.bmi, "visits": j.visits,
                      "smoker[yes]": (j.smoker == "yes").astype(float)})
    for lvl in ("south", "east", "west"):
        x[f"region[{lvl}]"] = (j.region == lvl).astype(float)
    fit = sm.OLS(j.sbp.to_numpy(), sm.add_constant(x)).fit()
    ols = r["ols"]
    assert ols["terms"] == ["intercept", *x.columns]
    # reals on the plan's grid (2^-f of the bound), as horizontal jobs: rtol 1e-6
    np.testing.assert_allclose(ols["coefficients"], fit.params.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(ols["std_errors"], fit.bse.to_numpy(), rtol=1e-6)
    assert ols["r_squared"] == pytest.approx(fit.rsquared, rel=1e-6) and ols["n"] == len(j)


def test_three_holders_exact_equals_pandas_merge(tmp_path):
    df = people()
    frames = split(df, [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]])
    # keys as different systems write them: case and spacing (folded and trimmed), and at
    # holder_b a repeated key and a missing one (their rows are left out)
    frames[1]["pid"] = frames[1]["pid"].str.lower().radd("  ")
    frames[1].loc[3, "pid"] = frames[1].loc[4, "pid"]
    frames[1].loc[7, "pid"] = None
    cfgs = linked_consortium(tmp_path, frames, [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]])
    spec = write_spec(tmp_path, ALL_KINDS)
    j = joined(frames)
    assert 80 < len(j) < len(df)
    described = validate(spec, cfgs)
    assert "holder_b holds: bmi, visits, region" in described
    metrics: dict = {}
    res = run(spec, cfgs, metrics=metrics).to_dict()
    check_all_kinds(res, j)
    assert {m["linked_records"] for m in metrics.values()} == {len(j)}
    assert "the number of linked records" in res["mpc"]["linkage"]  # what the parties saw


def test_two_holders_and_a_compute_party(tmp_path):
    df = people(200, 9)
    frames = split(df, [["age", "bmi", "smoker", "visits"], ["sbp", "region"]], seed=3)
    cfgs = linked_consortium(tmp_path, frames, [["age", "bmi", "smoker", "visits"], ["sbp", "region"]],
                             compute=["trustee"])
    res = run(write_spec(tmp_path, ALL_KINDS), cfgs).to_dict()
    check_all_kinds(res, joined(frames))
    assert res["mpc"]["compute_parties"] == ["trustee"]


@pytest.mark.parametrize("compute", [(), ("trustee",)], ids=["4-parties", "5-parties"])
def test_four_holders_with_and_without_a_compute_party(tmp_path, compute):
    df = people(120, 11)
    parts = [["age", "smoker"], ["bmi"], ["region", "visits"], ["sbp"]]
    frames = split(df, parts, seed=7)
    cfgs = linked_consortium(tmp_path, frames, parts, compute=compute)
    stats = """statistics:
  n:   {kind: count}
  ct:  {kind: crosstab, rows: smoker, cols: region}
  ols: {kind: regression, target: sbp, features: [age, bmi, region]}
"""
    res = run(write_spec(tmp_path, stats), cfgs).to_dict()
    j = joined(frames)
    assert res["results"]["n"]["value"] == len(j)
    truth = pd.crosstab(j.smoker, j.region).reindex(index=["no", "yes"],
                                                   columns=["north", "south", "east", "west"]).fillna(0)
    assert res["results"]["ct"]["counts"] == truth.astype(int).to_numpy().tolist()
    x = pd.DataFrame({"age": j.age, "bmi": j.bmi})
    for lvl in ("south", "east", "west"):
        x[f"region[{lvl}]"] = (j.region == lvl).astype(float)
    fit = sm.OLS(j.sbp.to_numpy(), sm.add_constant(x)).fit()
    np.testing.assert_allclose(res["results"]["ols"]["coefficients"], fit.params.to_numpy(), rtol=1e-6)


def test_dp_linked_job_with_four_holders_and_a_compute_party(tmp_path):
    """Five parties (t = 2): every party adds its dummy linked records, which no coalition of
    two knows (the shuffle sets), so no opt-in is needed; the DP answers stay near the pooled
    ones and the parties' linked count is the real one plus the dummies."""
    df = people(160, 29)
    parts = [["age", "smoker"], ["bmi"], ["region", "visits"], ["sbp"]]
    frames = split(df, parts, seed=9)
    stats = """statistics:
  n: {kind: count}
  m: {kind: mean, column: sbp}
"""
    spec = write_spec(tmp_path, stats, ", rows: 160", "{epsilon: 9.0}")
    cfgs = linked_consortium(tmp_path, frames, parts, compute=("helper",))
    metrics: dict = {}
    res = run(spec, cfgs, metrics=metrics).to_dict()
    j = joined(frames)
    r = res["results"]
    assert abs(r["n"]["value"] - len(j)) <= 10 * r["n"]["noise"]["scale"] + 1
    assert abs(r["m"]["value"] - j.sbp.mean()) < 15
    k = res["privacy"]["linkage"]["shift"]
    seen = {m["linked_records"] for m in metrics.values()}
    assert len(seen) == 1 and len(j) <= seen.pop() <= len(j) + 5 * 2 * k  # 5 parties' dummies
    assert {m["dummy_rows"] for m in metrics.values()} == {5 * 2 * k}  # 2k rows each


def test_left_join_counts_and_crosstab(tmp_path):
    df = people(200, 13)
    parts = [["smoker"], ["region", "bmi"], ["age", "sbp", "visits"]]
    frames = split(df, parts, seed=11)
    cfgs = linked_consortium(tmp_path, frames, parts)
    stats = """statistics:
  n:      {kind: count}
  n_reg:  {kind: count, column: region}
  ct:     {kind: crosstab, rows: smoker, cols: region}
  h:      {kind: histogram, column: age, bins: [18, 60, 100]}
"""
    res = run(write_spec(tmp_path, stats, ", join: left, base: holder_a, rows: 200"), cfgs).to_dict()
    a = clean(frames[0])
    left = a.merge(clean(frames[1]), on="pid", how="left").merge(clean(frames[2]), on="pid", how="left")
    r = res["results"]
    assert r["n"]["value"] == len(a)  # every record of the base, padding not counted
    assert r["n_reg"]["value"] == int(left.region.notna().sum())
    truth = pd.crosstab(left.smoker, left.region).reindex(index=["no", "yes"],
                                                         columns=["north", "south", "east", "west"]).fillna(0)
    assert r["ct"]["counts"] == truth.astype(int).to_numpy().tolist()
    assert r["h"]["counts"] == np.histogram(left.age.dropna(), [18, 60, 100])[0].tolist()


def test_dp_left_join_opens_nothing_of_its_matches(tmp_path):
    """A left join keeps every bin of its base and multiplies the other holders' columns by
    secret match bits: nothing about the matches is opened, so it has no dummy records and
    its statistics get the whole budget; the noisy answers stay near the pooled ones."""
    df = people(200, 53)
    parts = [["smoker"], ["region", "bmi"], ["age", "sbp", "visits"]]
    frames = split(df, parts, seed=17)
    cfgs = linked_consortium(tmp_path, frames, parts, compute=("helper",))
    stats = """statistics:
  n:      {kind: count}
  n_reg:  {kind: count, column: region}
  ct:     {kind: crosstab, rows: smoker, cols: region}
"""
    metrics: dict = {}
    res = run(write_spec(tmp_path, stats, ", join: left, base: holder_a, rows: 200", "{epsilon: 9.0}"),
              cfgs, metrics=metrics).to_dict()
    assert "linkage" not in res["privacy"] and not any("dummy_rows" in m for m in metrics.values())
    a = clean(frames[0])
    left = a.merge(clean(frames[1]), on="pid", how="left")
    r = res["results"]
    assert abs(r["n"]["value"] - len(a)) <= 10 * r["n"]["noise"]["scale"] + 1
    assert abs(r["n_reg"]["value"] - int(left.region.notna().sum())) <= 10 * r["n_reg"]["noise"]["scale"] + 1
    assert r["n"]["noise"]["scale"] == pytest.approx(3 / 9.0)  # a third of epsilon each


def test_a_dp_linked_count_is_charged_before_anyone_sees_it(tmp_path, monkeypatch):
    """A DP inner join's noisy linked count is a release: every party commits its budget
    before it is opened (found in review: a job that failed after the opening gave the
    reservation back, so reruns could average the count for free). A party dying right after
    the opening leaves the others' budgets spent and their audit logs intact."""
    from fractions import Fraction

    from jointstats.consortium.config import load_party_config
    from jointstats.ledger.state import NodeState
    from tests import faults
    df = people(120, 59)
    parts = [["age", "smoker"], ["bmi", "region"], ["sbp", "visits"]]
    cfgs = linked_consortium(tmp_path, split(df, parts, seed=23), parts)
    spec = write_spec(tmp_path, "statistics:\n  n: {kind: count}\n", ", rows: 120", "{epsilon: 1.0}")
    faults.arm(monkeypatch, "holder_c:linked")
    with pytest.raises(PartyError, match="party 'holder_c'"):
        run(spec, cfgs)
    for cfg in cfgs[:2]:
        state = NodeState(load_party_config(cfg).state)
        try:
            assert state.spent("linked")[0] == Fraction(1) and state.verify_audit()[0]
        finally:
            state.close()


def test_dp_linked_job_with_padding(tmp_path):
    df = people(300, 17)
    frames = split(df, [["age", "smoker"], ["bmi", "region"], ["sbp", "visits"]], seed=21)
    cfgs = linked_consortium(tmp_path, frames, [["age", "smoker"], ["bmi", "region"], ["sbp", "visits"]])
    stats = """statistics:
  n:    {kind: count}
  m:    {kind: mean, column: sbp}
  ct:   {kind: crosstab, rows: smoker, cols: region}
"""
    metrics: dict = {}
    res = run(write_spec(tmp_path, stats, ", rows: 300", "{epsilon: 9.0}"), cfgs, metrics=metrics).to_dict()
    j = joined(frames)
    r = res["results"]
    # the parties see the linked records raised by every party's dummy records: the exact count
    # plus the sum of 3 draws of clamp(k + DL(1 / epsilon_link), 0, 2k), never below it (an
    # inner join's count changes by 1 with one row: sensitivity 1)
    link = res["privacy"]["linkage"]
    k = link["shift"]
    assert link["epsilon"] == pytest.approx(9.0 / 4)  # weight 1 against the 3 statistics
    seen = {m["linked_records"] for m in metrics.values()}
    assert len(seen) == 1 and len(j) <= seen.pop() <= len(j) + 6 * k
    assert {m["dummy_rows"] for m in metrics.values()} == {3 * 2 * k}
    assert link["sensitivity"] == 1
    assert res["privacy"]["mechanism"] == "discrete_laplace"
    assert all("noise" in v for v in r.values())
    assert abs(r["n"]["value"] - len(j)) <= 10 * r["n"]["noise"]["scale"] + 1
    assert abs(r["m"]["value"] - j.sbp.mean()) < 15
    assert sum(map(sum, r["ct"]["counts"])) == pytest.approx(len(j), abs=60)


def test_a_column_held_by_two_parties_is_refused_naming_both(tmp_path):
    df = people(60, 19)
    parts = [["age", "smoker", "sbp"], ["bmi", "region", "visits", "sbp"], []]
    frames = split(df, parts)
    cfgs = linked_consortium(tmp_path, frames, parts)
    spec = write_spec(tmp_path, "statistics:\n  n: {kind: count}\n")
    with pytest.raises(Exception, match="schema.sbp: held by two parties, 'holder_a' and 'holder_b'"):
        validate(spec, cfgs)
    with pytest.raises(PartyError, match="schema.sbp: held by two parties, 'holder_a' and 'holder_b'"):
        run(spec, cfgs)


# ----------------------------------------------------------------------------- a party's view

RECORDER = r"""
import sys, json
from pathlib import Path
from jointstats.mpc import runtime as _mpc
out = Path(sys.argv.pop(1))
received, sent = [], []
decode, send = _mpc.JointRuntime._decode, _mpc.JointRuntime._send_message
def rec_decode(self, peer, dec, data):
    received.append((peer, bytes(data)))
    return decode(self, peer, dec, data)
def rec_send(self, peer, data):
    sent.append((peer, bytes(data)))
    return send(self, peer, data)
_mpc.JointRuntime._decode, _mpc.JointRuntime._send_message = rec_decode, rec_send
from jointstats.engine.party import exit_now, main
status = main(sys.argv[1:])
out.mkdir(parents=True, exist_ok=True)
for name, msgs in (("received", received), ("sent", sent)):
    with open(out / name, "wb") as fh:
        for peer, data in msgs:
            fh.write(peer.to_bytes(2, "little") + len(data).to_bytes(8, "little") + data)
exit_now(status)
"""


def _messages(path: Path) -> list[tuple[int, bytes]]:
    raw, out, pos = path.read_bytes(), [], 0
    while pos < len(raw):
        peer = int.from_bytes(raw[pos:pos + 2], "little")
        size = int.from_bytes(raw[pos + 2:pos + 10], "little")
        out.append((peer, raw[pos + 10:pos + 10 + size]))
        pos += 10 + size
    return out


@pytest.mark.parametrize("who", ["holder_a", "holder_b"])
def test_a_holders_view_matches_the_leakage_statement(tmp_path, who):
    """What a holder receives and logs (docs/linkage.md, "What each party learns"), for the
    leader (holder_a: the holders have as many keys, the first leads) and another holder
    (holder_b): no identifier of anyone in any form it could test (text, or the hash point
    of any key), never its own hash points unblinded, no point it sent
    coming back unchanged (the answers are under another party's scalar), the number of
    linked records and nothing else opened to it, and a log with counts only."""
    df = people(150, 23)
    parts = [["age", "smoker"], ["bmi", "region"], ["sbp", "visits"]]
    frames = split(df, parts, seed=31)
    cfgs = linked_consortium(tmp_path, frames, parts)
    spec = write_spec(tmp_path, "statistics:\n  n: {kind: count}\n  ct: {kind: crosstab, rows: smoker, "
                                "cols: region}\n")
    procs = []
    for cfg in cfgs:
        out = tmp_path / f"{cfg.stem}.json"
        head = ([sys.executable, "-c", RECORDER, str(tmp_path / "view")] if cfg.stem == who
                else [sys.executable, "-m", "jointstats.engine.party"])
        procs.append((cfg.stem, subprocess.Popen(
            head + ["--config", str(cfg), "--spec", str(spec), "--job-id", "view", "--out", str(out),
                    "--connect-timeout", "30"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"{cfg.stem}.log", "w")), out))
    for name, proc, out in procs:
        proc.wait(timeout=240)
        assert json.loads(out.read_text())["ok"], out.read_text()
    received = _messages(tmp_path / "view" / "received")
    sent = _messages(tmp_path / "view" / "sent")
    blob = b"".join(d for _, d in received)
    ids = {k for f in frames for k in f["pid"].dropna()}
    for key in ids:  # no identifier as text, in any case
        for form in (key, key.lower(), key.upper()):
            assert form.encode() not in blob
    sizes = [len(clean(f)) for f in frames]
    assert sizes[0] == min(sizes)  # holder_a leads
    keys = sorted({L.normalise_key(k) for k in ids} - {None})
    hashes = {bytes(p) for p in L.hash_points(keys, "linked")}
    points_in = [d[i:i + 32] for _, d in received if len(d) % 32 == 0 and len(d) >= 64
                 for i in range(0, len(d), 32)]
    points_out = {d[i:i + 32] for _, d in sent if len(d) % 32 == 0 and len(d) >= 64
                  for i in range(0, len(d), 32)}
    assert points_in and points_out
    assert not hashes & set(points_in)  # no hash point of any key: nothing to test a guess on
    assert not hashes & points_out  # its own keys' points leave it only blinded
    # nothing it sent comes back as it was (the echo round after each all-to-all record
    # forwards SHA-256 digests of the records, the same in and out by design: not points)
    digests = {hashlib.sha256(d).digest() for _, d in received + sent}
    assert not (points_out & set(points_in)) - digests
    log = (tmp_path / f"{who}.log").read_text()
    assert not any(k in log or k.lower() in log for k in ids)
    result = json.loads((tmp_path / f"{who}.json").read_text())
    # it learns the number of linked records (docs/linkage.md says so), nothing per record
    assert result["metrics"]["linked_records"] == len(joined(frames))


def test_a_missing_key_column_is_named_in_exact_mode_and_not_in_dp_mode(tmp_path):
    df = people(60, 29)
    parts = [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]]
    frames = split(df, parts)
    frames[2] = frames[2].rename(columns={"pid": "patient"})
    cfgs = linked_consortium(tmp_path, frames, parts)
    stats = "statistics:\n  n: {kind: count}\n"
    with pytest.raises(PartyError, match="party 'holder_c': the link key column 'pid' is missing"):
        run(write_spec(tmp_path, stats), cfgs)
    # DP mode: whatever went wrong while reading stays in the party's own log
    with pytest.raises(PartyError) as err:
        run(write_spec(tmp_path, stats, ", rows: 60", "{epsilon: 1.0}"), cfgs)
    assert "could not read and aggregate its data; the reason is in its own log only" in str(err.value)
    assert "pid" not in str(err.value)


def test_more_keys_than_link_rows_refused_in_exact_mode(tmp_path):
    df = people(80, 37)
    parts = [["age", "smoker"], ["bmi", "region", "visits"], ["sbp"]]
    frames = split(df, parts)
    cfgs = linked_consortium(tmp_path, frames, parts)
    with pytest.raises(PartyError, match=r"party 'holder_a' has 64 usable keys, more than the link.rows of 50"):
        run(write_spec(tmp_path, "statistics:\n  n: {kind: count}\n", ", rows: 50"), cfgs)


# ----------------------------------------------------------------------------- hostile holders

HOSTILE = r"""
import sys
import numpy as np
from jointstats.engine import linkage as L
from jointstats.engine import vertical as V
from jointstats.mpc import codec as C
from jointstats.mpc import runtime as R
attack = sys.argv.pop(1)
if attack == "table":  # an OPPRF table with a residue above its prime
    real = V._programmed
    def bad(*args):
        seed, table, masks = real(*args)
        table = table.copy()
        table[0, 0, 0] = 0xFFFFFFFF
        return seed, table, masks
    V._programmed = bad
elif attack == "holdings":  # tells party 0 another number of keys than the others
    send = R.JointRuntime._send_message
    def told(self, peer, data):
        if sys._getframe(1).f_code.co_name == "transfer" and peer == 0:
            try:
                msg = C.decode_ints(data)
            except Exception:  # another kind of message
                msg = None
            if msg and msg[0] > 1 and len(msg) > 1:  # [keys, held columns...]
                data = C.encode_ints([msg[0] - 1, *msg[1:]])
        return send(self, peer, data)
    R.JointRuntime._send_message = told
elif attack == "small-order":  # the leader's queries: the point u = 0 (order 2)
    class Zero:
        def apply(self, points, factor=1):
            return np.zeros_like(points)
    real_blinding = L.blinding
    L.blinding = lambda: (Zero(), real_blinding()[1])
elif attack == "two-queries":  # the leader asks one holder other points than the others
    real_codec = V._points_codec
    calls = []
    def codec(n):
        c = real_codec(n)
        def encode(points):
            calls.append(1)
            if len(calls) == 2:  # the second holder's copy of the queries
                points = points.copy()
                points[0, 0] ^= 1
            return c.encode(points)
        return C.Codec(c.name, encode, c.decode)
    V._points_codec = codec
from jointstats.engine.party import exit_now, main
exit_now(main(sys.argv[1:]))
"""


def _run_hostile(tmp_path, cfgs, spec, who: str, attack: str) -> dict:
    """Every party's outcome (its --out JSON) when ``who`` runs ``attack``."""
    procs = []
    for cfg in cfgs:
        out = tmp_path / f"{cfg.stem}.json"
        head = ([sys.executable, "-c", HOSTILE, attack] if cfg.stem == who
                else [sys.executable, "-m", "jointstats.engine.party"])
        procs.append((cfg.stem, subprocess.Popen(
            head + ["--config", str(cfg), "--spec", str(spec), "--job-id", attack, "--out", str(out),
                    "--connect-timeout", "30"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL), out))
    for _, proc, _ in procs:
        proc.wait(timeout=240)
    return {name: json.loads(out.read_text()) for name, _, out in procs}


def _three_holders(tmp_path):
    df = people(90, 37)
    parts = [["age", "smoker"], ["bmi", "region"], ["sbp", "visits"]]
    cfgs = linked_consortium(tmp_path, split(df, parts, seed=41), parts)
    return cfgs, write_spec(tmp_path, "statistics:\n  n: {kind: count}\n")


def test_a_holder_sending_a_malformed_oprf_table_is_dropped_and_named(tmp_path):
    """A peer's OPPRF table is decoded as residues of the announced shape, each below its
    prime; anything else drops the peer and the job fails naming it."""
    cfgs, spec = _three_holders(tmp_path)
    leader = _run_hostile(tmp_path, cfgs, spec, "holder_b", "table")["holder_a"]
    assert not leader["ok"]
    assert "holder_b" in leader["error"] and "residue" in leader["error"], leader["error"]


def test_a_holder_announcing_different_key_counts_is_named_before_anything_moves(tmp_path):
    """The holdings are echoed (found in review: a holder telling parties different counts
    made them derive different leaders, and an honest holder then sent it the other holders'
    shared seed and its table): every honest party fails naming the liar."""
    cfgs, spec = _three_holders(tmp_path)
    outcomes = _run_hostile(tmp_path, cfgs, spec, "holder_c", "holdings")
    for name in ("holder_a", "holder_b"):
        assert not outcomes[name]["ok"]
        assert outcomes[name]["error"].startswith("party 'holder_c' sent different parties different"), \
            outcomes[name]["error"]


def test_a_point_of_small_order_names_the_party_that_sent_it(tmp_path):
    cfgs, spec = _three_holders(tmp_path)
    outcomes = _run_hostile(tmp_path, cfgs, spec, "holder_a", "small-order")  # holder_a leads
    for name in ("holder_b", "holder_c"):
        assert not outcomes[name]["ok"]
        assert "holder_a" in outcomes[name]["error"] and "small order" in outcomes[name]["error"], \
            outcomes[name]["error"]


def test_a_leader_asking_holders_different_points_is_named(tmp_path):
    """From 5 parties each holder answers every bin under its own scalars; the holders compare
    digests of the queries, so a leader cannot decode one holder's table under a key it
    guessed and another's under a key it knows (a membership test through the opening)."""
    df = people(90, 43)
    parts = [["age", "smoker"], ["bmi"], ["region", "visits"], ["sbp"]]
    cfgs = linked_consortium(tmp_path, split(df, parts, seed=3), parts, compute=("helper",))
    spec = write_spec(tmp_path, "statistics:\n  n: {kind: count}\n")
    outcomes = _run_hostile(tmp_path, cfgs, spec, "holder_a", "two-queries")
    named = [o for n, o in outcomes.items() if n != "holder_a" and "different linkage queries" in (o.get("error") or "")]
    assert named and all(not o["ok"] for n, o in outcomes.items() if n != "holder_a")
