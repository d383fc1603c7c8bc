"""The node's analyst API as an ASGI app (FastAPI): routes, answers, the OpenAPI document.

Routes are one table, :data:`ROUTES` (method, path, handler, response model, status,
summary, extra error answers); :func:`create_app` registers them in order. Handlers are
plain functions run in the server's worker threads (never in its event loop), so signature
checks, SQLite writes and the planning of a large spec never stall other requests. Every
answer is JSON; every refusal is ``{"error": <one line>, "kind": <error class>}``
(:class:`jointstats.node.models.Error`), whatever went wrong: nothing a client sends gets
a 5xx or a traceback.

Size, time and connection limits, and the reading of the request body, are the server's
(``jointstats.node.server``); a handler finds the body, already read and bounded, in
``request.state.body``.
"""
from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

from fastapi import Depends, FastAPI, Header, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jointstats.node.errors import ApiError, api_error
from jointstats.node.models import (JOB_ID_PATTERN, Cancel, Error, Health, Job, PolicyView, Result,
                           Submission)
from jointstats.errors import JointStatsError
from jointstats.plan.spec import shorten

if TYPE_CHECKING:
    from jointstats.node.service import Node

__all__ = ["ROUTES", "Route", "create_app", "NodeJSON"]

_DESCRIPTION = ("One party's node of a jointstats consortium. Analysts submit signed protocol "
                "specs to every node; the nodes agree on the order of jobs, run them as secure "
                "multi-party computations and return only the revealed (differentially "
                "private, or consented exact) results. Every route but /health answers only a "
                "listed analyst: its headers X-Jointstats-Analyst, X-Jointstats-Timestamp and "
                "X-Jointstats-Signature carry a fresh Ed25519 signature made as for a "
                "submission over the text 'GET <path>' (a result: 'result:<job_id>').")


class NodeJSON(JSONResponse):
    """JSON answers as the node has always sent them (indented, never cached)."""

    def __init__(self, content: Any, status_code: int = 200, headers=None, **kw):
        super().__init__(content, status_code, {"Cache-Control": "no-store", **(headers or {})},
                         **kw)

    def render(self, content: Any) -> bytes:
        return json.dumps(content, indent=1).encode()


def _refusal(exc: ApiError) -> NodeJSON:
    return NodeJSON(exc.payload(), exc.status)


# ----------------------------------------------------------------------------- handlers

def _body(request: Request) -> Any:
    """The request's JSON body (read and size-checked by the server)."""
    raw = getattr(request.state, "body", b"")
    try:
        return json.loads(raw or b"null")
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError:  # not JSON, not UTF-8, or an integer of more than 4300 digits
        raise ApiError(400, "request body is not valid JSON") from None


def _signed_read(x_jointstats_analyst: Annotated[Optional[str], Header()] = None,
                 x_jointstats_timestamp: Annotated[Optional[str], Header()] = None,
                 x_jointstats_signature: Annotated[Optional[str], Header()] = None) -> dict:
    """The headers of a signed read (checked by the node: 401 when missing or wrong)."""
    return {"X-Jointstats-Analyst": x_jointstats_analyst,
            "X-Jointstats-Timestamp": x_jointstats_timestamp,
            "X-Jointstats-Signature": x_jointstats_signature}


SignedRead = Annotated[dict, Depends(_signed_read)]
#: A job id in a path: documented with its pattern, checked by the node (404 otherwise).
JobId = Annotated[str, Path(json_schema_extra={"pattern": JOB_ID_PATTERN})]


def _node(request: Request) -> "Node":
    return request.app.state.node


def health(request: Request) -> dict:
    return _node(request).health()


def policy(request: Request, signed: SignedRead) -> dict:
    node = _node(request)
    node._authenticate(signed, "GET /policy", "GET /policy")
    return node.policy()


def openapi_document(request: Request, signed: SignedRead) -> NodeJSON:
    _node(request)._authenticate(signed, "GET /openapi.json", "GET /openapi.json")
    return NodeJSON(request.app.openapi())


def submit(request: Request) -> dict:
    return _node(request).submit(_body(request))


def job_status(request: Request, job_id: JobId, signed: SignedRead) -> dict:
    return _node(request).job_status(job_id, signed)


