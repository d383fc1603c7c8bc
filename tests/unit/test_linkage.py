"""Linked (vertical) jobs without a network: spec and config fields, column owners, the
linkage's building blocks (keys, pseudonyms, shuffle schedule, grouping) and the encoding."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from jointstats.engine import linkage as L
from jointstats.consortium.config import parse_party_config
from jointstats.errors import ConfigError, DataError, SpecError
from jointstats.plan.sealed import assign_columns, make_plan
from jointstats.plan.spec import parse_spec

SPEC = """
name: linked
dataset: linked_cohort
partition: vertical
link: {key: patient_id}
schema:
  sbp:       {type: real, bounds: [80, 220]}
  diagnosis: {type: categorical, levels: [none, hypertension, diabetes]}
  cost:      {type: real, bounds: [0, 100000]}
statistics:
  linked:  {kind: count}
  model:   {kind: regression, target: cost, features: [sbp, diagnosis]}
"""


def test_vertical_spec_parses_with_its_link():
    spec = parse_spec(SPEC)
    assert spec.vertical and spec.link.key == "patient_id"
    assert spec.link.case == "fold" and spec.link.join == "inner" and spec.link.rows is None


@pytest.mark.parametrize("text, field", [
    (SPEC.replace("link: {key: patient_id}\n", ""), "link:"),
    (SPEC.replace("partition: vertical", "partition: horizontal"), "link:"),
    (SPEC.replace("{key: patient_id}", "{key: sbp}"), "link.key:"),
    (SPEC.replace("{key: patient_id}", "{}"), "link.key:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, case: upper}"), "link.case:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, rows: 0}"), "link.rows:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, join: outer}"), "link.join:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, join: left}"), "link.base:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, base: a}"), "link.base:"),
    (SPEC.replace("{key: patient_id}", "{key: patient_id, colour: red}"), "link.colour:"),
    (SPEC.replace("statistics:", "privacy: {epsilon: 1}\nstatistics:"), "link.rows:"),
    (SPEC.replace("link: {key: patient_id}", "key: patient_id"), "key:"),
])
def test_bad_link_fields_name_the_field(text, field):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert str(err.value).startswith(field), str(err.value)
    assert "\n" not in str(err.value)


def test_dp_linked_spec_needs_and_takes_rows():
    spec = parse_spec(SPEC.replace("{key: patient_id}", "{key: patient_id, rows: 5000}")
                      .replace("statistics:", "privacy: {epsilon: 1}\nstatistics:"))
    assert spec.link.rows == 5000


def test_owners_each_column_exactly_once():
    spec = parse_spec(SPEC)
    owners = assign_columns(spec, {"a": ("sbp",), "b": ("cost",), "c": ("diagnosis",)})
    assert owners == {"sbp": "a", "diagnosis": "c", "cost": "b"}
    with pytest.raises(SpecError, match=r"^schema.cost: held by two parties, 'b' and 'c'"):
        assign_columns(spec, {"a": ("sbp",), "b": ("cost",), "c": ("diagnosis", "cost")})
    with pytest.raises(SpecError, match=r"^schema.cost: held by no party"):
        assign_columns(spec, {"a": ("sbp",), "b": (), "c": ("diagnosis",)})
    with pytest.raises(SpecError, match=r"^party 'a' declares column 'age'"):
        assign_columns(spec, {"a": ("age",)})


def test_plan_needs_three_parties_and_shows_the_owners():
    spec = parse_spec(SPEC)
    with pytest.raises(SpecError, match="at least 3 parties"):
        make_plan(spec, ["a", "b"])
    plan = make_plan(spec, ["a", "b", "c"])
    assert plan.vertical and plan.link[0] == "patient_id"
    text = plan.describe((), {"sbp": "a", "diagnosis": "c", "cost": "b"})
    assert "a holds: sbp" in text and "c holds: diagnosis" in text and "linked on 'patient_id'" in text
    left = parse_spec(SPEC.replace("{key: patient_id}", "{key: patient_id, join: left, base: z}"))
    with pytest.raises(SpecError, match=r"^link.base: 'z' is not one of the parties"):
        make_plan(left, ["a", "b", "c"])


def test_party_config_declares_held_columns(tmp_path):
    base = {"party": "a", "mpc": {"parties": [{"name": "a", "host": "127.0.0.1", "port": 1},
                                              {"name": "b", "host": "127.0.0.1", "port": 2}]},
            "datasets": {"linked_cohort": {"source": "x.csv", "columns": ["patient_id", "sbp"]}}}
    cfg = parse_party_config(base, tmp_path / "a.yaml")
    assert cfg.held_columns("linked_cohort") == ("patient_id", "sbp")
    assert cfg.held_columns("other") is None
    for bad in (["sbp", "sbp"], "sbp", [1]):
        base["datasets"]["linked_cohort"]["columns"] = bad
        with pytest.raises(ConfigError, match="datasets.linked_cohort.columns"):
            parse_party_config(base, tmp_path / "a.yaml")


def test_key_normalisation():
    assert L.normalise_key("  AB-12 ") == "ab-12"
    assert L.normalise_key("  AB-12 ", "exact") == "AB-12"
    assert L.normalise_key("Straße") == "strasse"  # case folding, not just lower()
    assert L.normalise_key("ＡＢ１") == "ab1"  # NFKC: full-width forms
    assert L.normalise_key(1234.0) == "1234" and L.normalise_key(1234) == "1234"
    for missing in (None, float("nan"), "", "   "):
        assert L.normalise_key(missing) is None


def test_missing_and_repeated_keys_are_left_out():
    keys = ["a", None, "b", "c", "b"]
    assert L.usable_keys(keys).tolist() == [True, False, False, True, False]


def test_the_blinded_exchange_gives_the_holders_prf_outputs():
    """The leader multiplies its query points by r, the holder answers with its scalar of each
    bin, the leader multiplies by r^-1: it gets k_b * H(key), what the holder computes for
    its own keys, without the holder seeing H(key) (only r times it)."""
    keys = L.bin_keys(b"s" * 32, 4)
    assert (keys == L.bin_keys(b"s" * 32, 4)).all() and len({bytes(k) for k in keys}) == 4
    assert ((keys[:, 0] & 7) == 0).all() and ((keys[:, 31] & 0xC0) == 0x40).all()  # clamped
    pts = L.hash_points(["x", "y", "z", "x"], "d")
    blind, unblind = L.blinding()
    queries = blind.apply(pts)
    assert not any((q == p).all() for q, p in zip(queries, pts))
    direct = L.multiply(keys, pts)
    assert (unblind.apply(L.multiply(keys, queries)) == direct).all()
    assert not (direct[0] == direct[3]).all()  # the same key in another bin: another output
    assert not (L.hash_points(["x"], "other") == pts[:1]).all()  # dataset-separated

def test_a_small_order_point_is_refused():
    bad = np.zeros((1, 32), dtype=np.uint8)  # u = 0
    with pytest.raises(L.LinkageError):
        L.Scalar().apply(bad)


@pytest.mark.parametrize("m", [3, 4, 5, 6, 7])
def test_every_coalition_misses_a_shuffle(m):
    t = (m - 1) // 2
    sets = L.shuffle_sets(m, t)
    assert all(len(s) == t + 1 for s in sets)
    for coalition in itertools.combinations(range(m), t):
        assert any(not set(s) & set(coalition) for s in sets)


def test_scalar_multiplication_is_rfc7748_x25519():
    """libsodium's X25519 as RFC 7748 section 5.2 (first test vector): the points agree
    with any other X25519 implementation."""
    sc = L.Scalar()
    raw = bytearray(bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64  # RFC 7748's clamping
    sc._value = int.from_bytes(raw, "little") % L._ELL
    assert sc.key() == bytes(raw)  # the residue's representative is the clamped scalar itself
    u = np.frombuffer(bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
                      dtype=np.uint8).reshape(1, 32)
    assert bytes(sc.apply(u)[0]).hex() == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"


def test_permutation():
    perm = L.permutation(b"s" * 32, 1000)
    assert sorted(perm.tolist()) == list(range(1000))
    assert not (perm == np.arange(1000)).all()
    assert (L.permutation(b"s" * 32, 1000) == perm).all()


def test_cuckoo_bins_place_every_key_in_one_of_its_own_bins():
    keys = [f"P{i:06d}" for i in range(20_000)]
    bins = L.bin_count(len(keys))
    choices = L.bin_choices(keys, "d", bins)
    assert (choices == L.bin_choices(keys, "d", bins)).all()  # a public function of the key
    assert not (choices == L.bin_choices(keys, "other", bins)).all()
    owner, dropped = L.cuckoo(choices, bins)
    assert dropped == 0
    placed = owner[owner >= 0]
    assert sorted(placed.tolist()) == list(range(len(keys)))  # each key once
    for b in np.flatnonzero(owner >= 0)[:2000]:
        assert b in choices[owner[b]]
    # more keys than bins can hold: the surplus is left out, never placed twice
    owner, dropped = L.cuckoo(L.bin_choices(keys[:200], "d", 150), 150)
    placed = owner[owner >= 0].tolist()
    assert dropped >= 50 and len(placed) + dropped == 200 and len(set(placed)) == len(placed)

def test_encoding_of_a_block():
    from jointstats.engine.sources import EncodedChunk
    from jointstats.engine.vertical import encode, layout
    spec = parse_spec(SPEC.replace("statistics:", "statistics:\n  h: {kind: histogram, column: sbp, "
                                                  "bins: [80, 150, 220]}"))
    plan = make_plan(spec, ["a", "b", "c"])
    feats = layout(plan, spec, ("sbp", "diagnosis"))
    kinds = [f.kind for f in feats]
    assert kinds == ["row", "complete", "complete", "grid", "bin", "bin", "level", "level", "level"]
    assert [f.stat for f in feats[1:3]] == ["sbp", "sbp,diagnosis"]  # in statistics order
    chunk = EncodedChunk(3, numeric={"sbp": np.array([80.0, np.nan, 220.0])},
                         codes={"diagnosis": np.array([2, 0, -1], dtype=np.int16)})
    rows = encode(feats, chunk, {"h": (80.0, 150.0, 220.0)})
    f = feats[3].term.frac_bits
    assert rows[:, 0].tolist() == [1, 1, 1]
    assert rows[:, 1].tolist() == [1, 0, 1] and rows[:, 2].tolist() == [1, 0, 0]  # complete rows
    assert rows[:, 3].tolist() == [80 << f, 0, 220 << f]
    assert rows[:, 4].tolist() == [1, 0, 0] and rows[:, 5].tolist() == [0, 0, 1]  # last bin closed
    assert rows[:, 6:].tolist() == [[0, 0, 1], [1, 0, 0], [0, 0, 0]]


def test_linked_demo_data_and_configs_fit_the_linked_protocol():
    from pathlib import Path

    import yaml

    from jointstats.cli.demo_data import LINKED_COLUMNS, make_linked_frames
    root = Path(__file__).resolve().parents[2]
    spec = parse_spec((root / "protocols" / "linked-bp.yaml").read_text())
    frames = make_linked_frames()
    holdings = {}
    for party, frame in frames.items():
        assert list(frame.columns) == ["patient_id", *LINKED_COLUMNS[party]]
        conf = yaml.safe_load((root / "parties" / "demo" / f"{party}.yaml").read_text())
        entry = conf["datasets"][spec.dataset]
        assert entry["source"] == f"data/{party}_linked.csv"
        holdings[party] = tuple(entry["columns"])
    assert set(assign_columns(spec, holdings).values()) == set(frames)
    # different spellings of the same ids link after normalisation
    keys = [{L.normalise_key(k) for k in f["patient_id"] if isinstance(k, str)} for f in frames.values()]
    assert len(set.intersection(*keys)) > 0.5 * len(frames["hospital_a"])
    assert all(len(f) <= spec.link.rows for f in frames.values())


def test_normalisation_is_stable():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=20), st.sampled_from(["fold", "exact"]))
    def check(text, case):
        once = L.normalise_key(text, case)
        assert once is None or (once == once.strip() and L.normalise_key(once, case) == once)
    check()


def test_dummy_records_per_party():
    """Each party's dummy rows (DP, inner join): 2k of them; Z have every tag 0 (they link), a
    draw of clamp(k + DL(1 / epsilon), 0, 2k); the others random tags; every feature is 0."""
    from jointstats.engine.vertical import Layout, dummy_rows
    from jointstats.mpc.rns import Rns, primes_for
    rns = Rns(primes_for(100))
    k = 6
    lay = Layout(0, (1, 3), 10, {0: 2, 1: 1, 3: 2}, {1: 30, 3: 30}, 2 * k, 4)
    zs = []
    for _ in range(300):
        rows = dummy_rows(rns, lay, {"shift": k, "epsilon_exact": "1/2"})
        assert rows.shape == (len(rns), 2 * k, lay.width)
        features = [c for c in range(lay.width) if c not in lay.tag_columns]
        assert not rows[:, :, features].any()
        zero = (rows[:, :, lay.tag_columns] == 0).all(axis=0)  # (rows, tags)
        linked = zero.all(axis=1)
        assert not zero[~linked].any()  # a filler's tags are all random
        zs.append(int(linked.sum()))
    assert 0 <= min(zs) and max(zs) <= 2 * k
    assert abs(np.mean(zs) - k) < 0.5  # symmetric around k

def test_dp_linked_plan_charges_the_dummy_records():
    """A DP linked job spends 1 / (statistics + 1) of epsilon (pure) or of rho (zCDP) on the
    dummy records; each party's count per cell is one more draw in the charge's total variation,
    so the charge keeps its form (pure: no rho; zCDP: rho) for the ledger's lifetime rule."""
    from fractions import Fraction as F
    from jointstats.engine.dp import add_noise_plans
    from jointstats.plan.accounting import SAMPLER_TV_PER_SAMPLE
    rows = SPEC.replace("link: {key: patient_id}", "link: {key: patient_id, rows: 100}")
    spec = parse_spec(rows + "privacy: {epsilon: 2.0}\n")
    plan = add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    link = plan.privacy["linkage"]
    n = len(spec.statistics)
    assert F(link["epsilon_exact"]) == F(2, n + 1) and link["draws"] == 3  # one per party
    assert link["sensitivity"] == 1
    assert plan.charge.epsilon == 2 and plan.charge.rho is None
    samples = sum(len(s.noise.units) for s in plan.statistics)
    assert plan.charge.tv == (samples + 3) * SAMPLER_TV_PER_SAMPLE
    # a left join opens nothing of its matches: no dummies, the statistics get the budget
    left = parse_spec(rows.replace("rows: 100}", "rows: 100, join: left, base: a}") + "privacy: {epsilon: 2.0}\n")
    lplan = add_noise_plans(left, make_plan(left, ["a", "b", "c"]))
    assert "linkage" not in lplan.privacy
    assert all(s.noise.epsilon == F(2) / n for s in lplan.statistics)
    assert all(s.noise.epsilon == (2 - F(2, n + 1)) / n for s in plan.statistics)
    zc = parse_spec(rows + "privacy: {epsilon: 2.0, delta: 1.0e-6}\n")
    zplan = add_noise_plans(zc, make_plan(zc, ["a", "b", "c"]))
    eps_link = F(zplan.privacy["linkage"]["epsilon_exact"])
    rho = zplan.charge.rho
    assert zplan.charge.delta == F(1, 10**6) and rho is not None
    assert eps_link ** 2 / 2 <= rho / (n + 1) < (eps_link + F(1, 2**40)) ** 2 / 2
    assert sum(s.noise.rho for s in zplan.statistics) == rho - eps_link ** 2 / 2
    tiny = parse_spec(rows + "privacy: {epsilon: 0.00001}\n")
    with pytest.raises(SpecError, match="^privacy.epsilon: the linkage's dummy records"):
        add_noise_plans(tiny, make_plan(tiny, ["a", "b", "c"]))


