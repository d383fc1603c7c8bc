"""A node's durable state: privacy ledger, jobs and a hash-chained audit log in one SQLite file.

Every change is one SQLite transaction (WAL, ``synchronous=FULL``) that updates the
ledger *and* appends its audit record, so the two can never disagree, even if the
process is killed mid-write. The audit log is a hash chain (each record hashes its
sequence number, the previous record's hash, its timestamp, event and fields), and a
one-row ``audit_head`` table (count and last hash, written in the same transaction)
detects truncation of the tail. ``verify_audit`` also replays the ledger records of
the chain and checks that the ledger table agrees, so an edit of the ledger alone
(for example, marking a committed job released to win its budget back) is caught.

Limits: a hash chain stored beside the data detects partial tampering; someone with
write access who rewrites the whole chain *and* its head is only caught by comparing
``audit_head()`` with a copy kept elsewhere (results or another party).

Job life cycle::

    reserve -> reserved --commit--> committed --mark_done--> done
                  |                     |
                  +--release/fail-->  released        +--fail--> failed (budget stays spent)

Budget is *spent* for committed, done and failed jobs (commit precedes the reveal, so
a committed job may have revealed), *reserved* for reserved jobs, and free again for
released ones.

Each job row stores its charge (``_accounting.JobCharge``): the claimed epsilon and
delta, rho (zCDP jobs; NULL for pure ones) and the sampler's total-variation bound tv,
all as exact "p/q" text. A reservation fits when the lifetime rule
(``_accounting.lifetime_spend``) accepts the exact totals of the committed and reserved
charges plus the new one. Schema 1 files (no rho, no tv) are migrated in place when
opened: their rows read as legacy charges (rho NULL, tv 0).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Mapping

from jointstats.plan.accounting import JobCharge, LedgerTotals, LifetimeSpend, PrivacyBudget, lifetime_spend
from jointstats.errors import (AuthError, BudgetError, ConfigError, JointStatsError, ReplayError,  # noqa: F401
                     StateError)

__all__ = [
    "NodeState",
    "Job",
    "ReplayError",
    "StateError",
    "AUDIT_EVENTS",
    "LEDGER_EVENTS",
    "record_hash",
    "BudgetUsage",
]

_SCHEMA_VERSION = 3
GENESIS_HASH = "0" * 64

#: Every audit event name in use.
AUDIT_EVENTS = frozenset({
    "submission", "refusal", "start", "reserve", "commit", "release",
    "reveal", "failure", "done", "recover", "migration",
    # governance (docs/governance.md): consent withdrawals (a salted hash, never the id) and
    # the number in force at a job; approval waits, sign-offs, rejections and expiries;
    # officers' reads of the audit log; policy reloads
    "withdrawal", "consent", "waiting", "approval", "rejection", "expiry", "access", "reload",
})
#: Events that change the ledger; only NodeState's ledger methods may write them.
LEDGER_EVENTS = frozenset({"reserve", "commit", "release", "done", "recover"})

_CHARGED = ("committed", "done", "failed")   # budget spent: may have revealed
_STATUSES = ("reserved", "committed", "done", "released", "failed")
_KIND_RE = re.compile(r"^[a-z][a-z_]{0,31}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    dataset     TEXT NOT NULL,
    epsilon     TEXT NOT NULL,
    delta       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('reserved','committed','done','released','failed')),
    analyst     TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL,
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL,
    reason      TEXT,
    revealed    TEXT,
    rho         TEXT,
    tv          TEXT NOT NULL DEFAULT '0/1',
    agreement   TEXT
);
CREATE INDEX IF NOT EXISTS jobs_dataset ON jobs(dataset, status);
CREATE TABLE IF NOT EXISTS nonces (
    nonce    TEXT PRIMARY KEY,
    analyst  TEXT NOT NULL,
    seen_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY,
    ts         TEXT NOT NULL,
    event      TEXT NOT NULL,
    fields     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    count  INTEGER NOT NULL,
    hash   TEXT NOT NULL
);
INSERT OR IGNORE INTO audit_head (id, count, hash) VALUES (1, 0, '""" + GENESIS_HASH + """');
"""
#: Schema 1 -> 2: every job's charge gains rho (NULL: not a zCDP charge) and tv (0 for old rows).
_MIGRATE_1_2 = ("ALTER TABLE jobs ADD COLUMN rho TEXT",
                "ALTER TABLE jobs ADD COLUMN tv TEXT NOT NULL DEFAULT '0/1'")
#: Schema 2 -> 3: every job gains the data-use agreement it ran under (NULL: none).
_MIGRATE_2_3 = ("ALTER TABLE jobs ADD COLUMN agreement TEXT",)


