"""The protocol specs the benchmarks run (docs/reference.md section 1), built for a given shape."""
from __future__ import annotations

from .data import xtab_levels

COHORT_BOUNDS = {"x": (-8, 8), "y": (-400, 400), "visits": (0, 50)}
HIST_BINS = [-8, -3, -1.5, 0, 1.5, 3, 8]


def _schema(d: int, *, only_regression: bool = False) -> str:
    """The cohort's columns; ``only_regression``: just x1..xd and y, what a regression reads."""
    lines = [f"  x{j}: {{type: real, bounds: [-8, 8]}}" for j in range(1, d + 1)]
    lines += ["  y: {type: real, bounds: [-400, 400]}"]
    if not only_regression:
        lines += ["  visits: {type: integer, bounds: [0, 50]}",
                  '  smoker: {type: categorical, levels: ["no", "yes"]}',
                  "  region: {type: categorical, levels: [north, south, east, west]}"]
    return "\n".join(lines)


def _privacy(dp: dict | None) -> str:
    if not dp:
        return ""
    return f"privacy:\n  epsilon: {dp.get('epsilon', 1.0)}\n  delta: {dp.get('delta', 0)}\n"


def headline(d: int = 10, dp: dict | None = None) -> str:
    """The demo's statistics over the cohort plus an OLS regression of y on x1..xd."""
    feats = ", ".join(f"x{j}" for j in range(1, d + 1))
    corr = ", ".join(["x1", "x2" if d > 1 else "visits", "y", "visits"][: 4 if d > 1 else 3])
    return f"""name: bench-headline-d{d}
dataset: cohort
partition: horizontal
schema:
{_schema(d)}
{_privacy(dp)}statistics:
  n:          {{kind: count}}
  visits_sum: {{kind: sum, column: visits}}
  mean_x1:    {{kind: mean, column: x1}}
  var_y:      {{kind: variance, column: y}}
  corr:       {{kind: correlation, columns: [{corr}]}}
  smoking:    {{kind: crosstab, rows: smoker, cols: region, min_count: 10}}
  x1_hist:    {{kind: histogram, column: x1, bins: {HIST_BINS}}}
  model:      {{kind: regression, target: y, features: [{feats}]}}
"""


def regression(d: int = 10, dp: dict | None = None) -> str:
    """Only the OLS regression of y on x1..xd."""
    feats = ", ".join(f"x{j}" for j in range(1, d + 1))
    return f"""name: bench-regression-d{d}
dataset: cohort
partition: horizontal
schema:
{_schema(d, only_regression=True)}
{_privacy(dp)}statistics:
  model: {{kind: regression, target: y, features: [{feats}]}}
"""


def count_only(d: int = 10, dp: dict | None = None) -> str:
    """The cheapest job there is: one count (measures the fixed cost of a job)."""
    return f"""name: bench-count
dataset: cohort
partition: horizontal
schema:
{_schema(d)}
{_privacy(dp)}statistics:
  n: {{kind: count}}
"""


def crosstab(k: int, min_count: int = 5, dp: dict | None = None) -> str:
    """One k x k crosstab with small-cell suppression."""
    levels = ", ".join(xtab_levels(k))
    return f"""name: bench-crosstab-{k}x{k}
dataset: cohort
partition: horizontal
schema:
  r: {{type: categorical, levels: [{levels}]}}
  c: {{type: categorical, levels: [{levels}]}}
{_privacy(dp)}statistics:
  table: {{kind: crosstab, rows: r, cols: c, min_count: {min_count}}}
"""


def build(name: str, *, d: int = 10, k: int = 2, dp: dict | None = None) -> tuple[str, str]:
    """(spec text, data kind) of the named spec."""
    if name == "headline":
        return headline(d, dp), "cohort"
    if name == "regression":
        return regression(d, dp), "cohort"
    if name == "count":
        return count_only(d, dp), "cohort"
    if name == "crosstab":
        return crosstab(k, dp=dp), "xtab"
    raise ValueError(f"unknown spec {name!r}")