def test_every_point_is_on_the_curve_not_its_twist():
    """X25519 keeps a point on Curve25519 or on its twist through every multiplication, and
    which one is public (a Legendre symbol of u): hashed (key, bin) pairs and the random
    points of empty bins are all points of the curve itself, so a blinded query carries no
    bit a guessed key could test."""
    keys = [f"P{i:05d}" for i in range(300)]
    points = np.concatenate([L.hash_points(keys, "d"), L.random_points(100)])
    for row in L.Scalar().apply(L.Scalar().apply(points)):
        assert L._on_curve(int.from_bytes(bytes(row), "little"))
    for row in points:
        assert L._on_curve(int.from_bytes(bytes(row), "little"))
    # about half of raw 32-byte strings are on the twist: the check is not vacuous
    twist = sum(not L._on_curve(int.from_bytes(bytes(r), "little") & ((1 << 255) - 1))
                for r in np.frombuffer(np.random.default_rng(1).bytes(32 * 400), np.uint8).reshape(400, 32))
    assert 120 < twist < 280


# ----------------------------------------------------------------------------- bounds of a linkage


def test_linked_sizes_are_refused_before_anything_is_sent(monkeypatch):
    """The bin table's shares and each OPPRF table must fit 1 GiB; a left join's table has a
    row for every bin of its base, however small the other holders (found in review of the
    earlier design: a base that announced 2^22 rows made every party gather gigabytes)."""
    from jointstats.engine.vertical import check_sizes, make_layout
    from jointstats.mpc import codec as _codec
    monkeypatch.setattr(_codec, "MAX_MESSAGE", 1 << 20)
    names = ["a", "b", "c"]
    feats = {0: (1,) * 2, 1: (1,) * 10, 2: (1,) * 3}
    width = 20  # 5 primes x 4 bytes

    def lay(sizes, join="inner"):
        return make_layout([0, 1, 2], sizes, feats, join, 0, 0, 3)
    check_sizes(names, {0: 1000, 1: 1000, 2: 1000}, lay({0: 1000, 1: 1000, 2: 1000}), width)
    with pytest.raises(DataError, match="party 'b': its linkage table for 3000 keys x 10 encoded"):
        sizes = {0: 3000, 1: 3000, 2: 3000}
        check_sizes(names, sizes, lay(sizes), width)
    # a left join on a's 20000 rows: every OPPRF table fits, the linked table does not
    sizes = {0: 20_000, 1: 100, 2: 100}
    with pytest.raises(DataError, match="the linked table of 25432 rows x 21 encoded"):
        check_sizes(names, sizes, lay(sizes, "left"), width)
    with pytest.raises(DataError, match="party 'c' has no usable keys"):
        sizes = {0: 10, 1: 10, 2: 0}
        check_sizes(names, sizes, lay(sizes), width)