@dataclass(frozen=True)
class Job:
    """One job's ledger row: what it asked for and where it is in its life cycle."""

    job_id: str
    dataset: str
    epsilon: Fraction
    delta: Fraction
    status: str
    analyst: str
    spec_sha256: str
    created: str
    updated: str
    reason: str | None
    revealed: dict[str, str] | None
    rho: Fraction | None = None
    tv: Fraction = Fraction(0)
    agreement: str | None = None  # the data-use agreement whose sub-budget it spends

    @property
    def charge(self) -> JobCharge:
        """The job's privacy charge (claimed epsilon and delta, rho or None, sampler tv)."""
        return JobCharge(self.epsilon, self.delta, self.rho, self.tv)

    @property
    def charged(self) -> bool:
        """Whether this job's budget counts as spent (it committed, so it may have revealed)."""
        return self.status in _CHARGED

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (fractions as "p/q" strings)."""
        return {
            "job_id": self.job_id, "dataset": self.dataset,
            "epsilon": _frac_text(self.epsilon), "delta": _frac_text(self.delta),
            "rho": None if self.rho is None else _frac_text(self.rho), "tv": _frac_text(self.tv),
            "status": self.status, "analyst": self.analyst, "spec_sha256": self.spec_sha256,
            "created": self.created, "updated": self.updated, "reason": self.reason,
            "revealed": self.revealed, "agreement": self.agreement,
        }


@dataclass(frozen=True)
class BudgetUsage:
    """One dataset's budget: exact totals of spent and reserved charges and the rule's figures.

    ``spent``/``reserved``: totals of committed (done, failed) and of reserved jobs.
    ``spent_rule``: the lifetime rule over the spent jobs (what the dataset has given away).
    ``held``: the rule over spent plus reserved jobs (what new reservations are checked against).
    """

    dataset: str
    spent: LedgerTotals
    reserved: LedgerTotals
    spent_rule: LifetimeSpend
    held: LifetimeSpend

    @property
    def spent_budget(self) -> PrivacyBudget | None:
        """What the dataset has given away under the lifetime rule (None: the rule finds no epsilon)."""
        return self.spent_rule.spent

    @property
    def remaining(self) -> PrivacyBudget:
        """What new jobs may still spend: the budget less spent and reserved jobs."""
        return self.held.remaining

    def to_dict(self) -> dict[str, dict[str, float | int]]:
        """The dataset's figures as the node's API publishes them (floats; the exact values
        are in the ledger): spent (the lifetime rule's epsilon and delta, the zCDP total rho,
        jobs), reserved (pure epsilon, rho, jobs) and remaining (epsilon, delta)."""
        spent = self.spent_rule
        return {"spent": {"epsilon": float(spent.epsilon or 0), "delta": float(spent.delta),
                          "rho": float(self.spent.rho), "jobs": self.spent.jobs},
                "reserved": {"epsilon": float(self.reserved.pure_epsilon),
                             "rho": float(self.reserved.rho), "jobs": self.reserved.jobs},
                "remaining": {"epsilon": float(self.held.remaining_epsilon),
                              "delta": float(self.held.remaining_delta)}}


# --------------------------------------------------------------------------- helpers

def _frac_text(f: Fraction) -> str:
    """Exact text form "p/q" used for storage and audit fields."""
    return f"{f.numerator}/{f.denominator}"


def _parse_frac(text: str) -> Fraction:
    """Parse the stored "p/q" form back to an exact Fraction."""
    return Fraction(text)


def _to_frac(value: Any, what: str) -> Fraction:
    """Coerce an epsilon/delta argument to an exact non-negative Fraction (floats via their decimal repr)."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number, not bool")
    if isinstance(value, float):
        # read a float as the shortest decimal that round-trips (0.1 -> 1/10), as YAML meant it
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be finite, got {value!r}")
        f = Fraction(repr(value))
    elif isinstance(value, (Fraction, int)):
        f = Fraction(value)
    elif isinstance(value, str):
        try:
            f = Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{what} {value!r} is not a number") from None
    else:
        raise TypeError(f"{what} must be a Fraction, int, float or decimal string, "
                        f"not {type(value).__name__}")
    if f < 0:
        raise ValueError(f"{what} must be >= 0, got {_fmt(f)}")
    return f


def _fmt(f: Fraction) -> str:
    """Human form of a Fraction: a short decimal when exact, else "p/q"."""
    if f.denominator == 1:
        return str(f.numerator)
    r = repr(float(f))
    try:
        if Fraction(r) == f:
            return r
    except ValueError:  # pragma: no cover - inf/nan cannot come from a Fraction here
        pass
    return f"{f.numerator}/{f.denominator} (~{float(f):.6g})"


def _fmt_opt(f: Fraction | None) -> str:
    """_fmt, or "none" for a missing value."""
    return "none" if f is None else _fmt(f)


def _charge_fields(charge: JobCharge) -> dict[str, str | None]:
    """A charge as audit fields: exact "p/q" texts, rho None for a pure (or legacy) charge."""
    return {"epsilon": _frac_text(charge.epsilon), "delta": _frac_text(charge.delta),
            "rho": None if charge.rho is None else _frac_text(charge.rho),
            "tv": _frac_text(charge.tv)}


