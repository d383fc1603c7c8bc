"""DP utility against a central curator (issue 15): ``python -m bench.dp_utility [--quick]``.

For every point (statistic kind x pooled rows n x epsilon x delta) a one-statistic job (the
statistic gets the whole budget, as the curator does) is run over ``runs`` synthetic
datasets, and the mean squared error of its result against the pooled-data truth (the exact
statistic on the pooled clipped data, numpy) is compared with that of a trusted central
curator (``bench.dp_sim.Curator``: textbook discrete Laplace/Gaussian mechanisms, AdaSSP
for regression) on the same data with the same (epsilon, delta) and bounds.

**Ours, offline.** The engine's own plan (``add_noise_plans``), local step
(``_local.compute_partials`` on the pooled rows: the parties' partials sum to the same
integers), released vector (``_dp.release_clear``, checked against the secure step by
``tests/unit/test_dp_utility.py``) and post-processing (``_dp.postprocess``); only the noise
is drawn here, from the exact law of every entry's scale in the plan (``bench.dp_sim``).
**Ours, real.** ``real_runs`` jobs per kind over three real party processes
(``jointstats.local.runner.run`` through ``bench.jobs.run_job``), at one point.

Errors: count, sum, mean, variance: squared error; correlation: sum over the off-diagonal
upper triangle; crosstab, histogram: sum over cells; regression: sum over all coefficients
(intercept included; the slopes alone are in the JSON). Coverage: for means, the engine's
noise interval (value +- noise.ci95_halfwidth) against the pooled mean; for regressions, the
noise interval against the pooled OLS coefficients and ``conf_int`` (noise and sampling)
against the data-generating coefficients, averaged over the coefficients (the smallest per
coefficient in brackets). ``noise var ratio``: the ratio of the two mechanisms' per-entry
noise variances in the statistic's units (exact, from the plan's scales); for every kind but
correlation and regression both estimators are the same function of their noisy entries, so
this is the ratio of MSEs the Monte-Carlo ratio estimates, without its sampling error.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import dp_sim

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("count", "sum", "mean", "variance", "correlation", "crosstab", "histogram", "regression")
BOUNDS = {"age": (18.0, 100.0), "bmi": (10.0, 60.0), "sbp": (80.0, 220.0)}
SMOKER = ("no", "yes")
REGION = ("north", "south", "east", "west")
HIST_BINS = (18, 30, 45, 60, 75, 100)
CORR_COLUMNS = ("age", "bmi", "sbp")
#: sbp = 90 + 0.5 age + 0.9 bmi + 6 smoker + N(0, 10^2) (bmi clipped first): the data-generating coefficients
TRUE_BETA = np.array([90.0, 0.5, 0.9, 6.0])
STATS = {
    "count": "{kind: count}",
    "sum": "{kind: sum, column: sbp}",
    "mean": "{kind: mean, column: age}",
    "variance": "{kind: variance, column: bmi}",
    "correlation": "{kind: correlation, columns: [age, bmi, sbp]}",
    "crosstab": "{kind: crosstab, rows: smoker, cols: region, min_count: 0}",
    "histogram": "{kind: histogram, column: age, bins: [18, 30, 45, 60, 75, 100]}",
    "regression": "{kind: regression, target: sbp, features: [age, bmi, smoker]}",
}
FULL = {"sizes": (5_000, 50_000, 500_000), "epsilons": (0.5, 1.0, 4.0), "deltas": (0.0, 1e-6),
        "runs": 500, "real_runs": 20, "real_n": 5_000, "real_points": ((1.0, 0.0), (1.0, 1e-6))}
QUICK = {"sizes": (5_000,), "epsilons": (1.0,), "deltas": (0.0, 1e-6), "runs": 30, "real_runs": 1,
         "real_n": 3_000, "real_points": ((1.0, 0.0),), "real_kinds": ("count", "mean")}
RATIO_TARGET = {"correlation": 1.5, "regression": 1.5}  # 1.1 for the others
COVERAGE_TARGET = (0.93, 0.97)


# ----------------------------------------------------------------------------- data


def spec_text(kind: str, epsilon: float, delta: float) -> str:
    return f"""name: dp-utility-{kind}
