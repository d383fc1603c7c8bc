"""Synthetic, seeded demo data for three parties (two hospitals and a registry).

Every party holds rows of the same patients' kind of record (horizontal partition):

=========  ===========  ==========================================================
column     type         model
=========  ===========  ==========================================================
patient_id text         a party-prefixed id (not in the demo schema: ignored)
age        real 18-100  a party-specific age mix, 1 decimal
sex        F / M        ~52 % F
bmi        real 10-60   higher for men and in the south/west, rising a little with
                        age and falling with smoking; 1 decimal; ~1 % missing
smoker     no / yes     more likely when younger, in the east and for men
region     4 levels     north/south/east/west, a different mix at each party
sbp        real 80-220  systolic blood pressure: rises with age, bmi and smoking;
                        1 decimal; ~1 % missing
visits     integer 0-50 Poisson, rate rising with age and bmi
=========  ===========  ==========================================================

Files (the layout the demo party configurations expect, ``fmt='mixed'``):
``data/hospital_a.csv``, ``data/hospital_b.parquet`` and ``data/registry_c.db``
(SQLite, table ``patients``), so every kind of source is exercised. ``fmt='csv'``,
``'parquet'`` or ``'sqlite'`` writes every party in that one format instead.
Each party's rows depend only on ``(seed, party)``, never on the other parties.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from jointstats._files import atomic_path

__all__ = ["PARTIES", "DEFAULT_ROWS", "DEMO_SOURCES", "generate", "ensure_demo_data", "make_party_frame",
           "LINKED_COLUMNS", "LINKED_ROWS", "make_linked_frames"]

PARTIES = ("hospital_a", "hospital_b", "registry_c")
DEFAULT_ROWS = {"hospital_a": 1500, "hospital_b": 1000, "registry_c": 2500}
REGIONS = ("north", "south", "east", "west")
SQLITE_TABLE = "patients"

#: the demo layout: which format each party's data is written in
_MIXED = {"hospital_a": "csv", "hospital_b": "parquet", "registry_c": "sqlite"}
_SUFFIX = {"csv": ".csv", "parquet": ".parquet", "sqlite": ".db"}

#: party -> source string, relative to the demo folder (as in its party configuration)
DEMO_SOURCES = {
    "hospital_a": "data/hospital_a.csv",
    "hospital_b": "data/hospital_b.parquet",
    "registry_c": f"sqlite:///data/registry_c.db?table={SQLITE_TABLE}",
}

# Party-specific populations: (mean age, sd age, region mix north/south/east/west)
_PROFILE = {
    "hospital_a": (58.0, 15.0, (0.55, 0.15, 0.20, 0.10)),
    "hospital_b": (54.0, 16.0, (0.10, 0.55, 0.10, 0.25)),
    "registry_c": (49.0, 17.0, (0.25, 0.25, 0.30, 0.20)),
}
_BMI_REGION = np.array([0.0, 1.6, -0.9, 0.8])
_SMOKE_REGION = np.array([0.0, -0.2, 0.35, 0.1])


def make_party_frame(party: str, n: int, seed: int = 2026) -> pd.DataFrame:
    """The synthetic rows of one party as a DataFrame (NaN for missing bmi/sbp)."""
    if party not in _PROFILE:
        raise ValueError(f"unknown demo party {party!r}; expected one of {', '.join(PARTIES)}")
    if n < 0:
        raise ValueError("the number of rows must be >= 0")
    rng = np.random.default_rng([seed, PARTIES.index(party)])
    mean_age, sd_age, mix = _PROFILE[party]

    age = np.clip(rng.normal(mean_age, sd_age, n), 18.0, 95.0)
    male = rng.random(n) < 0.48
    region = rng.choice(len(REGIONS), size=n, p=mix)

    logit = -1.0 - 0.025 * (age - 50.0) + 0.3 * male + _SMOKE_REGION[region]
    smoker = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))

    bmi = (
        26.0 + 1.3 * male + _BMI_REGION[region] + 0.04 * (age - 50.0) - 0.8 * smoker
        + rng.normal(0.0, 4.2, n)
    )
    bmi = np.clip(bmi, 15.0, 55.0)

    sbp = (
        78.0 + 0.55 * age + 0.9 * bmi + 6.0 * smoker + 3.0 * male
        + rng.normal(0.0, 11.0, n)
    )
    sbp = np.clip(sbp, 85.0, 215.0)

    rate = np.exp(0.9 + 0.018 * (age - 50.0) + 0.035 * (bmi - 27.0) + 0.15 * smoker)
    visits = np.minimum(rng.poisson(rate), 50)

    bmi = np.round(bmi, 1)
    sbp = np.round(sbp, 1)
    bmi[rng.random(n) < 0.01] = np.nan
    sbp[rng.random(n) < 0.01] = np.nan

    prefix = party[0].upper() + party[-1].upper()
    return pd.DataFrame(
        {
            "patient_id": [f"{prefix}{i:06d}" for i in range(1, n + 1)],
            "age": np.round(age, 1),
            "sex": np.where(male, "M", "F"),
            "bmi": bmi,
            "smoker": np.where(smoker, "yes", "no"),
            "region": np.array(REGIONS)[region],
            "sbp": sbp,
            "visits": visits.astype(np.int64),
        }
    )


def _write(df: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write atomically: a crash never leaves a half-written file under ``path``."""
    with atomic_path(path) as tmp:  # created by the writer, with the usual permissions
        if fmt == "csv":
            df.to_csv(tmp, index=False, na_rep="", float_format="%.1f")
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
        elif fmt == "sqlite":
            con = sqlite3.connect(tmp)
            try:
                con.execute(
                    f"CREATE TABLE {SQLITE_TABLE} (patient_id TEXT PRIMARY KEY, age REAL, sex TEXT, "
                    "bmi REAL, smoker TEXT, region TEXT, sbp REAL, visits INTEGER)"
                )
                cols = list(df.columns)
                rows = (
                    tuple(None if (isinstance(v, float) and np.isnan(v)) else v for v in rec)
                    for rec in df[cols].astype(object).itertuples(index=False, name=None)
                )
                con.executemany(f"INSERT INTO {SQLITE_TABLE} VALUES ({', '.join('?' * len(cols))})", rows)
                con.commit()
            finally:
                con.close()
        else:  # pragma: no cover - checked by the caller
            raise ValueError(fmt)