def _approx(f: Fraction) -> str:
    """A derived Fraction for a message: 6 significant digits (the exact value is in the audit)."""
    return f"{float(f):.6g}"


def _charge_text(charge: JobCharge) -> str:
    """A charge for a one-line message (exact figures are in the refusal's audit record)."""
    rho = "" if charge.rho is None else f", rho {_approx(charge.rho)}"
    return (f"epsilon {_fmt(charge.epsilon)}, delta {_approx(charge.delta)}{rho}, "
            f"tv {_approx(charge.tv)}")


def _need_text(rule: LifetimeSpend) -> str:
    """What a lifetime rule outcome that does not fit would need, for a one-line message."""
    if rule.epsilon is None:
        return (f"more delta than its budget {_fmt(rule.budget_delta)} (the sampler TV terms "
                f"leave {_approx(rule.free_delta)})")
    return f"epsilon {_approx(rule.epsilon)}, delta {_approx(rule.delta)}"


def _now() -> str:
    """UTC timestamp with microseconds, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _json_default(obj: Any) -> Any:
    """JSON encoding of the few non-JSON types audit fields may carry."""
    if isinstance(obj, Fraction):
        return _frac_text(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    raise TypeError(f"audit field of type {type(obj).__name__} is not JSON-serialisable")


def _fields_json(fields: Mapping[str, Any]) -> str:
    """Canonical JSON for audit fields: sorted keys, no whitespace, ASCII only."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_json_default, allow_nan=False)


def record_hash(seq: int, prev_hash: str, ts: str, event: str, fields_json: str) -> str:
    """sha256 over an unambiguous encoding of (seq, prev_hash, timestamp, event, fields_json)."""
    payload = json.dumps([seq, prev_hash, ts, event, fields_json], separators=(",", ":"),
                         ensure_ascii=True)
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _kinds(revealed: Mapping[str, Any]) -> dict[str, str]:
    """Reduce a revealed-results mapping to {statistic name: kind}, dropping every value."""
    if not isinstance(revealed, Mapping):
        raise TypeError("revealed must be a mapping of statistic name to kind (or to a result dict)")
    out: dict[str, str] = {}
    for name, item in revealed.items():
        kind = item.get("kind") if isinstance(item, Mapping) else item
        if not isinstance(kind, str) or not _KIND_RE.match(kind):
            raise ValueError(f"revealed[{name!r}]: expected a statistic kind such as 'count' "
                             f"or a result dict with a 'kind', got {type(item).__name__}")
        out[str(name)] = kind
    return out


# --------------------------------------------------------------------------- NodeState

