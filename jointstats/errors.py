"""One exception tree for jointstats.

Messages name the field, the party and what was expected versus found; they never
contain a row value.
"""
from __future__ import annotations


class JointStatsError(Exception):
    """Root of every error raised by jointstats."""


class SpecError(JointStatsError, ValueError):
    """A protocol spec is malformed; the message starts with the field path."""


class ConfigError(JointStatsError, ValueError):
    """A party configuration is malformed or inconsistent with the others."""


class DataError(JointStatsError, ValueError):
    """A party's data does not fit the spec's schema (names column and row count only)."""


class PolicyError(JointStatsError, PermissionError):
    """A party's policy refuses the job."""


class BudgetError(PolicyError):
    """The job would exceed a party's privacy budget."""


class AuthError(JointStatsError, PermissionError):
    """An analyst or a peer failed authentication or authorisation."""


class PartyError(JointStatsError, RuntimeError):
    """A party failed, refused or died during a job; the message names it."""


class PlanMismatchError(JointStatsError, RuntimeError):
    """The parties do not hold the same plan (their plan hashes differ)."""
