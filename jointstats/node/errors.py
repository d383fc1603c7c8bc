"""The node API's error answers: :class:`ApiError` (an HTTP status, a one-line message and
the error's class name) and the one mapping of domain errors (jointstats.errors) to statuses.

Nothing here classifies an error by its message text: the class decides the status.
"""
from __future__ import annotations

from typing import Any

from jointstats.errors import AuthError, BudgetError, ConfigError, JointStatsError, PolicyError, SpecError
from jointstats.plan.spec import clip_error, shorten

__all__ = ["ApiError", "api_error", "safe_text", "is_utf8", "MAX_ANSWER_ERROR"]

#: Characters of an error message in an answer (one line; values elided).
MAX_ANSWER_ERROR = 300


class ApiError(Exception):
    """An HTTP error answer: status, one-line message and the error class name."""

    def __init__(self, status: int, message: str, kind: str = "JointStatsError"):
        super().__init__(message)
        self.status = status
        self.kind = kind

    def payload(self) -> dict:
        """The answer's body: ``{"error": <one line>, "kind": <class>}``."""
        return {"error": safe_text(clip_error(str(self)), MAX_ANSWER_ERROR), "kind": self.kind}


def api_error(exc: JointStatsError) -> ApiError:
    """The answer for a domain error, by its class."""
    from jointstats.ledger.state import ReplayError
    if isinstance(exc, ReplayError):
        return ApiError(409, str(exc), "ReplayError")
    if isinstance(exc, AuthError):
        return ApiError(401, str(exc), "AuthError")
    if isinstance(exc, BudgetError):
        return ApiError(403, str(exc), "BudgetError")
    if isinstance(exc, PolicyError):
        return ApiError(403, str(exc), "PolicyError")
    if isinstance(exc, (SpecError, ConfigError)):
        return ApiError(400 if isinstance(exc, SpecError) else 403, str(exc), type(exc).__name__)
    return ApiError(400, str(exc), type(exc).__name__)


def is_utf8(text: str) -> bool:
    """False for strings UTF-8 cannot encode (lone surrogates, which JSON escapes can make)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def safe_text(value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` characters that UTF-8 (and so SQLite and
    the log) can take."""
    text = value if isinstance(value, str) else shorten(value, limit)
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