class NodeState:
    """A node's privacy ledger, jobs and audit log, durable in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        """Open (creating if needed) the state file at ``path``; several processes may share it."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"state: cannot open {self.path}: {exc}") from exc
        self._conn = conn
        self._lock = threading.RLock()
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"state: {self.path} cannot use WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != _SCHEMA_VERSION:  # a new file (an existing one costs no write, no fsync)
                with self._tx():
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version not in (0, 1, 2, _SCHEMA_VERSION):
                        raise ConfigError(f"state: {self.path} has schema version {version}, "
                                          f"this jointstats expects {_SCHEMA_VERSION}")
                    if version == 1:  # same transaction: migrated completely or not at all
                        for stmt in _MIGRATE_1_2:
                            conn.execute(stmt)
                    if version in (1, 2):
                        for stmt in _MIGRATE_2_3:
                            conn.execute(stmt)
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                    if version == 1:
                        self._append(conn, "migration", {
                            "from_version": 1, "to_version": _SCHEMA_VERSION,
                            "detail": "jobs gained rho and tv; existing rows read as legacy "
                                      "charges (rho none, tv 0); jobs gained agreement (none)"})
                    elif version == 2:
                        self._append(conn, "migration", {
                            "from_version": 2, "to_version": _SCHEMA_VERSION,
                            "detail": "jobs gained agreement; existing rows ran under none"})
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(f"state: {self.path} is not a jointstats state file: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    # ------------------------------------------------------------------ plumbing

    class _Tx:
        """Context manager for one BEGIN IMMEDIATE ... COMMIT transaction (rollback on error)."""

        def __init__(self, state: "NodeState") -> None:
            self.state = state

        def __enter__(self) -> sqlite3.Connection:
            self.state._lock.acquire()
            try:
                self.state._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.state._lock.release()
                raise
            return self.state._conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if exc_type is None:
                    self.state._conn.execute("COMMIT")
                else:
                    self.state._conn.execute("ROLLBACK")
            finally:
                self.state._lock.release()

    def _tx(self) -> "NodeState._Tx":
        """One write transaction holding SQLite's write lock from the start."""
        return NodeState._Tx(self)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "NodeState":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NodeState({str(self.path)!r})"

    def _append(self, conn: sqlite3.Connection, event: str, fields: Mapping[str, Any]) -> int:
        """Append one chained audit record inside the caller's transaction; returns its seq."""
        count, prev = conn.execute("SELECT count, hash FROM audit_head WHERE id = 1").fetchone()
        seq = count + 1
        ts = _now()
        fj = _fields_json(fields)
        h = record_hash(seq, prev, ts, event, fj)
        conn.execute("INSERT INTO audit (seq, ts, event, fields, prev_hash, hash) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (seq, ts, event, fj, prev, h))
        conn.execute("UPDATE audit_head SET count = ?, hash = ? WHERE id = 1", (seq, h))
        return seq

    @staticmethod
    def _row_job(row: tuple) -> Job:
        """Build a Job from a jobs-table row."""
        (job_id, dataset, eps, delta, status, analyst, sha, created, updated, reason, rev,
         rho, tv, agreement) = row
        return Job(job_id, dataset, _parse_frac(eps), _parse_frac(delta), status, analyst, sha,
                   created, updated, reason, json.loads(rev) if rev else None,
                   None if rho is None else _parse_frac(rho), _parse_frac(tv), agreement)

    _JOB_COLS = ("job_id, dataset, epsilon, delta, status, analyst, spec_sha256, created, "
                 "updated, reason, revealed, rho, tv, agreement")

    def _get(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        """The job row for ``job_id`` within the current connection, or None."""
        row = conn.execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE job_id = ?",
                           (job_id,)).fetchone()
        return self._row_job(row) if row else None

    def _charges(self, conn: sqlite3.Connection, dataset: str, statuses: tuple[str, ...],
                 agreement: str | None = None) -> list[JobCharge]:
        """The charges of ``dataset``'s jobs in ``statuses`` (only those under ``agreement``
        if given: its sub-budget's spend)."""
        marks = ",".join("?" * len(statuses))
        extra = "" if agreement is None else " AND agreement = ?"
        args = (dataset, *statuses) + (() if agreement is None else (agreement,))
        return [JobCharge(_parse_frac(e), _parse_frac(d), None if r is None else _parse_frac(r),
                          _parse_frac(t))
                for e, d, r, t in conn.execute(
                    f"SELECT epsilon, delta, rho, tv FROM jobs WHERE dataset = ? "
                    f"AND status IN ({marks}){extra}", args)]

    def _sums(self, conn: sqlite3.Connection, dataset: str, statuses: tuple[str, ...]
              ) -> tuple[Fraction, Fraction]:
        """Basic composition of the claimed guarantees: exact sums of epsilon and delta."""
        eps, delta = Fraction(0), Fraction(0)
        for c in self._charges(conn, dataset, statuses):
            eps += c.epsilon
            delta += c.delta
        return eps, delta

    def _totals(self, conn: sqlite3.Connection, dataset: str, statuses: tuple[str, ...],
                agreement: str | None = None) -> LedgerTotals:
        """Exact totals (E, R, T, D) of ``dataset``'s jobs in ``statuses`` (under ``agreement``
        if given), for the lifetime rule."""
        return LedgerTotals.of(self._charges(conn, dataset, statuses, agreement))

    def _transition(self, job_id: str, expected: tuple[str, ...], new: str, event: str,
                    fields: Mapping[str, Any], *, reason: str | None = None,
                    revealed: dict[str, str] | None = None) -> Job:
        """Move ``job_id`` from one of ``expected`` to ``new`` and audit it, in one transaction."""
        with self._tx() as conn:
            job = self._get(conn, job_id)
            if job is None:
                raise StateError(f"job {job_id!r}: unknown job, cannot {event}")
            if job.status not in expected:
                raise StateError(f"job {job_id!r} is {job.status!r}, cannot {event} "
                                 f"(expected {' or '.join(map(repr, expected))})")
            now = _now()
            conn.execute("UPDATE jobs SET status = ?, updated = ?, reason = COALESCE(?, reason), "
                         "revealed = COALESCE(?, revealed) WHERE job_id = ?",
                         (new, now, reason, json.dumps(revealed, sort_keys=True) if revealed is not None
                          else None, job_id))
            self._append(conn, event, {**fields, "job_id": job_id,
                                       "ledger": self._ledger_entry(job, new)})
            return self._get(conn, job_id)  # type: ignore[return-value]

    @staticmethod
    def _ledger_entry(job: Job, status: str) -> dict[str, str]:
        """The self-contained ledger state carried by a ledger audit record."""
        entry = {"dataset": job.dataset, "epsilon": _frac_text(job.epsilon),
                 "delta": _frac_text(job.delta),
                 "rho": None if job.rho is None else _frac_text(job.rho),
                 "tv": _frac_text(job.tv), "status": status}
        if job.agreement is not None:  # records of jobs without one read as before
            entry["agreement"] = job.agreement
        return entry

    # ------------------------------------------------------------------ ledger

    def reserve(self, job_id: str, dataset: str, charge: JobCharge, budget_epsilon: Fraction,
                budget_delta: Fraction, *, analyst: str, spec_sha256: str,
                agreement: tuple[str, Fraction, Fraction] | None = None) -> None:
        """Atomically check that ``dataset``'s budget covers this job's charge and reserve it.

        The job fits when ``_accounting.lifetime_spend`` accepts the exact totals of the
        committed, done, failed and reserved charges plus ``charge`` under the budget
        (``budget_epsilon``, ``budget_delta``). Raises ReplayError if the job id was
        reserved before and BudgetError (one line: dataset, remaining, budget, the job's
        charge) if it does not fit; both refusals are audited and change nothing else.
        The decision reads only public charges, never data.

        ``agreement``: (id, epsilon, delta) of the data-use agreement the job runs under; its
        sub-budget must also cover the charges of that agreement's jobs plus this one (the
        same lifetime rule, in the same transaction), and the job row records the agreement.
        """
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("job_id must be a non-empty string")
        if not isinstance(charge, JobCharge):
            raise TypeError(f"charge must be a JobCharge, found {type(charge).__name__}")
        b_eps = _to_frac(budget_epsilon, "budget epsilon")
        b_dlt = _to_frac(budget_delta, "budget delta")
        refusal: JointStatsError | None = None
        with self._tx() as conn:
            if self._get(conn, job_id) is not None:
                self._append(conn, "refusal", {"job_id": job_id, "analyst": analyst,
                                               "dataset": dataset, "reason": "replay",
                                               "detail": "job id already reserved"})
                refusal = ReplayError(f"job {job_id!r} was already submitted to this node "
                                      f"(replayed job id)")
            else:
                held = self._totals(conn, dataset, _CHARGED + ("reserved",))
                before = lifetime_spend(held, b_eps, b_dlt)
                after = lifetime_spend(held.add(charge), b_eps, b_dlt)
                sub = None
                if agreement is not None:
                    a_id, a_eps, a_dlt = agreement[0], _to_frac(agreement[1], "agreement epsilon"), \
                        _to_frac(agreement[2], "agreement delta")
                    a_held = self._totals(conn, dataset, _CHARGED + ("reserved",), a_id)
                    a_before = lifetime_spend(a_held, a_eps, a_dlt)
                    a_after = lifetime_spend(a_held.add(charge), a_eps, a_dlt)
                    if not a_after.fits:
                        sub = (a_id, a_eps, a_dlt, a_before, a_after)
                if sub is not None and after.fits:
                    a_id, a_eps, a_dlt, a_before, a_after = sub
                    self._append(conn, "refusal", {
                        "job_id": job_id, "analyst": analyst, "dataset": dataset,
                        "agreement": a_id, "reason": "agreement budget",
                        "charge": _charge_fields(charge),
                        "remaining_epsilon": a_before.remaining_epsilon,
                        "remaining_delta": a_before.remaining_delta,
                        "needed_epsilon": a_after.epsilon})
                    refusal = BudgetError(
                        f"budget of data-use agreement {a_id!r} (dataset {dataset!r}) exceeded: "
                        f"remaining epsilon {_approx(a_before.remaining_epsilon)}, delta "
                        f"{_approx(a_before.remaining_delta)} (of epsilon {_fmt(a_eps)}, delta "
                        f"{_fmt(a_dlt)}); job {job_id!r} asked {_charge_text(charge)}")
                elif not after.fits:
                    self._append(conn, "refusal", {
                        "job_id": job_id, "analyst": analyst, "dataset": dataset,
                        "reason": "budget", "charge": _charge_fields(charge),
                        "remaining_epsilon": before.remaining_epsilon,
                        "remaining_delta": before.remaining_delta,
                        "needed_epsilon": after.epsilon})
                    refusal = BudgetError(
                        f"privacy budget of dataset {dataset!r} exceeded: remaining epsilon "
                        f"{_approx(before.remaining_epsilon)}, delta "
                        f"{_approx(before.remaining_delta)} (of epsilon {_fmt(b_eps)}, delta "
                        f"{_fmt(b_dlt)}); job {job_id!r} asked {_charge_text(charge)}; with it "
                        f"the ledger would need {_need_text(after)}")
                else:
                    now = _now()
                    conn.execute(f"INSERT INTO jobs ({self._JOB_COLS}) VALUES "
                                 "(?, ?, ?, ?, 'reserved', ?, ?, ?, ?, NULL, NULL, ?, ?, ?)",
                                 (job_id, dataset, _frac_text(charge.epsilon),
                                  _frac_text(charge.delta), analyst, spec_sha256, now, now,
                                  None if charge.rho is None else _frac_text(charge.rho),
                                  _frac_text(charge.tv),
                                  None if agreement is None else agreement[0]))
                    job = self._get(conn, job_id)
                    assert job is not None
                    self._append(conn, "reserve", {
                        "job_id": job_id, "analyst": analyst, "spec_sha256": spec_sha256,
                        "remaining_epsilon": after.remaining_epsilon,
                        "remaining_delta": after.remaining_delta,
                        "ledger": self._ledger_entry(job, "reserved")})
        if refusal is not None:
            raise refusal

    def commit(self, job_id: str) -> None:
        """Mark a reserved job's budget as spent; must happen BEFORE its results are revealed."""
        self._transition(job_id, ("reserved",), "committed", "commit", {})

    def release(self, job_id: str, reason: str) -> None:
        """Give back a reserved job's budget because it failed before the reveal."""
        self._transition(job_id, ("reserved",), "released", "release", {"reason": reason},
                         reason=reason)

    def mark_done(self, job_id: str, revealed: Mapping[str, Any]) -> None:
        """Close a committed job; the audit records the kinds revealed and epsilon spent, never values."""
        kinds = _kinds(revealed)
        job = self.job(job_id)
        spent = _charge_fields(job.charge) if job else {}
        self._transition(job_id, ("committed",), "done", "done", {"revealed": kinds, **spent},
                         revealed=kinds)

    def fail(self, job_id: str, reason: str) -> None:
        """Record that a job failed: a reserved job is released, a committed one keeps its budget spent.

        A job id without a ledger entry (it failed before reserving) gets an audit record only.
        """
        with self._lock:
            job = self.job(job_id)
            if job is None:
                self.audit("failure", job_id=job_id, reason=reason, budget="none")
                return
            if job.status == "reserved":
                self._transition(job_id, ("reserved",), "released", "failure",
                                 {"reason": reason, "budget": "released"}, reason=reason)
            elif job.status == "committed":
                self._transition(job_id, ("committed",), "failed", "failure",
                                 {"reason": reason, "budget": "kept (committed before failure)"},
                                 reason=reason)
            else:
                raise StateError(f"job {job_id!r} is {job.status!r}, cannot fail "
                                 f"(expected 'reserved' or 'committed')")

    def recover(self) -> list[str]:
        """After a restart: release jobs left reserved, keep committed ones spent; audit both."""
        affected: list[str] = []
        with self._tx() as conn:
            rows = conn.execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE status IN "
                                "('reserved', 'committed') ORDER BY created, job_id").fetchall()
            now = _now()
            for row in rows:
                job = self._row_job(row)
                if job.status == "reserved":
                    conn.execute("UPDATE jobs SET status = 'released', updated = ?, reason = ? "
                                 "WHERE job_id = ?", (now, "node restarted before commit",
                                                      job.job_id))
                    self._append(conn, "recover", {
                        "job_id": job.job_id, "action": "released",
                        "reason": "node restarted before commit: never revealed",
                        "ledger": self._ledger_entry(job, "released")})
                else:
                    self._append(conn, "recover", {
                        "job_id": job.job_id, "action": "kept committed",
                        "reason": "node restarted after commit: may have revealed, budget stays spent",
                        "ledger": self._ledger_entry(job, "committed")})
                affected.append(job.job_id)
        return affected

    # ------------------------------------------------------------------ queries

    def spent(self, dataset: str, budget_epsilon: Fraction | None = None,
              budget_delta: Fraction | None = None) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) spent on ``dataset``: committed, done and failed-after-commit jobs.

        With the budget: the lifetime rule's (epsilon, delta) of their exact totals
        (``_accounting.lifetime_spend``; its epsilon if the rule finds none within the
        budget falls back to the sum). Without: basic composition of the jobs' claimed
        guarantees (the sums of their epsilon and of their delta), sound but looser for
        zCDP jobs.
        """
        with self._lock:
            if budget_epsilon is None or budget_delta is None:
                return self._sums(self._conn, dataset, _CHARGED)
            totals = self._totals(self._conn, dataset, _CHARGED)
            basic = self._sums(self._conn, dataset, _CHARGED)
        rule = lifetime_spend(totals, _to_frac(budget_epsilon, "budget epsilon"),
                              _to_frac(budget_delta, "budget delta"))
        return basic if rule.epsilon is None else (rule.epsilon, rule.delta)

    def reserved(self, dataset: str) -> tuple[Fraction, Fraction]:
        """Sums of the claimed (epsilon, delta) of jobs on ``dataset`` reserved but not committed."""
        with self._lock:
            return self._sums(self._conn, dataset, ("reserved",))

    def totals(self, dataset: str, statuses: tuple[str, ...] = _CHARGED) -> LedgerTotals:
        """Exact totals (pure epsilon E, rho R, tv T, legacy delta D) of ``dataset``'s jobs in ``statuses``."""
        bad = set(statuses) - set(_STATUSES)
        if bad:
            raise ValueError(f"unknown status {sorted(bad)[0]!r}")
        with self._lock:
            return self._totals(self._conn, dataset, tuple(statuses))

    def remaining(self, dataset: str, budget_eps: Fraction, budget_delta: Fraction
                  ) -> tuple[Fraction, Fraction]:
        """(epsilon, delta) still available on ``dataset`` under the lifetime rule (never negative).

        Over committed and reserved jobs: epsilon = budget - the rule's spent epsilon (0 if
        over); delta = the delta not used up by sampler TV (and legacy) terms, which is what
        the zCDP conversion still has (``LifetimeSpend.remaining_delta``).
        """
        use = self.usage(dataset, budget_eps, budget_delta)
        return use.held.remaining_epsilon, use.held.remaining_delta

    def usage(self, dataset: str, budget_epsilon: Fraction | PrivacyBudget,
              budget_delta: Fraction | None = None, agreement: str | None = None) -> "BudgetUsage":
        """Everything about ``dataset``'s budget (or, given ``agreement`` and its budget, that
        agreement's sub-budget): exact totals and the lifetime rule's figures.

        The budget is a :class:`PrivacyBudget` (``usage(name, policy.budget)``) or its epsilon
        and delta."""
        if isinstance(budget_epsilon, PrivacyBudget):
            budget_epsilon, budget_delta = budget_epsilon.epsilon, budget_epsilon.delta
        b_eps = _to_frac(budget_epsilon, "budget epsilon")
        b_dlt = _to_frac(budget_delta, "budget delta")
        with self._lock:
            spent = self._totals(self._conn, dataset, _CHARGED, agreement)
            reserved = self._totals(self._conn, dataset, ("reserved",), agreement)
        return BudgetUsage(dataset, spent, reserved, lifetime_spend(spent, b_eps, b_dlt),
                           lifetime_spend(spent + reserved, b_eps, b_dlt))

    def datasets(self) -> list[str]:
        """Every dataset that has a ledger entry, sorted."""
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT DISTINCT dataset FROM jobs ORDER BY dataset")]

    def jobs(self, status: str | None = None) -> list[Job]:
        """Every job in the ledger (optionally only those with ``status``), oldest first."""
        if status is not None and status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, got {status!r}")
        sql = f"SELECT {self._JOB_COLS} FROM jobs"
        args: tuple = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY created, job_id", args).fetchall()
        return [self._row_job(r) for r in rows]

    def job(self, job_id: str) -> Job | None:
        """The ledger entry of ``job_id``, or None if this node never reserved it."""
        with self._lock:
            return self._get(self._conn, job_id)

    # ------------------------------------------------------------------ replay protection

    def seen_nonce(self, job_id: str) -> bool:
        """Whether this job id was already used (as a submission nonce or a reserved job)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT 1 FROM nonces WHERE nonce = ? UNION ALL "
                "SELECT 1 FROM jobs WHERE job_id = ? LIMIT 1", (job_id, job_id)).fetchone()
        return row is not None

    def use_nonce(self, job_id: str, *, analyst: str) -> None:
        """Atomically record a submission's job id as used; ReplayError if it was seen before."""
        with self._tx() as conn:
            row = conn.execute("SELECT analyst FROM nonces WHERE nonce = ?", (job_id,)).fetchone()
            if row is not None or self._get(conn, job_id) is not None:
                raise ReplayError(f"job id {job_id!r} was already submitted to this node "
                                  f"(replayed submission from {analyst!r})")
            conn.execute("INSERT INTO nonces (nonce, analyst, seen_at) VALUES (?, ?, ?)",
                         (job_id, analyst, _now()))

    # ------------------------------------------------------------------ audit

    def audit(self, event: str, **fields: Any) -> int:
        """Append a non-ledger audit record (submission, refusal, start, reveal, failure); returns its seq."""
        if event not in AUDIT_EVENTS:
            raise ValueError(f"unknown audit event {event!r}; expected one of "
                             f"{', '.join(sorted(AUDIT_EVENTS))}")
        if event in LEDGER_EVENTS:
            raise ValueError(f"audit event {event!r} changes the ledger: use NodeState.{event}() "
                             f"(or recover()/mark_done()) instead")
        if "ledger" in fields:
            raise ValueError("audit field 'ledger' is reserved for ledger records")
        with self._tx() as conn:
            return self._append(conn, event, fields)

    def audit_records(self) -> Iterator[dict[str, Any]]:
        """Every audit record in order, with fields decoded (for display and export)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, ts, event, fields, prev_hash, hash FROM audit ORDER BY seq").fetchall()
        for seq, ts, event, fj, prev, h in rows:
            yield {"seq": seq, "timestamp": ts, "event": event, "fields": json.loads(fj),
                   "prev_hash": prev, "hash": h}

    def audit_head(self) -> tuple[int, str]:
        """(record count, head hash): publish or store it elsewhere to anchor the chain."""
        with self._lock:
            count, h = self._conn.execute(
                "SELECT count, hash FROM audit_head WHERE id = 1").fetchone()
        return int(count), str(h)

    def verify_audit(self) -> tuple[bool, str]:
        """Walk the hash chain and the head, then check the ledger against the chain's ledger records."""
        with self._lock:
            # one read transaction, so a concurrent writer cannot produce a torn view
            self._conn.execute("BEGIN")
            try:
                rows = self._conn.execute("SELECT seq, ts, event, fields, prev_hash, hash "
                                          "FROM audit ORDER BY seq").fetchall()
                head = self._conn.execute(
                    "SELECT count, hash FROM audit_head WHERE id = 1").fetchone()
                job_rows = self._conn.execute(
                    f"SELECT {self._JOB_COLS} FROM jobs").fetchall()
            finally:
                self._conn.execute("COMMIT")
        ok, msg = _verify_chain(rows, head)
        if not ok:
            return ok, msg
        bad = _verify_ledger(rows, [self._row_job(r) for r in job_rows])
        if bad:
            return False, bad
        return True, f"{len(rows)} records ok"


