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


def test_pseudonyms_commute_and_separate_keys():
    a, b, c = L.Scalar(), L.Scalar(), L.Scalar()
    pts = L.hash_points(["x", "y", "z"], "d")
    one = c.apply(b.apply(a.apply(pts)))
    two = a.apply(c.apply(b.apply(pts)))
    assert (one == two).all()
    assert len({bytes(r) for r in one}) == 3
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


@pytest.mark.parametrize("m", [3, 4, 5])
def test_chains_apply_every_scalar_once_and_reblind_at_every_shuffle(m):
    t = (m - 1) // 2
    holders = list(range(m - 1)) if m > 3 else [0, 1, 2]
    k = L.scalars_needed(m, t, holders)
    if m == 3:
        assert k == 1  # the holder carries the first shuffle: 3 multiplications per row
    for h in holders:
        route = L.chain(m, t, h, k)
        assert sorted(route.sets) == sorted(L.shuffle_sets(m, t))  # every set, once
        applied = [0] * m
        applied[h] += 1  # the holder's first scalar, before its points leave it
        prev = h
        for step, (members, carrier) in enumerate(zip(route.sets, route.carriers)):
            assert carrier in members
            if step == 0 and route.holder_carries_first:
                assert carrier == h  # applies that first scalar while permuting
            else:
                assert carrier != prev  # a scalar the sender does not know
                applied[carrier] += 1
            prev = carrier
        for party, count in route.tail:
            applied[party] += count
        assert applied == [k] * m
        for party in range(m):  # every party misses a shuffle whose carrier re-blinds
            assert any(party not in s and c != party for s, c in zip(route.sets, route.carriers))


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


def test_grouping_inner_and_left():
    pts = L.hash_points([str(i) for i in range(6)], "d")
    a, b, c = pts[[0, 1, 2, 3]], pts[[5, 3, 1]], pts[[1, 3, 4]]
    idx = L.group([a, b, c])
    linked = [[bytes(blk[i]) for i in pos] for blk, pos in zip([a, b, c], idx)]
    assert linked[0] == linked[1] == linked[2] and len(linked[0]) == 2
    left = L.group([a, b, c], "left", 0)
    assert left[0].tolist() == [0, 1, 2, 3]
    assert left[1].tolist() == [-1, 2, -1, 1] and left[2].tolist() == [-1, 0, -1, 1]


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


def test_dummy_records_per_holder_and_cell():
    """Each party gives every holder 2k identifiers per cell (combination of two or more
    holders) it is in; Z of them, shared with the cell's other holders, are a draw of
    clamp(k + DL(1/epsilon), 0, 2k), the rest unique fillers (docs/linkage.md)."""
    from jointstats.engine.vertical import dummy_cells, dummy_lists
    holders = [0, 1, 3]
    assert dummy_cells(holders) == [(0, 1), (0, 3), (1, 3), (0, 1, 3)]
    k = 6
    zs = {cell: [] for cell in dummy_cells(holders)}
    for _ in range(300):
        lists = dummy_lists({"shift": k, "epsilon_exact": "1/2"}, holders)
        sets = {h: set(ids) for h, ids in lists.items()}
        for h in holders:
            assert len(lists[h]) == len(sets[h]) == 2 * k * 3  # 3 cells hold each holder
        for cell in zs:
            inside = set.intersection(*(sets[h] for h in cell))
            for other in (h for h in holders if h not in cell):
                inside -= sets[other]
            zs[cell].append(len(inside))
    for cell, z in zs.items():
        assert 0 <= min(z) and max(z) <= 2 * k
        assert abs(np.mean(z) - k) < 0.6  # symmetric around k (scale 2: sd about 2.8)