def test_the_leader_is_the_base_or_the_holder_with_fewest_keys():
    from jointstats.engine.vertical import make_layout
    feats = {0: (1,) * 2, 2: (1,) * 4, 3: (1,) * 3}
    inner = make_layout([0, 2, 3], {0: 500, 2: 90, 3: 90}, feats, "inner", 0, 0, 4)
    assert inner.leader == 2 and inner.others == (0, 3)
    assert inner.bins == L.bin_count(90) and inner.width == 2 + 4 + 3 + 2
    # the leader's features, then each other holder's features and its tag
    assert inner.span(2) == (0, 4) and inner.span(0) == (4, 6) and inner.span(3) == (7, 10)
    assert inner.tag_columns == [6, 10]
    left = make_layout([0, 2, 3], {0: 500, 2: 90, 3: 90}, feats, "left", 3, 5, 4)
    assert left.leader == 3 and left.rows == left.bins + 4 * 5
    assert left.tags == 3 and left.tag_columns == [5, 6, 7, 12, 13, 14]  # three per other holder

def test_a_linked_jobs_message_bounds_follow_its_holdings():
    from jointstats.engine import vertical as V
    from jointstats.mpc import codec as _codec
    from jointstats.mpc import shamir
    from jointstats.mpc.rns import Rns, primes_for
    rns = Rns(primes_for(150))
    feats = {0: (1,) * 7, 1: (1,) * 6, 2: (1,) * 4}
    big = V.make_layout([0, 1, 2], {0: 50_000, 1: 50_000, 2: 50_000}, feats, "inner", 0, 0, 3)
    small = V.make_layout([0, 1, 2], {0: 10, 1: 10, 2: 10}, feats, "inner", 0, 0, 3)
    assert V._frame_bound(rns, big) == 1024 + shamir.MESSAGE_BYTES
    assert V._frame_bound(rns, small) == 1024 + shamir.MESSAGE_BYTES
    plan = type("P", (), {"statistics": ()})()
    lo = V._unread_bound(plan, rns, small, 3, 10)
    hi = V._unread_bound(plan, rns, big, 3, 50_000)
    rounds = 3 + 2 + 4  # the shuffle sets, one dealing per other holder, the rest
    tables = sum(big.table_rows[j] * (len(feats[j]) + 1) for j in (1, 2))
    assert hi - _codec.UNREAD_FLOOR == 20 * (big.rows * big.width * rounds + tables) + 64 * big.bins
    assert lo < hi
    huge = V.make_layout([0, 1, 2], {0: 1 << 22, 1: 1 << 22, 2: 1 << 22}, feats, "inner", 0, 0, 3)
    assert V._unread_bound(plan, rns, huge, 3, 1 << 22) == _codec.MAX_UNREAD