# --------------------------------------------------------------------------- verification

def _verify_chain(rows: list[tuple], head: tuple | None) -> tuple[bool, str]:
    """Check sequence, hashes and links of the audit rows, then the stored head."""
    last_seq = max((r[0] for r in rows), default=0)
    prev = GENESIS_HASH
    expected = 1
    for seq, ts, event, fj, prev_hash, h in rows:
        if seq != expected:
            if seq > expected:
                return False, (f"record {expected}: missing (deleted; next record is {seq})")
            return False, f"record {seq}: out of sequence"  # pragma: no cover - PK is unique
        if record_hash(seq, prev_hash, ts, event, fj) != h:
            # a record moved to another position still hashes correctly at its true position
            # (searched only once, at the first bad record)
            for true_seq in range(1, last_seq + 1):
                if true_seq != seq and record_hash(true_seq, prev_hash, ts, event, fj) == h:
                    return False, (f"record {seq}: out of order (it is record {true_seq} moved; "
                                   f"records reordered)")
            return False, f"record {seq}: hash mismatch (edited)"
        if prev_hash != prev:
            return False, (f"record {seq}: previous-hash link broken "
                           f"(a record before it was deleted, replaced or reordered)")
        prev = h
        expected += 1
    n = len(rows)
    if head is None:
        return False, "audit head missing (state file tampered)"
    h_count, h_hash = head
    if h_count > n:
        return False, (f"record {n + 1}: missing (tail truncated: the head says "
                       f"{h_count} records, found {n})")
    if h_count < n or h_hash != prev:
        return False, (f"record {n}: does not match the audit head (head says "
                       f"{h_count} records; head or tail tampered)")
    return True, f"{n} records ok"


