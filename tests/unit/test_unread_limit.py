"""The bound on bytes a peer may make a party hold unread (jointstats.engine.party.unread_limit):
derived from the job's plan, with a floor for fixed costs and a cap whatever the plan."""
from __future__ import annotations

from jointstats.mpc import codec as _codec
from jointstats.engine.party import UNREAD_PER_VALUE, unread_limit
from jointstats.plan.sealed import make_plan
from jointstats.plan.spec import parse_spec

PARTIES = ["a", "b", "c"]


def _plan(statistics: str, schema: str = "", privacy: str = ""):
    text = ("dataset: d\nschema:\n  x: {type: real, bounds: [0, 10]}\n  y: {type: real, bounds: [0, 10]}\n"
            + schema + privacy + "statistics:\n" + statistics)
    return make_plan(parse_spec(text), PARTIES)


def _levels(n: int) -> str:
    return "[" + ", ".join(f"l{i}" for i in range(n)) + "]"


def test_small_jobs_get_the_floor_and_a_little():
    limit = unread_limit(_plan("  n: {kind: count}\n  m: {kind: mean, column: x}\n"))
    assert _codec.UNREAD_FLOOR < limit < _codec.UNREAD_FLOOR + (64 << 10)
    assert limit < _codec.MAX_UNREAD // 16  # far below the old 2 GiB


def test_the_limit_grows_with_what_the_plan_shares():
    small = unread_limit(_plan("  t: {kind: crosstab, rows: g, cols: h}\n",
                               f"  g: {{type: categorical, levels: {_levels(10)}}}\n"
                               f"  h: {{type: categorical, levels: {_levels(10)}}}\n"))
    large = unread_limit(_plan("  t: {kind: crosstab, rows: g, cols: h}\n",
                               f"  g: {{type: categorical, levels: {_levels(100)}}}\n"
                               f"  h: {{type: categorical, levels: {_levels(100)}}}\n"))
    assert large - small == (100 * 100 - 10 * 10) * UNREAD_PER_VALUE
    regression = unread_limit(_plan("  r: {kind: regression, target: y, features: [x]}\n"))
    assert regression > unread_limit(_plan("  n: {kind: count}\n"))


def test_the_limit_never_exceeds_the_cap(monkeypatch):
    from jointstats.engine import party as _party
    monkeypatch.setattr(_party, "UNREAD_PER_VALUE", 1 << 20)  # 180,000 cells of 1 MiB each
    stats = "".join(f"  t{i}: {{kind: crosstab, rows: g, cols: h}}\n" for i in range(2))
    plan = _plan(stats, f"  g: {{type: categorical, levels: {_levels(300)}}}\n"
                        f"  h: {{type: categorical, levels: {_levels(300)}}}\n")
    assert unread_limit(plan) == _codec.MAX_UNREAD
