"""Values that misfit the schema, over three real party processes (docs/reference.md section 1).

DP mode: nothing the analyst or another party sees may depend on the data except through
the noise, so unknown levels, wrong types and malformed CSV rows are read as missing by their
owner (only its own log counts them) and a failing local step is reported as one fixed
reason naming the party. Exact mode (every party consented) keeps the precise errors.
"""
from __future__ import annotations

import re
import sqlite3
from fractions import Fraction

import pandas as pd
import pytest
import yaml

pytest.importorskip("jointstats.noise.sampler")
from jointstats import PartyError, run  # noqa: E402
from jointstats.engine.party import local_step_failure  # noqa: E402
from jointstats.engine.sources import MISFIT_RULE_DP  # noqa: E402
from jointstats.ledger.state import NodeState  # noqa: E402
from jointstats.consortium.config import load_party_config  # noqa: E402
from tests.common import cohort_schema  # noqa: E402
from tests.conftest import cohort_frame  # noqa: E402

HEAD = """
name: misfit
dataset: cohort
""" + cohort_schema("age", "bmi", "visits", "smoker", "region")
STATS = """statistics:
  n:        {kind: count}
  mean_bmi: {kind: mean, column: bmi}
  visits:   {kind: mean, column: visits}
  smoking:  {kind: crosstab, rows: smoker, cols: region}
"""
BAD = 37  # rows that misfit: this number must reach no one but their owner's log


def write_spec(tmp_path, dp: bool):
    path = tmp_path / ("dp.yaml" if dp else "exact.yaml")
    path.write_text(HEAD + ("privacy: {epsilon: 2.0, delta: 0}\n" if dp else "") + STATS)
    return path


def frames() -> list[pd.DataFrame]:
    return [cohort_frame(300, 31), cohort_frame(200, 32), cohort_frame(250, 33)]


def misfit(kind: str, data: list[pd.DataFrame], configs=None) -> tuple[str, int]:
    """Put BAD misfitting rows of ``kind`` into the data (before the CSVs are written, or, for
    malformed rows, into party_a's written CSV); returns exact mode's error and the rows added."""
    rows = slice(0, BAD - 1)
    if kind == "levels":
        data[2].loc[rows, "region"] = "mars"
        return "party 'party_c': column 'region' has 37 rows with values outside the declared levels", 0
    if kind == "text_in_real":
        data[1]["bmi"] = data[1]["bmi"].astype(object)
        data[1].loc[rows, "bmi"] = "heavy"
        return "party 'party_b': column 'bmi' has 37 rows with non-numeric values", 0
    if kind == "non_integer":
        data[0]["visits"] = data[0]["visits"].astype(float)
        data[0].loc[rows, "visits"] = 2.5
        return "party 'party_a': column 'visits' has 37 rows with non-integral values", 0
    if kind == "malformed" and configs is not None:
        csv = configs[0].parent / "data" / "party_a.csv"
        with open(csv, "a") as fh:
            fh.write("".join(f"{30 + i},SECRET-{i},1\n" for i in range(BAD)))  # 3 fields, not 6
        return "party 'party_a': 37 rows have the wrong number of fields", BAD
    return "", 0


