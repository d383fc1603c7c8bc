"""The node API's request and response bodies as pydantic models.

They generate the OpenAPI document the node serves (``GET /openapi.json``): nothing of it is
written by hand. Request bodies are read through them (:meth:`Submission.from_body`,
:meth:`Cancel.from_body`: strict types, the job id pattern, lengths, valid Unicode), and a
refusal is one line naming the field, in a fixed order of checks; responses of the status,
health and policy routes are validated against them as they are sent.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jointstats.node.errors import ApiError, is_utf8
from jointstats.node.jobs import JOB_ID_RE, STATUSES
from jointstats.plan.spec import shorten

__all__ = ["Submission", "Cancel", "Job", "Health", "PolicyView", "Result", "Error",
           "JOB_ID_PATTERN"]

#: The job id pattern, anchored, as the OpenAPI document states it.
JOB_ID_PATTERN = f"^{JOB_ID_RE.pattern}$"

_Status = Literal[STATUSES]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


def _text(value: Any) -> Any:
    """A string field's value, refused when UTF-8 cannot encode it (JSON escapes can make lone
    surrogates, which SQLite, the log and the signature check cannot take)."""
    if isinstance(value, str) and not is_utf8(value):
        raise ValueError("not valid Unicode text")
    return value


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    """The fields of each kind of error pydantic found (missing, type, value, pattern, length)."""
    kinds: dict[str, list[str]] = {}
    for err in exc.errors():
        t = err["type"]
        kind = ("missing" if t == "missing" else "value" if t == "value_error" else
                "pattern" if t == "string_pattern_mismatch" else
                "length" if t == "string_too_long" else "type")
        kinds.setdefault(kind, []).append(str(err["loc"][0]) if err["loc"] else "?")
    return kinds


class Submission(_Model):
    """A signed job submission (send the same body to every node)."""

    model_config = ConfigDict(frozen=True, strict=True)
    spec: str = Field(description="protocol spec YAML text (at most 512 KiB)")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="unique per analyst and node, "
                        "matched in full")
    timestamp: int = Field(description="seconds since the epoch; at most 300 s off the node's clock")
    analyst: str = Field(max_length=64, description="a name in the node's policy.analysts")
    signature: str = Field(description="base64 Ed25519 signature over jointstats.consortium.keys."
                           "submission_message(spec, job_id, timestamp, analyst)")

    _utf8 = field_validator("spec", "job_id", "analyst", "signature", mode="before")(_text)

    @classmethod
    def from_body(cls, body: Any) -> "Submission":
        """The submission in a request body; ApiError 400 naming the first problem, checked in
        this order: a JSON object, fields missing, types, Unicode, job id, analyst length."""
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            kinds = _errors(exc)
        if "missing" in kinds:
            raise ApiError(400, f"submission lacks {', '.join(kinds['missing'])}") from None
        if "type" in kinds:
            raise ApiError(400, "submission fields: spec, job_id, analyst and signature must be "
                                "strings, timestamp an integer (seconds since the epoch)") from None
        if "value" in kinds:
            raise ApiError(400, f"submission field {kinds['value'][0]} is not valid Unicode "
                                f"text") from None
        if "pattern" in kinds:
            raise ApiError(400, f"job id {shorten(body['job_id'])} must be 1-128 letters, "
                                f"digits, '_', '.', '-'") from None
        raise ApiError(400, "analyst: longer than the limit of 64 characters", "AuthError") from None


class Cancel(_Model):
    """A signed withdrawal of a queued job, by its analyst."""

    model_config = ConfigDict(frozen=True, strict=True)
    analyst: str
    timestamp: int = Field(description="seconds since the epoch")
    signature: str = Field(description="as for a submission, over spec text 'cancel:<job_id>'")

    _utf8 = field_validator("analyst", "signature", mode="before")(_text)

    @classmethod
    def from_body(cls, body: Any) -> "Cancel":
        """The cancellation in a request body; ApiError 400 otherwise."""
        try:
            return cls.model_validate(body)
        except ValidationError:
            raise ApiError(400, "cancel body must be {analyst, timestamp, signature}") from None


class Job(_Model):
    """A job's status as one node sees it; never a data value or count."""

    job_id: str
    party: str
    status: _Status
    analyst: str
    protocol: str
    dataset: str
    mode: Literal["exact", "dp"]
    epsilon: Optional[float]
    spec_sha256: str
    timestamp: int
    received: str = Field(description="ISO 8601 UTC time")
    started: Optional[str] = None
    finished: Optional[str] = None
    order: Optional[int] = Field(None, description="position among the jobs this node has run")
    progress: Optional[str] = Field(None, description="the worker's latest progress line")
    error: Optional[str] = Field(None, description="one line naming the party; never a data "
                                 "value or count")
    error_kind: Optional[str] = Field(None, description="the error's class (PartyError, "
                                      "DataError, ...)")
    agreement: Optional[str] = Field(None, description="the data-use agreement the job was "
                                     "admitted under (docs/governance.md)")
    approval_reasons: list[str] = Field(default_factory=list, description="why the job waits "
                                        "for a compliance officer's approval")
    decisions: list[dict[str, Any]] = Field(default_factory=list, description="officers' "
                                            "approvals and rejections")


class Health(_Model):
    """Liveness (the one public route)."""

    ok: bool
    party: str
    index: int
    parties: list[str]
    version: str
    mpc_tls: bool
    queued: int
    running: Optional[str]
    up_since: str


class PolicyView(_Model):
    """The party's public policy and privacy budget per dataset (never its data sources)."""

    party: str
    parties: list[str]
    policy: dict[str, Any]
    datasets: dict[str, dict[str, Any]]


class Result(_Model):
    """The revealed result of a finished job (docs/reference.md section 4)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    protocol: str
    job_id: str
    spec_sha256: str
    parties: list[str]
    privacy: Optional[dict[str, Any]]
    results: dict[str, Any]


class Error(_Model):
    """Every refusal and failure: one line, at most 300 characters, and the error's class."""

    error: str
    kind: str
