"""DP mode: one CSV row cannot remove the rows after it from the release (a review finding).

Lenient reading (DP mode) promises that a misfit row is read as one row of missing values.
A row whose field opens a double quote that is never closed makes pyarrow read the rest
of the block (every following line) as part of that one field: the row count drops from
1001 to 2, so adding this one row changes a count by 999 where the plan's sensitivity is 1
(and on a file larger than the read block it ended in "a row of its data is longer than the
read block", a data-dependent failure that released the budget). Lenient reading now blanks
the quotes of any line with an odd number of them (``_sources._QuoteFence``).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jointstats.noise.sampler")
from jointstats.engine import dp as _dp  # noqa: E402
from jointstats.engine.local_step import compute_partials  # noqa: E402
from jointstats.engine.sources import open_source  # noqa: E402
from jointstats.plan.sealed import make_plan  # noqa: E402
from jointstats.plan.spec import parse_spec  # noqa: E402
from tests.common import cohort_schema  # noqa: E402

SPEC = """
dataset: d
""" + cohort_schema("age", "bmi") + """privacy: {epsilon: 1.0, delta: 0}
statistics:
  n: {kind: count}
  m: {kind: mean, column: age}
"""


def released(tmp_path, name, lines):
    (tmp_path / name).write_text("age,bmi\n" + "\n".join(lines) + "\n")
    spec = parse_spec(SPEC)
    plan = _dp.add_noise_plans(spec, make_plan(spec, ["a", "b", "c"]))
    chunks = open_source(name, tmp_path).iter_chunks(list(spec.schema), "a", strict=False)
    partials = compute_partials(plan, chunks)
    return {s.name: (_dp.release_clear(s, partials[s.name]), s.noise) for s in plan.statistics}


@pytest.mark.parametrize("stray", ['"33,21', '33,"21', '"', '3"3,21', '"33",21"'])
def test_one_added_row_changes_the_release_by_at_most_its_sensitivity(tmp_path, stray):
    rng = np.random.default_rng(0)
    rows = [f"{a},{b}" for a, b in zip(rng.integers(18, 100, 1000), rng.integers(10, 60, 1000))]
    d0 = released(tmp_path, "d0.csv", rows)
    d1 = released(tmp_path, "d1.csv", rows[:1] + [stray] + rows[1:])  # one person's row, a stray quote
    for name, (f0, noise) in d0.items():
        f1 = d1[name][0]
        c = [abs(a - b) / u for a, b, u in zip(f0, f1, noise.units)]
        assert sum(c) <= noise.bound, (name, f0, f1)


def test_well_quoted_fields_still_read_in_dp_mode(tmp_path):
    (tmp_path / "q.csv").write_text('age,town\n40,"Bergen, west"\n"50","Oslo"\n60,"""Quoted"" town"\n')
    from jointstats.plan.spec import Column
    schema = [Column("age", "real", bounds=(18.0, 100.0)),
              Column("town", "categorical", levels=("Bergen, west", "Oslo", '"Quoted" town'))]
    chunks = list(open_source("q.csv", tmp_path).iter_chunks(schema, "a", strict=False))
    assert sum(c.n_rows for c in chunks) == 3
    assert list(np.concatenate([c.codes["town"] for c in chunks])) == [0, 1, 2]
    assert list(np.concatenate([c.numeric["age"] for c in chunks])) == [40.0, 50.0, 60.0]