def job_result(request: Request, job_id: JobId, signed: SignedRead) -> NodeJSON:
    # sent as stored (not through the model): the result is exactly what the worker revealed
    return NodeJSON(_node(request).job_result(job_id, signed))


def cancel(request: Request, job_id: JobId) -> dict:
    return _node(request).cancel(job_id, _body(request))


# governance routes (jointstats.node.governance: the caller's role is checked there, refusals audited)

def catalog(request: Request, signed: SignedRead) -> dict:
    from jointstats.node.governance import catalog as _catalog
    return _catalog(_node(request), signed)


def list_jobs(request: Request, signed: SignedRead) -> dict:
    from jointstats.node.governance import list_jobs as _list
    return _list(_node(request), signed)


def audit_log(request: Request, signed: SignedRead) -> dict:
    from jointstats.node.governance import audit_log as _audit
    return _audit(_node(request), signed, request.url.query)


def reload_policy(request: Request, signed: SignedRead) -> dict:
    from jointstats.node.governance import reload_policy as _reload
    return _reload(_node(request), signed)


def attestation(request: Request, job_id: JobId, signed: SignedRead) -> dict:
    from jointstats.node.governance import attestation as _attestation
    return _attestation(_node(request), job_id, signed)


def approve(request: Request, job_id: JobId) -> dict:
    from jointstats.node.governance import decide
    return decide(_node(request), job_id, _body(request), True)


def reject(request: Request, job_id: JobId) -> dict:
    from jointstats.node.governance import decide
    return decide(_node(request), job_id, _body(request), False)


# ----------------------------------------------------------------------------- routes

@dataclass(frozen=True)
class Route:
    """One row of the route table."""

    method: str
    path: str
    handler: Callable[..., Any]
    model: type | None
    summary: str
    status: int = 200
    body: type | None = None  # the request body's model (the node reads the body through it)
    errors: dict[int, str] = field(default_factory=dict)
    description: str | None = None
    validate: bool = True  # False: the answer is sent as the handler made it (model: docs)


_SIGNED = {401: "no, stale or bad signature, or an analyst not listed"}
_JOB = {**_SIGNED, 403: "another analyst's job", 404: "no such job"}
_ROLE = {**_SIGNED, 403: "the caller's role may not use this route"}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", health, Health,
          "Liveness, party name and index, consortium, queue length (the only public route)"),
    Route("GET", "/policy", policy, PolicyView,
          "Public policy and spent/reserved/remaining privacy budget per dataset", errors=_SIGNED),
    Route("GET", "/openapi.json", openapi_document, None, "This description (OpenAPI 3)",
          errors=_SIGNED),
    Route("POST", "/jobs", submit, Job, "Submit a job (send the same body to every node)",
          status=202, body=Submission,
          errors={400: "malformed submission or spec", **_SIGNED,
                  403: "refused by the node's policy or remaining budget",
                  409: "job id used before", 411: "a Transfer-Encoding instead of a Content-Length",
                  413: "body larger than the limit"},
          description="The signature is Ed25519 over jointstats.consortium.keys.submission_message(spec, "
                      "job_id, timestamp, analyst): the bytes 'jointstats-submission-v1\\n' "
                      "followed by the compact sorted JSON of {analyst, job_id, spec_sha256, "
                      "timestamp}."),
    Route("GET", "/jobs/{job_id}", job_status, Job, "Status of a job (its analyst only)",
          errors=_JOB),
    Route("GET", "/jobs/{job_id}/result", job_result, Result,
          "The revealed result of a finished job (its analyst only; signed over "
          "'result:<job_id>')", errors={**_JOB, 409: "not finished, or failed"},
          validate=False),
    Route("POST", "/jobs/{job_id}/cancel", cancel, Job,
          "Withdraw a queued job (its analyst only; signed over 'cancel:<job_id>')",
          body=Cancel, errors={400: "malformed body", **_JOB, 409: "the job is not queued"}),
    # governance (docs/governance.md); the role each needs is checked by the node
    Route("GET", "/catalog", catalog, None,
          "Datasets and columns the caller's agreements cover (analyst, officer)", errors=_ROLE),
    Route("GET", "/jobs", list_jobs, None,
          "Jobs: an analyst's own, every job for an officer", errors=_ROLE),
    Route("GET", "/audit", audit_log, None,
          "The audit log (1000 records after ?after=SEQ), its head and verdict (officer)",
          errors=_ROLE),
    Route("POST", "/policy/reload", reload_policy, None,
          "Re-read the node's config (revocations) without a restart (officer)", errors=_ROLE),
    Route("GET", "/jobs/{job_id}/attestation", attestation, None,
          "This party's signed attestation of a release (the job's analyst, officer)",
          errors={**_ROLE, 404: "no such job", 409: "no signed release"}),
    Route("POST", "/jobs/{job_id}/approve", approve, None,
          "Approve a job waiting for approval (officer; signed decision in the body)",
          errors={400: "malformed body", **_ROLE, 404: "no such job", 409: "not waiting"}),
    Route("POST", "/jobs/{job_id}/reject", reject, None,
          "Reject a job waiting for approval, with a reason (officer; signed decision)",
          errors={400: "malformed body", **_ROLE, 404: "no such job", 409: "not waiting"}),
)