def _layout(fmt: str) -> dict[str, str]:
    if fmt == "mixed":
        return dict(_MIXED)
    if fmt in _SUFFIX:
        return {p: fmt for p in PARTIES}
    raise ValueError(f"fmt: expected 'mixed', 'csv', 'parquet' or 'sqlite', got {fmt!r}")


def _paths(out_dir: Path, fmt: str) -> dict[str, tuple[Path, str]]:
    return {p: (Path(out_dir) / "data" / f"{p}{_SUFFIX[f]}", f) for p, f in _layout(fmt).items()}


def generate(
    out_dir: Path,
    seed: int = 2026,
    rows: dict[str, int] | None = None,
    fmt: str = "mixed",
    parties: tuple[str, ...] | None = None,
) -> dict[str, Path]:
    """Write the demo data under ``out_dir/data/``; returns party -> file written.

    ``rows`` overrides the number of rows per party (default ``DEFAULT_ROWS``);
    ``fmt`` is ``'mixed'`` (the demo layout: CSV, Parquet, SQLite) or one format for
    all; ``parties`` limits which parties are written (default: all three).
    """
    counts = dict(DEFAULT_ROWS)
    if rows:
        unknown = set(rows) - set(PARTIES)
        if unknown:
            raise ValueError(f"rows: unknown demo parties {sorted(unknown)}")
        counts.update(rows)
    written: dict[str, Path] = {}
    for party, (path, f) in _paths(out_dir, fmt).items():
        if parties is not None and party not in parties:
            continue
        _write(make_party_frame(party, counts[party], seed), path, f)
        written[party] = path
    return written


#: Linked demo data (``protocols/linked-bp.yaml``): the columns each party holds about the
#: same people, keyed by ``patient_id`` (the party configs' ``linked_cohort`` entries).
LINKED_COLUMNS = {"hospital_a": ("age", "sbp"), "hospital_b": ("bmi", "smoker", "visits"),
                  "registry_c": ("sex", "region")}
#: People in the linked population; each party holds a different 85% of them.
LINKED_ROWS = 1400


def make_linked_frames(seed: int = 2026, n: int = LINKED_ROWS) -> dict[str, pd.DataFrame]:
    """One population split by columns over the three parties, partially overlapping ids
    written as each system writes them (hospital_b in lower case, registry_c with spaces),
    and at hospital_b one repeated and one missing key (left out, docs/linkage.md)."""
    people = make_party_frame("registry_c", n, seed + 7)
    people["patient_id"] = [f"NHS{i:07d}" for i in range(n)]
    rng = np.random.default_rng(seed + 11)
    out = {}
    for party, cols in LINKED_COLUMNS.items():
        rows = people.iloc[np.sort(rng.choice(n, int(n * 0.85), replace=False))]
        frame = rows[["patient_id", *cols]].reset_index(drop=True)
        if party == "hospital_b":
            frame["patient_id"] = frame["patient_id"].str.lower()
            frame.loc[5, "patient_id"] = frame.loc[6, "patient_id"]
            frame.loc[9, "patient_id"] = None
        elif party == "registry_c":
            frame["patient_id"] = " " + frame["patient_id"] + " "
        out[party] = frame
    return out


def ensure_demo_data(demo_dir: Path, seed: int = 2026) -> dict[str, Path]:
    """Write the demo layout under ``demo_dir/data/`` for the parties whose file is
    missing, and the linked demo files (``data/PARTY_linked.csv``) if missing; existing
    files are left alone. Returns party -> data file."""
    paths = _paths(Path(demo_dir), "mixed")
    absent = tuple(p for p, (path, _) in paths.items() if not path.exists())
    if absent:
        generate(Path(demo_dir), seed=seed, fmt="mixed", parties=absent)
    linked = {p: Path(demo_dir) / "data" / f"{p}_linked.csv" for p in PARTIES}
    if not all(path.exists() for path in linked.values()):
        for party, frame in make_linked_frames(seed).items():
            _write(frame, linked[party], "csv")
    return {p: path for p, (path, _) in paths.items()}
