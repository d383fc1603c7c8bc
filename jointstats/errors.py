"""One exception tree for jointstats.

Messages name the field, the party and what was expected versus found; they never
contain a row value. Code that must tell errors apart does so by class (or by a
``PartyError``'s ``cause``), never by message text.

Every class has an ``exit_code``, the command line's exit status for it
(docs/reference.md section 3): 2 for input that does not validate (a spec, a party
config: usage errors, as argparse's own), 3 for refusals (a party's policy or budget, an
authentication or replay check), 1 for failures (data, parties, plans, audit logs).
"""
from __future__ import annotations

#: Exit status of the command line for each outcome.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


class JointStatsError(Exception):
    """Root of every error raised by jointstats."""

    exit_code = EXIT_FAILURE


class SpecError(JointStatsError, ValueError):
    """A protocol spec is malformed; the message starts with the field path."""

    exit_code = EXIT_USAGE


class ConfigError(JointStatsError, ValueError):
    """A party configuration is malformed or inconsistent with the others."""

    exit_code = EXIT_USAGE


class DataError(JointStatsError, ValueError):
    """A party's data does not fit the spec's schema (names column and row count only)."""


class PolicyError(JointStatsError, PermissionError):
    """A party's policy refuses the job."""

    exit_code = EXIT_REFUSED


class BudgetError(PolicyError):
    """The job would exceed a party's privacy budget."""


class AuthError(JointStatsError, PermissionError):
    """An analyst or a peer failed authentication or authorisation."""

    exit_code = EXIT_REFUSED


class StaleRequestError(AuthError):
    """A signed submission's timestamp is too old or too far in the future."""


class ReplayError(AuthError):
    """A job id (nonce) was submitted or reserved a second time."""


class ApiRefusal(AuthError):
    """A node refused a request to its API for the caller's signature or role (or a signed
    request it cannot read): ``status`` is the HTTP status of the answer (401, 403 or 400)
    and ``kind`` the error class name the answer carries (docs/governance.md, Roles)."""

    def __init__(self, status: int, message: str, kind: str = "AuthError"):
        super().__init__(message)
        self.status = status
        self.kind = kind


class PartyError(JointStatsError, RuntimeError):
    """A party failed, refused or died during a job; the message names it.

    ``cause``: the class name of the error where it arose (at the party that refused or
    failed first), when known, e.g. ``"BudgetError"``; the exit code follows it, so a job
    refused by another party's policy exits as a refusal.
    """

    def __init__(self, message: str = "", *, cause: str | None = None):
        super().__init__(message)
        self.cause = cause

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        cls = error_class(self.cause) if self.cause else None
        if cls is None or issubclass(cls, PartyError):
            return EXIT_FAILURE
        return cls.exit_code


class PartyDiedError(PartyError):
    """A party's process ended without reporting a result or an error (a crash, a signal)."""


class PeerLostError(PartyError):
    """Another party disconnected, never connected, or this party was stopped: usually the
    consequence of another party's failure, which is the better reason to report."""


class PeerUnreachableError(PeerLostError):
    """This party could not connect to another party's MPC address in time."""


class PartyTimeoutError(PartyError):
    """A step of the job waited longer than its timeout for other parties."""


class PeerTlsError(PartyError):
    """A TLS handshake with another party failed (certificates, CA): not cured by waiting."""


class PlanMismatchError(JointStatsError, RuntimeError):
    """The parties do not hold the same plan (their plan hashes differ)."""


class CodecError(JointStatsError, ValueError):
    """Bytes received from a peer are not the message the receiving step expects."""


class LinkageError(CodecError):
    """A message of a linked job's record linkage is not what the protocol expects (a point
    of small order, say: never from a hashed key, only from a deviating peer)."""


class SingularError(JointStatsError, ArithmeticError):
    """A regression's normal equations are singular (collinear terms or too few rows)."""


class StateError(JointStatsError, RuntimeError):
    """A ledger transition is not allowed from the job's current status (or the job is unknown)."""


class AuditError(JointStatsError):
    """An audit log failed verification; the message names the first bad record."""


class ReportError(JointStatsError):
    """A release report or result failed verification (a signature, a pinned key, a byte
    changed); the message names what and whose."""


def error_class(name: str | None) -> type[JointStatsError] | None:
    """The class of this tree called ``name`` (as sent between processes), or None."""
    cls = globals().get(name or "")
    return cls if isinstance(cls, type) and issubclass(cls, JointStatsError) else None


def exit_code_of(exc: BaseException) -> int:
    """The command line's exit status for ``exc``: its ``exit_code`` (1 for anything else)."""
    return getattr(exc, "exit_code", EXIT_FAILURE) if isinstance(exc, JointStatsError) else EXIT_FAILURE