#: Answers any route may give (the server's limits).
_SERVER_ERRORS = {400: "malformed HTTP request", 408: "request not sent in time",
                  503: "too many connections or requests at once (from this client address); "
                       "try again"}


def _register(app: FastAPI, route: Route) -> None:
    responses: dict[int | str, dict] = {
        code: {"model": Error, "description": text}
        for code, text in {**_SERVER_ERRORS, **route.errors}.items()}
    extra = None
    if route.body is not None:
        extra = {"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}}}}
    if route.model is not None and not route.validate:
        responses[route.status] = {"model": route.model, "description": route.summary}
    app.add_api_route(route.path, route.handler, methods=[route.method],
                      response_model=route.model if route.validate else None,
                      status_code=route.status, summary=route.summary,
                      description=route.description, responses=responses, openapi_extra=extra,
                      name=route.handler.__name__)


def _document(app: FastAPI) -> dict:
    """The OpenAPI document, generated from the routes and models; cached."""
    if app.openapi_schema is None:
        from jointstats import __version__
        node = app.state.node
        doc = get_openapi(title="jointstats party node", version=__version__,
                          description=_DESCRIPTION + (f" This node is party "
                                                      f"{node.config.party!r}." if node else ""),
                          routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for route in ROUTES:
            if route.body is not None:
                schemas[route.body.__name__] = route.body.model_json_schema(
                    ref_template="#/components/schemas/{model}")
        # header and path values are checked by the node (401, 404), never answered with 422
        for item in doc.get("paths", {}).values():
            for op in item.values():
                op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(node: "Node | None") -> FastAPI:
    """The API of ``node`` (None: only for its OpenAPI document)."""
    from jointstats import __version__
    app = FastAPI(title="jointstats party node", version=__version__, openapi_url=None,
                  docs_url=None, redoc_url=None, redirect_slashes=False,
                  default_response_class=NodeJSON)
    app.state.node = node
    for route in ROUTES:
        _register(app, route)
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> NodeJSON:
        return _refusal(exc)

    @app.exception_handler(JointStatsError)
    async def _domain(request: Request, exc: JointStatsError) -> NodeJSON:
        return _refusal(api_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request: Request, exc: StarletteHTTPException) -> NodeJSON:
        if exc.status_code in (404, 405):
            return _refusal(ApiError(exc.status_code, f"no such endpoint: {request.method} "
                                     f"{shorten(request.url.path, 80)}", "NotFound"))
        return _refusal(ApiError(exc.status_code, str(exc.detail), "HTTPError"))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> NodeJSON:
        where = ".".join(str(p) for p in (exc.errors() or [{}])[0].get("loc", ()))
        return _refusal(ApiError(400, f"malformed request: {where or 'request'}", "SpecError"))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> NodeJSON:
        if node is not None:
            node._log("API bug: " + "".join(traceback.format_exception(exc)).strip())
        return _refusal(ApiError(500, f"internal error: {type(exc).__name__}", "InternalError"))

    return app