def _verify_ledger(rows: list[tuple], jobs: list[Job]) -> str | None:
    """Replay the ledger records of the chain and compare with the jobs table; a message or None."""
    replay: dict[str, tuple] = {}
    for seq, _ts, event, fj, _p, _h in rows:
        fields = json.loads(fj)
        led = fields.get("ledger")
        if not led:
            continue
        jid = fields.get("job_id")
        try:  # records written before schema 2 carry no rho and no tv: a legacy charge
            rho = led.get("rho")
            entry = (led["dataset"], Fraction(led["epsilon"]), Fraction(led["delta"]),
                     None if rho is None else Fraction(rho), Fraction(led.get("tv", "0")),
                     led.get("agreement"), led["status"], seq)
        except (KeyError, ValueError, TypeError, ZeroDivisionError):
            return f"record {seq}: malformed ledger entry"
        if event == "reserve":
            if jid in replay:
                return f"record {seq}: job {jid!r} reserved twice"
        elif jid not in replay:
            return f"record {seq}: {event} of job {jid!r} that was never reserved"
        else:
            before = replay[jid]
            if before[:6] != entry[:6]:
                return f"record {seq}: job {jid!r} changed its dataset or charge"
        replay[jid] = entry
    table = {j.job_id: j for j in jobs}
    for jid in sorted(set(replay) | set(table)):
        if jid not in table:
            return f"ledger: job {jid!r} is in the audit log (record {replay[jid][-1]}) but missing from the ledger"
        j = table[jid]
        if jid not in replay:
            return f"ledger: job {jid!r} ({j.status}) has no reserve record in the audit log"
        ds, eps, dlt, rho, tv, agreement, status, seq = replay[jid]
        if j.agreement != agreement:
            return (f"ledger: job {jid!r} is under agreement {j.agreement!r}, the audit log "
                    f"(record {seq}) says {agreement!r}")
        if (j.dataset, j.epsilon, j.delta, j.rho, j.tv) != (ds, eps, dlt, rho, tv):
            return (f"ledger: job {jid!r} has dataset/epsilon/delta/rho/tv {j.dataset!r}/"
                    f"{_fmt(j.epsilon)}/{_fmt(j.delta)}/{_fmt_opt(j.rho)}/{_fmt(j.tv)}, the audit "
                    f"log (record {seq}) says {ds!r}/{_fmt(eps)}/{_fmt(dlt)}/{_fmt_opt(rho)}/"
                    f"{_fmt(tv)}")
        if j.status != status:
            return (f"ledger: job {jid!r} is {j.status!r} but the audit log (record {seq}) "
                    f"says {status!r}")
    return None
