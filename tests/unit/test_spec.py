"""Spec parsing: every kind of bad input gets an error naming the field path."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from jointstats import SpecError, parse_spec, validate
from tests.common import cohort_schema

BASE = """
name: t
dataset: cohort
""" + cohort_schema("age", "visits", "smoker", "region") + """statistics:
"""


def spec(stats: str, head: str = BASE) -> str:
    return head + stats


def test_full_contract_example_parses():
    s = parse_spec(spec("""  n: {kind: count}
  m: {kind: mean, column: age}
  x: {kind: crosstab, rows: smoker, cols: region, min_count: 10}
  r: {kind: regression, target: age, features: [visits, smoker, region], ridge: 0.5}
""").replace("statistics:", "privacy: {epsilon: 1.0, delta: 0}\nstatistics:"))
    assert s.column("smoker").levels == ("no", "yes")  # YAML 1.1 'no'/'yes' stay strings
    assert s.privacy.epsilon == Fraction(1) and s.privacy.mechanism == "discrete_laplace"
    r = s.statistics[3]
    assert r.ridge == Fraction(1, 2)
    assert s.regression_terms(r) == ["intercept", "visits", "smoker[yes]", "region[south]",
                                     "region[east]", "region[west]"]
    assert len(s.sha256) == 64


@pytest.mark.parametrize("stats,path", [
    ("  r: {kind: regression, target: age, features: [visits, smoker, regoin]}\n",
     "statistics.r.features[2]: unknown column 'regoin'"),
    ("  m: {kind: mean, column: smoker}\n", "statistics.m.column: column 'smoker' is categorical"),
    ("  m: {kind: median, column: age}\n", "statistics.m.kind: expected one of"),
    ("  m: {kind: mean}\n", "statistics.m.column: required"),
    ("  m: {kind: mean, column: age, colour: red}\n", "statistics.m.colour: unknown field"),
    ("  x: {kind: crosstab, rows: smoker, cols: age}\n", "statistics.x.cols: column 'age' is real"),
    ("  x: {kind: crosstab, rows: smoker, cols: region, min_count: -1}\n", "statistics.x.min_count"),
    ("  h: {kind: histogram, column: age, bins: [30, 20]}\n", "statistics.h.bins[1]: bin edges must be strictly increasing"),
    ("  c: {kind: correlation, columns: [age]}\n", "statistics.c.columns"),
    ("  r: {kind: regression, target: age, features: [age]}\n", "statistics.r.features[0]"),
    ("  r: {kind: regression, target: age, features: [visits], ridge: -1}\n", "statistics.r.ridge"),
    ("  n: {kind: count, weight: 0}\n", "statistics.n.weight"),
    ("", "statistics: expected a mapping"),
])
def test_bad_statistics(stats, path):
    with pytest.raises(SpecError) as err:
        parse_spec(spec(stats))
    assert path in str(err.value)


@pytest.mark.parametrize("text,path", [
    ("name: t\nschema: {a: {type: real, bounds: [0, 1]}}\nstatistics: {n: {kind: count}}\n", "dataset: required"),
    ("dataset: d\nschema: {a: {type: real, bounds: [1, 0]}}\nstatistics: {n: {kind: count}}\n", "schema.a.bounds"),
    ("dataset: d\nschema: {a: {type: float, bounds: [0, 1]}}\nstatistics: {n: {kind: count}}\n", "schema.a.type"),
    ("dataset: d\nschema: {a: {type: categorical}}\nstatistics: {n: {kind: count}}\n", "schema.a.levels"),
    ("dataset: d\nschema: {a: {type: categorical, levels: [x, x]}}\nstatistics: {n: {kind: count}}\n", "schema.a.levels[1]: duplicate"),
    ("dataset: d\nschema: {a: {type: integer, bounds: [0, 1.5]}}\nstatistics: {n: {kind: count}}\n", "schema.a.bounds"),
    ("dataset: d\nschema: {a: {type: real, bounds: [0, x]}}\nstatistics: {n: {kind: count}}\n", "schema.a.bounds[1]: expected a number"),
    ("dataset: d\npartition: diagonal\nschema: {a: {type: real, bounds: [0, 1]}}\nstatistics: {n: {kind: count}}\n", "partition"),
    ("dataset: d\nschema: {a: {type: real, bounds: [0, 1]}}\nprivacy: {epsilon: 0}\nstatistics: {n: {kind: count}}\n", "privacy.epsilon"),
    ("dataset: d\nschema: {a: {type: real, bounds: [0, 1]}}\nprivacy: {epsilon: 1, delta: 2}\nstatistics: {n: {kind: count}}\n", "privacy.delta"),
    ("dataset: d\nschema: {a: {type: real, bounds: [0, 1]}}\nprivacy: {epsilon: 1, noise: magic}\nstatistics: {n: {kind: count}}\n", "privacy.noise"),
    ("dataset: d\nschema: {a: {type: real, bounds: [0, 1]}}\nstatistics: {n: {kind: count}}\nextra: 1\n", "spec.extra: unknown field"),
    ("dataset: [d\n", "not valid YAML"),
    ("- a\n- b\n", "expected a YAML mapping"),
])
def test_bad_top_level(text, path):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    assert path in str(err.value)


@given(st.one_of(st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))))
def test_parser_never_crashes_with_anything_but_spec_error(text):
    try:
        parse_spec(text)
    except SpecError:
        pass


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "protocols").glob("*.yaml")), ids=lambda p: p.name)
def test_every_protocol_file_validates(path):
    configs = sorted((ROOT / "parties" / "demo").glob("*.yaml"))
    from jointstats.cli.demo_data import ensure_demo_data
    ensure_demo_data(ROOT / "parties" / "demo")
    description = validate(path, configs)
    assert "plan" in description


def test_two_party_plans_say_the_parties_see_each_others_aggregates():
    """MPyC's threshold for 2 parties is 0 (a share is the value): the plan says so plainly."""
    from jointstats.plan.sealed import make_plan
    from mpyc import thresha, finfields
    import numpy as np
    spec = parse_spec((ROOT / "protocols" / "cohort-summary.yaml").read_text())
    assert "threshold is 0" in make_plan(spec, ["a", "b"]).describe()
    assert "threshold is 0" not in make_plan(spec, ["a", "b", "c"]).describe()
    field = finfields.GF(2 ** 61 - 1)
    shares = thresha.np_random_split(field, field.array(np.array([7, 11], dtype=object)), (2 - 1) // 2, 2)
    assert (shares == np.array([[7, 11], [7, 11]])).all()  # why: degree-0 shares are the secret


def test_exact_ridge_with_a_column_wider_than_the_grid_is_refused_at_plan_time():
    """Bounds beyond +/-2^30 put an integer column on a grid coarser than 1, where the ridge
    penalty is no integer: refused with one line before any party starts (was a ValueError in
    every worker; security review); without ridge, or in DP mode, it plans."""
    from jointstats.errors import SpecError
    from jointstats.plan.sealed import make_plan
    text = ("name: t\ndataset: d\nschema:\n  x: {type: integer, bounds: [-1000000000000000, 1000000000000000]}\n"
            "  y: {type: real, bounds: [0, 10]}\n%sstatistics:\n  r: {kind: regression, target: y, "
            "features: [x]%s}\n")
    with pytest.raises(SpecError, match=r"^statistics.r.ridge: an exact ridge regression needs every numeric "
                                        r"column within \+/-2\^30; 'x' has wider bounds"):
        make_plan(parse_spec(text % ("", ", ridge: 2.0")), ["a", "b", "c"])
    make_plan(parse_spec(text % ("", "")), ["a", "b", "c"])
    make_plan(parse_spec(text % ("privacy: {epsilon: 1.0, delta: 0}\n", ", ridge: 2.0")), ["a", "b", "c"])
