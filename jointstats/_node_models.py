"""The node API's request and response bodies as pydantic models.

They generate the OpenAPI document the node serves (``GET /openapi.json``): nothing of it is
written by hand. Responses of the status, health and policy routes are validated against
them as they are sent; request bodies are checked by the node itself
(``jointstats.node.Node.submit``), field by field in a fixed order, because every refusal is
audited with the job id and analyst it names and answered with one line naming the field.
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ._node_jobs import JOB_ID_RE, STATUSES

__all__ = ["Submission", "Cancel", "Job", "Health", "PolicyView", "Result", "Error",
           "JOB_ID_PATTERN"]

#: The job id pattern, anchored, as the OpenAPI document states it.
JOB_ID_PATTERN = f"^{JOB_ID_RE.pattern}$"

_Status = Literal[STATUSES]  # type: ignore[valid-type]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Submission(_Model):
    """A signed job submission (send the same body to every node)."""

    spec: str = Field(description="protocol spec YAML text (at most 512 KiB)")
    job_id: str = Field(pattern=JOB_ID_PATTERN, description="unique per analyst and node, "
                        "matched in full")
    timestamp: int = Field(description="seconds since the epoch; at most 300 s off the node's clock")
    analyst: str = Field(max_length=64, description="a name in the node's policy.analysts")
    signature: str = Field(description="base64 Ed25519 signature over jointstats.keys."
                           "submission_message(spec, job_id, timestamp, analyst)")


class Cancel(_Model):
    """A signed withdrawal of a queued job, by its analyst."""

    analyst: str
    timestamp: int = Field(description="seconds since the epoch")
    signature: str = Field(description="as for a submission, over spec text 'cancel:<job_id>'")


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