def test_dp_linked_plan_charges_the_dummy_records():
    """A DP linked job spends 1 / (statistics + 1) of epsilon (pure) or of rho (zCDP) on the
    dummy records; each party's count per cell is one more draw in the charge's total variation,
    so the charge keeps its form (pure: no rho; zCDP: rho) for the ledger's lifetime rule."""
    from fractions import Fraction as F
    from jointstats.engine.dp import add_noise_plans, link_draws
    from jointstats.plan.accounting import SAMPLER_TV_PER_SAMPLE
    rows = SPEC.replace("link: {key: patient_id}", "link: {key: patient_id, rows: 100}")
    spec = parse_spec(rows + "privacy: {epsilon: 2.0}\n")
    plan = add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    link = plan.privacy["linkage"]
    n = len(spec.statistics)
    assert F(link["epsilon_exact"]) == F(2, n + 1) and link["draws"] == link_draws(3) == 12
    assert plan.charge.epsilon == 2 and plan.charge.rho is None
    samples = sum(len(s.noise.units) for s in plan.statistics)
    assert plan.charge.tv == (samples + 12) * SAMPLER_TV_PER_SAMPLE
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
    which one is public (a Legendre symbol of u): hashed keys, padding and dummy records are
    all points of the curve itself, so a pseudonym carries no bit a guessed key could test."""
    from jointstats.engine.vertical import dummy_lists
    keys = [f"P{i:05d}" for i in range(300)]
    points = np.concatenate([L.hash_points(keys, "d"), L.random_points(100),
                             L.dummy_points(dummy_lists({"shift": 3, "epsilon_exact": "1"}, [0, 1])[0], "d")])
    for row in L.Scalar().apply(L.Scalar().apply(points)):
        assert L._on_curve(int.from_bytes(bytes(row), "little"))
    for row in points:
        assert L._on_curve(int.from_bytes(bytes(row), "little"))
    # about half of raw 32-byte strings are on the twist: the check is not vacuous
    twist = sum(not L._on_curve(int.from_bytes(bytes(r), "little") & ((1 << 255) - 1))
                for r in np.frombuffer(np.random.default_rng(1).bytes(32 * 400), np.uint8).reshape(400, 32))
    assert 120 < twist < 280


def test_a_blinded_block_gives_the_same_pseudonyms():
    """A party applying several scalars to a block multiplies the first by a fresh r and the
    last by r^-1: intermediate values differ from those of a block without it, the pseudonyms
    do not."""
    a, b, c = L.Scalar(), L.Scalar(), L.Scalar()
    pts = L.hash_points([f"k{i}" for i in range(20)], "d")
    plain = c.apply(b.apply(a.apply(pts)))
    r, r_inv = L.block_blinding(a, c)
    first = a.apply(pts, r)
    assert not any((x == y).all() for x, y in zip(first, a.apply(pts)))
    assert (c.apply(b.apply(first), r_inv) == plain).all()


# ----------------------------------------------------------------------------- bounds of a linkage


def test_linked_sizes_are_refused_before_any_block_is_sent(monkeypatch):
    """Each block's shares and the linked table must fit 1 GiB; a left join's table has a row
    for every row of its base, however small the other blocks (found in review: a base that
    announced 2^22 rows made every party gather gigabytes)."""
    from jointstats.engine.vertical import check_sizes
    from jointstats.mpc import codec as _codec
    monkeypatch.setattr(_codec, "MAX_MESSAGE", 1 << 20)
    names = ["a", "b", "c"]
    feats = {0: (1,) * 2, 1: (1,) * 10, 2: (1,) * 3}
    width = 20  # 5 primes x 4 bytes
    check_sizes(names, {0: 1000, 1: 1000, 2: 1000}, {0: 1000, 1: 1000, 2: 1000}, feats, 1000, width)
    with pytest.raises(DataError, match="party 'b': its linked block of 6000 rows x 10 encoded"):
        check_sizes(names, {0: 6000, 1: 6000, 2: 6000}, {0: 6000, 1: 6000, 2: 6000}, feats, 6000, width)
    # a left join on a's 20000 rows: every block fits, the linked table does not
    sizes = {0: 20_000, 1: 100, 2: 100}
    with pytest.raises(DataError, match="the linked table of up to 20000 records x 15 encoded"):
        check_sizes(names, sizes, sizes, feats, 20_000, width)
    with pytest.raises(DataError, match="party 'c' has no usable keys"):
        check_sizes(names, {0: 10, 1: 10, 2: 0}, {0: 10, 1: 10, 2: 0}, feats, 0, width)


def test_a_linked_jobs_message_bounds_follow_its_holdings():
    from jointstats.engine import vertical as V
    from jointstats.mpc import codec as _codec
    from jointstats.mpc import shamir
    from jointstats.mpc.rns import Rns, primes_for
    rns = Rns(primes_for(150))
    feats = {0: (1,) * 7, 1: (1,) * 6, 2: (1,) * 4}
    full = {0: 110_000, 1: 110_000, 2: 110_000}
    frame = V._frame_bound(rns, full, feats, 0)
    assert frame == 1024 + max(shamir.MESSAGE_BYTES, 32 * 110_000)  # the points of a block
    assert V._frame_bound(rns, {0: 10, 1: 10, 2: 10}, feats, 0) == 1024 + shamir.MESSAGE_BYTES
    plan = type("P", (), {"statistics": ()})()
    small = V._unread_bound(plan, rns, {0: 10, 1: 10, 2: 10}, feats, 3, 10)
    big = V._unread_bound(plan, rns, full, feats, 3, 110_000)
    # every block's shares once per resharing (3 sets) and once for its input
    assert big - _codec.UNREAD_FLOOR == 20 * 110_000 * 17 * 4 and small < big
    assert V._unread_bound(plan, rns, {0: 1 << 22, 1: 1 << 22, 2: 1 << 22}, feats, 3, 1 << 22) == _codec.MAX_UNREAD


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