def strings(obj) -> list[str]:
    """Every text in a result: keys and string values, at any depth (but its hex ids)."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() if k not in ("job_id", "spec_sha256")
                for s in [str(k), *strings(v)]]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


def shape(obj):
    """A result with every number replaced by a placeholder: its keys, lengths and texts."""
    if isinstance(obj, dict):
        # the parties' keys, signatures and data fingerprints (provenance) are opaque texts
        return {k: "#" if k in ("signature", "public_key") or (k == "value" and isinstance(v, str))
                else shape(v) for k, v in obj.items() if k not in ("job_id",)}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return obj if isinstance(obj, str) else "#"


def spent_and_reserved(config) -> tuple[Fraction, Fraction]:
    state = NodeState(load_party_config(config).state)
    try:
        return state.spent("cohort")[0], state.reserved("cohort")[0]
    finally:
        state.close()


@pytest.mark.parametrize("kind", ["levels", "text_in_real", "non_integer", "malformed"])
def test_misfits_are_missing_in_dp_mode_and_precise_errors_in_exact_mode(consortium, tmp_path, kind):
    data = frames()
    exact_error, extra_rows = misfit(kind, data)
    configs = consortium(data)
    if kind == "malformed":
        exact_error, extra_rows = misfit(kind, data, configs)
    result = run(write_spec(tmp_path, dp=True), configs)
    texts = strings(result.to_dict())
    assert not [s for s in texts if re.search(rf"\b{BAD}\b|\d+ rows", s)], texts
    assert set(result.results) == {"n", "mean_bmi", "visits", "smoking"}
    if "misfit" in result.privacy:  # the rule, stated in the privacy block (wired in by _dp)
        assert result.privacy["misfit"] == MISFIT_RULE_DP
    # the job ran on all rows: the misfitting values are missing, the rows are still rows
    n = sum(len(f) for f in data) + extra_rows
    assert abs(result["n"]["value"] - n) < 20  # discrete Laplace of scale 2: P(|X| >= 20) ~ 1e-4
    with pytest.raises(PartyError, match=re.escape(exact_error)) as info:
        run(write_spec(tmp_path, dp=False), configs)
    assert "mars" not in str(info.value) and "heavy" not in str(info.value)
    assert "SECRET" not in str(info.value)


def test_dp_result_looks_the_same_with_and_without_misfits(consortium, tmp_path):
    """The analyst's result has the same keys, lengths and texts whatever misfits the data hold."""
    clean = run(write_spec(tmp_path, dp=True), consortium(frames()))
    data = frames()
    for kind in ("levels", "text_in_real", "non_integer"):
        misfit(kind, data)
    configs = consortium(data)
    misfit("malformed", data, configs)
    dirty = run(write_spec(tmp_path, dp=True), configs)
    assert shape(dirty.to_dict()) == shape(clean.to_dict())


def _sqlite_source_failing_on(config, frame: pd.DataFrame) -> None:
    """Make ``config``'s dataset a SQLite view that fails to read when some age is above 90:
    a failure that depends on the data."""
    db = config.parent / "data" / "cohort.db"
    con = sqlite3.connect(db)
    frame.to_sql("raw", con, index=False)
    con.execute("CREATE VIEW cohort AS SELECT CASE WHEN age > 90 THEN abs(-9223372036854775808) "
                "ELSE age END AS age, bmi, sbp, visits, smoker, region FROM raw")
    con.commit()
    con.close()
    cfg = yaml.safe_load(config.read_text())
    cfg["datasets"]["cohort"]["source"] = "sqlite:///data/cohort.db?table=cohort"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_dp_local_step_failure_is_one_fixed_reason_naming_the_party(consortium, tmp_path):
    data = frames()
    assert (data[2]["age"] > 90).any()
    configs = consortium(data)
    _sqlite_source_failing_on(configs[2], data[2])
    with pytest.raises(PartyError) as info:
        run(write_spec(tmp_path, dp=True), configs)
    assert str(info.value) == local_step_failure("party_c")
    for cfg in configs:  # failed before the commit: nothing spent, nothing held
        assert spent_and_reserved(cfg) == (0, 0)
    # exact mode: today's precise reason
    with pytest.raises(PartyError, match=re.escape(
            "party 'party_c': its database table could not be read (source sqlite:///data/cohort.db")):
        run(write_spec(tmp_path, dp=False), configs)


@pytest.mark.parametrize("dp", [True, False])
def test_local_step_error_text_stays_with_its_owner_in_dp_mode(consortium, tmp_path, monkeypatch, caplog, dp):
    """In process: whatever escapes reading or aggregating (here an unexpected error quoting a
    value and a count) becomes the fixed reason in DP mode, logged in full only locally."""
    from jointstats.engine import local_step as _local
    from jointstats.engine.party import PartyJob
    from jointstats.errors import DataError
    from jointstats.plan.spec import load_spec

    def broken(plan, chunks):
        list(chunks)
        raise ValueError("SECRET-VALUE in 17 rows")
    monkeypatch.setattr(_local, "compute_partials", broken)
    configs = consortium(frames())
    job = PartyJob(load_party_config(configs[0]), load_spec(write_spec(tmp_path, dp=dp)), "j1")
    plan = job.plan()
    if not dp:
        with pytest.raises(ValueError, match="SECRET-VALUE in 17 rows"):
            job.local_step(plan)
        return
    with caplog.at_level("WARNING", logger="jointstats.party"), pytest.raises(DataError) as info:
        job.local_step(plan)
    assert str(info.value) == local_step_failure("party_a")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert "SECRET-VALUE in 17 rows" in caplog.text  # the owner's own log