dataset: cohort
partition: horizontal
schema:
  age:    {{type: real, bounds: [18, 100]}}
  bmi:    {{type: real, bounds: [10, 60]}}
  sbp:    {{type: real, bounds: [80, 220]}}
  smoker: {{type: categorical, levels: ["no", "yes"]}}
  region: {{type: categorical, levels: [north, south, east, west]}}
privacy:
  epsilon: {epsilon!r}
  delta: {delta!r}
statistics:
  s: {STATS[kind]}
"""


def cohort(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The tests' synthetic patients (tests/conftest.py cohort_frame), unrounded, clipped to the bounds.

    bmi is clipped before sbp is generated from it, so the regression model holds exactly on
    the clipped data (sbp's own clipping at [80, 220] touches about 1e-4 of the rows).
    """
    age = rng.uniform(18, 95, n)
    smoker = (rng.random(n) < 0.3).astype(np.int16)
    region = rng.integers(0, 4, n).astype(np.int16)
    bmi = np.clip(18 + 0.08 * age + rng.normal(0, 4, n) + (region == 1) * 1.5, *BOUNDS["bmi"])
    sbp = np.clip(90 + 0.5 * age + 0.9 * bmi + smoker * 6.0 + rng.normal(0, 10, n), *BOUNDS["sbp"])
    return {"age": age, "bmi": bmi, "sbp": sbp, "smoker": smoker, "region": region}


def encoded(data: dict[str, np.ndarray]):
    """The pooled rows as the engine's local step sees them (one chunk)."""
    from jointstats.engine.sources import EncodedChunk
    return EncodedChunk(len(data["age"]), numeric={c: data[c] for c in ("age", "bmi", "sbp")},
                        codes={c: data[c] for c in ("smoker", "region")})