def test_a_failing_job_does_not_wait_for_its_worker_threads():
    """A daemon thread's work (a block's multiplications: minutes at a million rows) does not
    hold up the end of a job that failed meanwhile (found in review: asyncio.to_thread's
    threads are joined when the loop ends)."""
    import asyncio
    import time
    from jointstats._threads import in_daemon_thread

    async def job():
        work = asyncio.ensure_future(in_daemon_thread(time.sleep, 5))
        await asyncio.sleep(0.05)
        work.cancel()
        raise RuntimeError("a peer was dropped")
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        asyncio.run(job())
    assert time.monotonic() - started < 2


def test_a_holders_block_is_padded_to_link_rows_with_keys_that_link_nowhere(tmp_path):
    """With link.rows every holder works on exactly link.rows keys (found in review: the
    linkage's work, so when its messages went out, grew with its real number of keys):
    random padding keys with all-zero rows (row bit 0); its real keys first, as usable."""
    import pandas as pd

    from jointstats.engine.dp import add_noise_plans
    from jointstats.engine.sources import open_source
    from jointstats.engine.vertical import local_block
    pd.DataFrame({"patient_id": ["x1", "x2", "x2", None, "X3 "], "sbp": [120, 130, 140, 150, 160]}).to_csv(
        tmp_path / "a.csv", index=False)
    names = ["a", "b", "c"]
    conf = {"party": "a", "mpc": {"parties": [{"name": n, "host": "127.0.0.1", "port": i + 1}
                                              for i, n in enumerate(names)]},
            "datasets": {"linked_cohort": {"source": "a.csv", "columns": ["patient_id", "sbp"]}},
            "policy": {"budget": {"epsilon": 10, "delta": 1e-5}, "allow_exact": True}}
    cfg = parse_party_config(conf, tmp_path / "a.yaml")
    spec = parse_spec(SPEC.replace("{key: patient_id}", "{key: patient_id, rows: 40}") + "privacy: {epsilon: 1.0}\n")
    plan = add_noise_plans(spec, make_plan(spec, names))
    block = local_block(cfg, spec, plan, True, open_source("a.csv", tmp_path))
    assert block.announced == 40 and len(block.keys) == 40 and len(block.rows) == 40
    assert block.keys[:2] == ["x1", "x3"]  # x2 is repeated: left out
    assert len(set(block.keys)) == 40 and all(k.startswith("\x00pad:") for k in block.keys[2:])
    row = block.features.index(next(f for f in block.features if f.kind == "row"))
    assert block.rows[:2, row].tolist() == [1, 1] and not block.rows[2:].any()


def test_a_left_joins_unread_bound_covers_its_zero_tests_between_two_meetings():
    """With an even number of parties one party deals no products; the dealers may run the
    zero tests' rounds ahead of it up to the next meeting of all parties (every
    ZERO_TEST_SYNC rounds), so its bound holds those rounds of one block (found in review:
    without meetings, 30 rounds ahead dropped an honest peer)."""
    from jointstats.engine import vertical as V
    from jointstats.mpc import codec as _codec
    from jointstats.mpc import shamir
    from jointstats.mpc.rns import Rns, primes_for
    rns = Rns(primes_for(150))
    feats = {0: (1,) * 2, 1: (1,) * 3, 2: (1,) * 2, 3: (1,) * 2}
    sizes = {0: 20_000, 1: 20_000, 2: 20_000, 3: 20_000}
    plan = type("P", (), {"statistics": ()})()
    inner = V.make_layout([0, 1, 2, 3], sizes, feats, "inner", 0, 0, 4)
    left = V.make_layout([0, 1, 2, 3], sizes, feats, "left", 0, 0, 4)
    extra = V._unread_bound(plan, rns, left, 4, left.bins) - V._unread_bound(plan, rns, inner, 4, left.bins)
    tests = 3 * left.tags
    zero_tests = 20 * left.bins * (tests * 2 * shamir.ZERO_TEST_SYNC + tests + 9)
    assert extra >= zero_tests > 0 and shamir.ZERO_TEST_SYNC <= 8
    assert V._unread_bound(plan, rns, left, 4, left.bins) < _codec.MAX_UNREAD