def design(data: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([np.ones(len(data["age"])), data["age"], data["bmi"], data["smoker"].astype(float)])


def truth(kind: str, data: dict[str, np.ndarray]) -> np.ndarray:
    """The exact statistic on the pooled clipped data, as a flat vector."""
    if kind == "count":
        return np.array([float(len(data["age"]))])
    if kind == "sum":
        return np.array([data["sbp"].sum()])
    if kind == "mean":
        return np.array([data["age"].mean()])
    if kind == "variance":
        return np.array([data["bmi"].var(ddof=1)])
    if kind == "correlation":
        c = np.corrcoef(np.vstack([data[k] for k in CORR_COLUMNS]))
        return c[np.triu_indices(len(CORR_COLUMNS), 1)]
    if kind == "crosstab":
        return np.bincount(data["smoker"] * 4 + data["region"], minlength=8).astype(float)
    if kind == "histogram":
        return np.histogram(data["age"], bins=np.array(HIST_BINS, dtype=float))[0].astype(float)
    beta, *_ = np.linalg.lstsq(design(data), data["sbp"], rcond=None)
    return beta


def ours_value(kind: str, res: dict) -> np.ndarray:
    """The engine's result entry as the flat vector ``truth`` gives."""
    if kind in ("count", "sum", "mean", "variance"):
        v = res["value"]
        return np.array([np.nan if v is None else float(v)])
    if kind == "correlation":
        m = np.array(res["matrix"], dtype=float)
        return m[np.triu_indices(len(CORR_COLUMNS), 1)]
    if kind == "crosstab":
        return np.array([np.nan if c is None else c for row in res["counts"] for c in row], dtype=float)
    if kind == "histogram":
        return np.array(res["counts"], dtype=float)
    return np.array(res["coefficients"], dtype=float)


def curator_moments(data: dict[str, np.ndarray]) -> dict:
    """The curator's exact moments of one dataset (computed once for all its budgets)."""
    x = np.column_stack([data["age"], data["bmi"], data["smoker"].astype(float)])
    return {"correlation": dp_sim.correlation_gram([data[k] for k in CORR_COLUMNS], [BOUNDS[k] for k in CORR_COLUMNS]),
            "regression": dp_sim.regression_moments(x, data["sbp"], [BOUNDS["age"], BOUNDS["bmi"], None],
                                                    BOUNDS["sbp"])}


def curator_value(kind: str, cur: dp_sim.Curator, data: dict[str, np.ndarray], exact: np.ndarray,
                  moments: dict | None = None) -> np.ndarray:
    moments = moments or {}
    if kind == "count":
        return np.array([cur.count(len(data["age"]))])
    if kind == "sum":
        return np.array([cur.sum(data["sbp"], *BOUNDS["sbp"])])
    if kind == "mean":
        return np.array([cur.mean(data["age"], *BOUNDS["age"])])
    if kind == "variance":
        return np.array([cur.variance(data["bmi"], *BOUNDS["bmi"])])
    if kind == "correlation":
        c = cur.correlation([data[k] for k in CORR_COLUMNS], [BOUNDS[k] for k in CORR_COLUMNS],
                            gram=moments.get("correlation"))
        return c[np.triu_indices(len(CORR_COLUMNS), 1)]
    if kind in ("crosstab", "histogram"):
        return cur.cells(exact)  # the exact counts, noised cell by cell
    x = np.column_stack([data["age"], data["bmi"], data["smoker"].astype(float)])
    return cur.regression(x, data["sbp"], [BOUNDS["age"], BOUNDS["bmi"], None], BOUNDS["sbp"],
                          moments=moments.get("regression"))


# ----------------------------------------------------------------------------- the engine, offline


@lru_cache(maxsize=None)
def engine_stat(kind: str, epsilon: float, delta: float):
    """The engine's plan of the one-statistic job (its noise plan included)."""
    import jointstats
    from jointstats.engine import output
    from jointstats.plan import sealed as plan
    spec = jointstats.parse_spec(spec_text(kind, epsilon, delta))
    return output.add_noise_plans(spec, plan.make_plan(spec, ["a", "b", "c"]))


def engine_partial(kind: str, chunk, epsilon: float = 1.0, delta: float = 0.0) -> list[int]:
    """The summed partial vector of the job's statistic (the local step on the pooled rows)."""
    from jointstats.engine import local_step as _local
    return _local.compute_partials(engine_stat(kind, epsilon, delta), [chunk])["s"]


def ours_offline(kind: str, partial: list[int], epsilon: float, delta: float, rng: np.random.Generator,
                 noise: bool = True) -> dict:
    """The engine's result for these partials with one exact draw of its noise."""
    from jointstats.engine import dp as _dp
    stat = engine_stat(kind, epsilon, delta).statistics[0]
    values = _dp.release_clear(stat, partial)
    if noise:
        e = dp_sim.draw(rng, stat.noise.mechanism, stat.noise.scales)
        values = [v + k for v, k in zip(values, e)]
    return _dp.postprocess(stat, values, 0)


def _dl_var(scale: Fraction) -> float:
    b = float(scale)
    one_minus_a = -math.expm1(-1.0 / b)
    return 2 * (1 - one_minus_a) / one_minus_a ** 2


def _dg_var(sigma2: Fraction) -> float:
    s2 = float(sigma2)
    if s2 > 50:
        return s2  # the discrete Gaussian's variance is sigma^2 to within e^(-2 pi^2 sigma^2)
    ks = np.arange(-int(40 * math.sqrt(s2)) - 40, int(40 * math.sqrt(s2)) + 41)
    return float((dp_sim.dgauss_pmf(s2, ks) * ks.astype(float) ** 2).sum())


def noise_var_ratio(kind: str, epsilon: float, delta: float) -> float | None:
    """Noise variance of ours over the curator's for the entry that dominates the error.

    In units of ``c`` every entry of ours has the same law (``NoisePlan.base``), and so
    does every entry of the curator's release of a kind (budget split equally); the entry
    compared is the last one: the count or cell, the sum, the centred sum (mean) or sum of
    squares (variance). Entries on a grid (the engine's 2**30 units, the curator's
    2**-REAL_GRID_BITS) are compared with their grid's law. None for correlation and
    regression (their estimators differ).
    """
    if kind in ("correlation", "regression"):
        return None
    stat = engine_stat(kind, epsilon, delta).statistics[0]
    noise = stat.noise
    u = float(noise.units[-1])
    pure = noise.mechanism == "discrete_laplace"
    ours = (_dl_var(noise.scales[-1]) if pure else _dg_var(noise.scales[-1])) / u ** 2
    share = {"mean": 0.5, "variance": 1 / 3}.get(kind, 1.0)
    g = 1.0 if kind in ("count", "crosstab", "histogram") else 2.0 ** dp_sim.REAL_GRID_BITS
    if pure:
        cur = _dl_var(Fraction(g) / (Fraction(repr(epsilon)) * Fraction(share))) / g ** 2
    else:
        cur = _dg_var(Fraction(g * g / (2 * rho_curator(epsilon, delta) * share))) / g ** 2
    return ours / cur


@lru_cache(maxsize=None)
def rho_curator(epsilon: float, delta: float) -> float:
    return dp_sim.rho_cks(epsilon, delta)


# ----------------------------------------------------------------------------- runs


@dataclass
class Point:
    kind: str
    n: int
    epsilon: float
    delta: float
    se_ours: list = field(default_factory=list)
    se_cur: list = field(default_factory=list)
    se_ours_slopes: list = field(default_factory=list)
    se_cur_slopes: list = field(default_factory=list)
    cover: list = field(default_factory=list)  # per run: hits per coefficient (or [hit])
    cover_dgp: list = field(default_factory=list)
    failures: int = 0  # runs where ours gave no value (None)

    @property
    def key(self):
        return (self.kind, self.n, self.epsilon, self.delta)


def _settings(cfg: dict) -> list[tuple[float, float]]:
    return [(e, d) for d in cfg["deltas"] for e in cfg["epsilons"]]


def simulate(n: int, runs: range, cfg: dict, kinds=KINDS, seed: int = 0) -> dict:
    """Offline runs for one n: every kind and privacy setting on the same datasets."""
    points = {(k, n, e, d): Point(k, n, e, d) for k in kinds for e, d in _settings(cfg)}
    for run in runs:
        data = cohort(n, np.random.default_rng([seed, n, run, 0]))
        chunk = encoded(data)
        exact = {k: truth(k, data) for k in kinds}
        partials = {k: engine_partial(k, chunk) for k in kinds}
        moments = curator_moments(data)
        for si, (eps, delta) in enumerate(_settings(cfg)):
            rng_ours = np.random.default_rng([seed, n, run, si, 1])
            cur = dp_sim.Curator(eps, delta, np.random.default_rng([seed, n, run, si, 2]),
                                 rho=None if delta == 0 else rho_curator(eps, delta))
            for kind in kinds:
                p = points[(kind, n, eps, delta)]
                res = ours_offline(kind, partials[kind], eps, delta, rng_ours)
                record(p, kind, res, curator_value(kind, cur, data, exact[kind], moments), exact[kind])
    return {k: p.__dict__ for k, p in points.items()}


def record(p: Point, kind: str, res: dict, cur_v: np.ndarray, exact: np.ndarray) -> None:
    ours_v = ours_value(kind, res)
    if not np.all(np.isfinite(ours_v)):
        p.failures += 1
        return
    p.se_ours.append(float(((ours_v - exact) ** 2).sum()))
    if cur_v is not None:
        p.se_cur.append(float(((cur_v - exact) ** 2).sum()))
    if kind == "mean":
        p.cover.append([bool(abs(ours_v[0] - exact[0]) <= res["noise"]["ci95_halfwidth"])])
    if kind == "regression":
        p.se_ours_slopes.append(float(((ours_v[1:] - exact[1:]) ** 2).sum()))
        if cur_v is not None:
            p.se_cur_slopes.append(float(((cur_v[1:] - exact[1:]) ** 2).sum()))
        half = np.array(res["noise"]["ci95_halfwidth"], dtype=float)
        p.cover.append((np.abs(ours_v - exact) <= half).tolist())
        ci = np.array(res["conf_int"], dtype=float)
        p.cover_dgp.append(((ci[:, 0] <= TRUE_BETA) & (TRUE_BETA <= ci[:, 1])).tolist())


def write_party_files(data: dict[str, np.ndarray], root: Path, parties: int = 3) -> list[Path]:
    """Split the pooled rows over the parties (contiguous blocks) as Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = len(data["age"])
    cuts = [round(i * n / parties) for i in range(parties + 1)]
    files = []
    for i in range(parties):
        sl = slice(cuts[i], cuts[i + 1])
        table = pa.table({"age": data["age"][sl], "bmi": data["bmi"][sl], "sbp": data["sbp"][sl],
                          "smoker": np.array(SMOKER)[data["smoker"][sl]],
                          "region": np.array(REGION)[data["region"][sl]]})
        path = root / f"party_{i}.parquet"
        pq.write_table(table, path)
        files.append(path)
    return files


def real(kind: str, n: int, eps: float, delta: float, runs: int, seed: int = 0) -> dict:
    """``runs`` real jobs over three party processes; squared errors against the pooled truth."""
    from . import jobs
    p = Point(kind, n, eps, delta)
    text = spec_text(kind, eps, delta)
    walls, errors = [], []
    for run in range(runs):
        data = cohort(n, np.random.default_rng([seed, n, 10_000 + run, 0]))
        exact = truth(kind, data)
        out = None
        for attempt in range(3):  # the working tree may be mid-edit: a failed job is retried
            try:
                with tempfile.TemporaryDirectory(prefix="jsdputil-") as tmp:
                    files = write_party_files(data, Path(tmp))
                    out = jobs.run_job(text, files, probe=False)
                break
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                time.sleep(10)
        if out is None:
            continue
        walls.append(out["wall_seconds"])
        record(p, kind, out["result"]["results"]["s"], None, exact)
    return {**p.__dict__, "walls": walls, "errors": errors}


# ----------------------------------------------------------------------------- summary


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def ratio_ci(a: list, b: list, rng: np.random.Generator, draws: int = 1000) -> tuple[float, float]:
    """Paired bootstrap 95% interval of mean(a) / mean(b) over runs."""
    a, b = np.asarray(a), np.asarray(b)
    if not len(a) or len(a) != len(b):
        return float("nan"), float("nan")
    idx = rng.integers(0, len(a), (draws, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a[idx].mean(axis=1) / b[idx].mean(axis=1)
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def summarize(p: dict, rng: np.random.Generator) -> dict:
    out = {k: p[k] for k in ("kind", "n", "epsilon", "delta", "failures")}
    out["runs"] = len(p["se_ours"])
    out["mse_ours"] = _mean(p["se_ours"])
    out["mse_central"] = _mean(p["se_cur"])
    out["ratio"] = out["mse_ours"] / out["mse_central"] if p["se_cur"] else float("nan")
    out["ratio_ci"] = ratio_ci(p["se_ours"], p["se_cur"], rng)
    if p["se_ours_slopes"]:
        out["mse_ours_slopes"] = _mean(p["se_ours_slopes"])
        out["mse_central_slopes"] = _mean(p["se_cur_slopes"])
        out["ratio_slopes"] = out["mse_ours_slopes"] / out["mse_central_slopes"] if p["se_cur_slopes"] else float("nan")
    if p["cover"]:
        c = np.array(p["cover"], dtype=float)
        out["coverage"] = float(c.mean())
        out["coverage_min"] = float(c.mean(axis=0).min())
    if p["cover_dgp"]:
        c = np.array(p["cover_dgp"], dtype=float)
        out["coverage_dgp"] = float(c.mean())
        out["coverage_dgp_min"] = float(c.mean(axis=0).min())
    if p["kind"] not in ("correlation", "regression"):
        out["noise_var_ratio"] = noise_var_ratio(p["kind"], p["epsilon"], p["delta"])
    return out


def _g(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def verdict(s: dict) -> str:
    target = RATIO_TARGET.get(s["kind"], 1.1)
    r = s.get("noise_var_ratio") or s["ratio"]
    ok = r <= target
    cov = []
    for key in ("coverage", "coverage_dgp"):
        if key in s:
            cov.append(COVERAGE_TARGET[0] <= s[key] <= COVERAGE_TARGET[1])
    if cov and not all(cov):
        ok = False
    return "met" if ok else "**not met**"


def compact(summary: list[dict]) -> str:
    """One line per kind and delta: the MSE ratio ours / central at every n and epsilon."""
    sizes = sorted({s["n"] for s in summary})
    epsilons = sorted({s["epsilon"] for s in summary})
    head = " | ".join(f"n = {n:.0e}" for n in sizes)
    lines = [f"MSE ratio ours / central at epsilon {' / '.join(f'{e:g}' for e in epsilons)} "
             f"(noise var ratio: the exact ratio where both estimators are the same function of their entries)", "",
             f"| kind | delta | noise var ratio | {head} | coverage (min-max over points) |",
             "| --- | --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |"]
    for kind in KINDS:
        for delta in sorted({s["delta"] for s in summary}):
            rows = [s for s in summary if s["kind"] == kind and s["delta"] == delta]
            if not rows:
                continue
            cells = []
            for n in sizes:
                by_eps = {s["epsilon"]: s for s in rows if s["n"] == n}
                cells.append(" / ".join(_g(by_eps[e]["ratio"], 2) if e in by_eps else "–" for e in epsilons))
            nvr = [s["noise_var_ratio"] for s in rows if s.get("noise_var_ratio") is not None]
            nv = f"{min(nvr):.5f}-{max(nvr):.5f}" if nvr else "–"
            cov = ""
            if any("coverage" in s for s in rows):
                c = [s["coverage"] for s in rows]
                cov = f"{_pct(min(c))}-{_pct(max(c))}"
                if kind == "regression":
                    d = [s["coverage_dgp"] for s in rows]
                    cov = f"noise {cov}; conf_int {_pct(min(d))}-{_pct(max(d))}"
            lines.append(f"| {kind} | {delta:g} | {nv} | " + " | ".join(cells) + f" | {cov} |")
    return "\n".join(lines) + "\n"


def markdown(summary: list[dict], real_summary: list[dict], meta: dict) -> str:
    lines = [f"# DP utility against a central curator (run `{meta['run_id']}`)", "",
             f"{meta['date']}, {meta['mode']} mode, commit {meta['commit']}{' (with local changes)' if meta['dirty'] else ''}; "
             f"machine: {meta['machine']}. {meta['seconds']:.0f} s.", "",
             "Ours: the engine's plan, released vector and post-processing with exact offline draws of its "
             "noise (`bench/dp_utility.py`); central: a trusted curator on the same pooled clipped data with "
             "the same (epsilon, delta) and bounds (`bench/dp_sim.py`). MSE against the pooled-data truth; "
             "ratio = ours / central with a paired-bootstrap 95% interval; noise var ratio = exact ratio of "
             "the per-entry noise variances (the MSE ratio without sampling error, where both estimators "
             "are the same function of their noisy entries). Coverage: means, the noise interval around "
             "the pooled mean; regressions, noise interval around the pooled OLS coefficients / `conf_int` "
             "around the data-generating ones (mean over coefficients, smallest in brackets). "
             f"Targets: ratio <= 1.1 (<= 1.5 correlation, regression), coverage in [93%, 97%].", "",
             compact(summary), "",
             "| kind | n | epsilon | delta | runs | MSE ours | MSE central | ratio [95% CI] | noise var ratio | coverage | target |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        cov = ""
        if "coverage" in s:
            cov = _pct(s["coverage"])
            if s["kind"] == "regression":
                cov = (f"noise {_pct(s['coverage'])} ({_pct(s['coverage_min'])}); "
                       f"conf_int {_pct(s['coverage_dgp'])} ({_pct(s['coverage_dgp_min'])})")
        lo, hi = s["ratio_ci"]
        lines.append(f"| {s['kind']} | {s['n']:.0e} | {s['epsilon']:g} | {s['delta']:g} | {s['runs']} | "
                     f"{_g(s['mse_ours'])} | {_g(s['mse_central'])} | {_g(s['ratio'])} [{_g(lo)}, {_g(hi)}] | "
                     f"{_g(s.get('noise_var_ratio'))} | {cov} | {verdict(s)} |")
    if any("ratio_slopes" in s for s in summary):
        lines += ["", "Regression slopes only (intercept left out): MSE ratio ours / central",
                  "", "| n | epsilon | delta | MSE ours | MSE central | ratio |", "| --- | --- | --- | --- | --- | --- |"]
        for s in summary:
            if "ratio_slopes" in s:
                lines.append(f"| {s['n']:.0e} | {s['epsilon']:g} | {s['delta']:g} | {_g(s['mse_ours_slopes'])} | "
                             f"{_g(s['mse_central_slopes'])} | {_g(s['ratio_slopes'])} |")
    if real_summary:
        lines += ["", "Real 3-party runs (`jointstats.local.runner.run`, three party processes), against the "
                  "offline simulation of the same point:", "",
                  "| kind | n | epsilon | delta | runs | MSE ours (real) | MSE ours (offline) | MSE central | "
                  "real / central | real / offline [95% CI, real runs resampled] | coverage (real) | seconds per job |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s in real_summary:
            cov = _pct(s["coverage"]) if "coverage" in s else ""
            ci = s.get("ratio_offline_ci") or (None, None)
            if s["kind"] == "regression" and "coverage_dgp" in s:
                cov = f"noise {_pct(s['coverage'])}; conf_int {_pct(s['coverage_dgp'])}"
            lines.append(f"| {s['kind']} | {s['n']:.0e} | {s['epsilon']:g} | {s['delta']:g} | {s['runs']} | "
                         f"{_g(s['mse_ours'])} | {_g(s.get('mse_offline'))} | {_g(s.get('mse_central'))} | "
                         f"{_g(s.get('ratio'))} | {_g(s.get('ratio_offline'))} [{_g(ci[0])}, {_g(ci[1])}] | {cov} | "
                         f"{_g(s.get('seconds'))} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def run(cfg: dict, *, workers: int = 1, kinds=KINDS, real_kinds=None, seed: int = 0,
        quiet: bool = False, out_dir: Path | None = RESULTS, mode: str = "custom") -> dict:
    """Run the offline points and the real runs; return the summaries (and write them if out_dir)."""
    from .machine import _git, one_line
    t0 = time.perf_counter()
    run_id = _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    for kind in kinds:  # build every plan once (and fail early)
        for e, d in _settings(cfg):
            engine_stat(kind, e, d)
    tasks = []
    step = max(1, cfg["runs"] // (4 * max(workers, 1)))
    for n in cfg["sizes"]:
        for start in range(0, cfg["runs"], step):
            tasks.append((n, range(start, min(start + step, cfg["runs"]))))
    merged: dict = {}

    def merge(res):
        for key, p in res.items():
            if key not in merged:
                merged[key] = p
            else:
                for f, v in p.items():
                    if isinstance(v, list):
                        merged[key][f].extend(v)
                    elif f == "failures":
                        merged[key][f] += v
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            futs = [ex.submit(simulate, n, r, cfg, kinds, seed) for n, r in tasks]
            for i, f in enumerate(futs):
                merge(f.result())
                if not quiet:
                    print(f"dp_utility: offline {i + 1}/{len(futs)} ({time.perf_counter() - t0:.0f} s)",
                          file=sys.stderr, flush=True)
    else:
        for i, (n, r) in enumerate(tasks):
            merge(simulate(n, r, cfg, kinds, seed))
            if not quiet:
                print(f"dp_utility: offline {i + 1}/{len(tasks)} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
    rng = np.random.default_rng(seed)
    order = {k: i for i, k in enumerate(KINDS)}
    summary = sorted((summarize(p, rng) for p in merged.values()),
                     key=lambda s: (order[s["kind"]], s["n"], s["delta"], s["epsilon"]))
    real_summary = []
    real_kinds = kinds if real_kinds is None else real_kinds
    for eps, delta in cfg["real_points"] if cfg["real_runs"] else ():
        for kind in real_kinds:
            t = time.perf_counter()
            p = real(kind, cfg["real_n"], eps, delta, cfg["real_runs"], seed)
            s = summarize(p, rng)
            s["seconds"] = float(np.median(p["walls"])) if p["walls"] else float("nan")
            s["errors"] = p["errors"]
            off = next((o for o in summary if o["kind"] == kind and o["n"] == cfg["real_n"]
                        and o["epsilon"] == eps and o["delta"] == delta), None)
            if off:
                s["mse_offline"], s["mse_central"] = off["mse_ours"], off["mse_central"]
                s["ratio"] = s["mse_ours"] / off["mse_central"]
                s["ratio_offline"] = s["mse_ours"] / off["mse_ours"]
                se = np.asarray(p["se_ours"])
                boot = se[rng.integers(0, len(se), (1000, len(se)))].mean(axis=1) / off["mse_ours"]
                s["ratio_offline_ci"] = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
            real_summary.append(s)
            if not quiet:
                print(f"dp_utility: real {kind} eps={eps} delta={delta}: {cfg['real_runs']} runs "
                      f"in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    git = _git()
    meta = {"run_id": run_id, "date": _dt.date.today().isoformat(), "mode": mode,
            "commit": git.get("commit", "?"), "dirty": git.get("dirty", False), "machine": one_line(),
            "seconds": time.perf_counter() - t0, "config": {k: v for k, v in cfg.items()}}
    text = markdown(summary, real_summary, meta)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"dp_utility-{run_id}.md").write_text(text)
        (out_dir / f"dp_utility-{mode}.md").write_text(text)
        (out_dir / f"dp_utility-{run_id}.json").write_text(
            json.dumps({"meta": meta, "summary": summary, "real": real_summary}, default=str, indent=1))
    return {"meta": meta, "summary": summary, "real": real_summary, "markdown": text}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dp_utility", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few points, under a minute")
    ap.add_argument("--runs", type=int, help="offline runs per point (full: 200)")
    ap.add_argument("--real-runs", type=int, help="real 3-party runs per kind (full: 10)")
    ap.add_argument("--sizes", type=float, nargs="+", help="pooled rows n")
    ap.add_argument("--kinds", nargs="+", choices=KINDS)
    ap.add_argument("--workers", type=int, default=1, help="processes for the offline runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="directory for the markdown and JSON results")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.runs is not None:
        cfg["runs"] = args.runs
    if args.real_runs is not None:
        cfg["real_runs"] = args.real_runs
    if args.sizes:
        cfg["sizes"] = tuple(int(s) for s in args.sizes)
    kinds = tuple(args.kinds) if args.kinds else KINDS
    real_kinds = tuple(k for k in cfg.get("real_kinds", kinds) if k in kinds)
    out = run(cfg, workers=args.workers, kinds=kinds, real_kinds=real_kinds, seed=args.seed,
              quiet=args.quiet, out_dir=None if args.no_write else Path(args.out),
              mode="quick" if args.quick else "full")
    print(out["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
