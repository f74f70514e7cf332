"""Every error answer is ``application/problem+json`` (RFC 9457): the shape and its handlers.

Handlers cover Litestar's own HTTP errors (404 route, 405, 413, 401, its parameter
validation), jobstream's domain errors, Redis being unreachable (503 with ``Retry-After``,
see :data:`REDIS_UNAVAILABLE`), and anything unexpected (a logged 500 that shows no
internals). Routes raise :class:`ProblemError` for answers they shape themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import msgspec
import redis.exceptions as redis_errors
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.handlers import HTTPRouteHandler
from litestar.types import ExceptionHandlersMap

from broker.api import MalformedInput
from broker.connection import closed_transport
from broker.errors import (
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    JobstreamError,
    NotReplicated,
    QuotaExceeded,
    UnknownTask,
)
from broker.models import Job, JobError, JobStatus
from broker.validation import InvalidCallback, InvalidInput, InvalidOption, InvalidSchedule

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:jobstream:problem:"

logger = logging.getLogger("jobstream.web")


class FieldProblem(msgspec.Struct, omit_defaults=True):
    """One invalid field: where (a JSON path into the body, or a parameter name) and why."""

    message: str
    field: str | None = None
    source: str | None = None


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """An RFC 9457 problem; ``errors``, ``job_status`` and ``error`` are extension members."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldProblem] | None = None
    job_status: JobStatus | None = None
    error: JobError | None = None


class ProblemError(HTTPException):
    """Raised by routes to answer with a specific problem (and optional headers)."""

    def __init__(self, problem: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail=problem.detail or problem.title, status_code=problem.status)
        self.problem = problem
        self.response_headers = dict(headers or {})


def problem(status: int, slug: str | None = None, detail: str | None = None, **extra: Any) -> Problem:
    """A problem with the standard title for ``status``; ``slug`` names a jobstream type."""
    return Problem(
        type=TYPE_PREFIX + slug if slug else "about:blank",
        title=HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        **extra,
    )


def invalid_input(err: msgspec.ValidationError, under: str = "") -> ProblemError:
    """422 for a body that is JSON but not the expected shape, naming the bad field.

    msgspec says ``Expected `float`, got `str` - at `$.seconds```; ``under`` re-roots the
    path in the request body (``$.input.seconds``) when the input was validated alone.
    """
    message, _, path = str(err).partition(" - at `")
    field = "$" + under + path.rstrip("`").removeprefix("$") if path else "$" + under
    detail = f"{message} - at `{field}`" if field != "$" else message
    errors = [FieldProblem(message=message, field=field, source="body")]
    return ProblemError(problem(422, "invalid-input", detail, errors=errors))


def malformed_json(err: Exception | str) -> ProblemError:
    """400 for a body that is not JSON (or not UTF-8)."""
    return ProblemError(problem(400, "malformed-json", f"the body is not valid JSON: {err}"))


def invalid_schedule(message: str, field: str = "$") -> ProblemError:
    """422 for a ``delay_seconds``/``run_at`` that is not allowed, naming the field."""
    errors = [FieldProblem(message=message, field=field, source="body")]
    return ProblemError(problem(422, "invalid-schedule", message, errors=errors))


_BODY_FIELDS = {"delay": "$.delay_seconds", "run_at": "$.run_at"}
"""``Jobstream.submit``'s parameter names, as the ``POST /jobs`` body's JSON paths."""


def creation_refused(exc: InvalidInput | InvalidSchedule | InvalidOption | MalformedInput) -> ProblemError:
    """The answer of ``POST /jobs`` when ``Jobstream`` refuses the job before writing it.

    The input is validated alone, so msgspec's path is re-rooted under ``$.input``.
    """
    if isinstance(exc, InvalidInput):
        return invalid_input(exc.error, under=".input")
    if isinstance(exc, InvalidSchedule):
        return invalid_schedule(str(exc), _BODY_FIELDS.get(exc.field, exc.field))
    if isinstance(exc, InvalidOption):
        errors = [FieldProblem(message=str(exc), field=exc.field, source="body")]
        return ProblemError(problem(422, "invalid-option", str(exc), errors=errors))
    return malformed_json(exc)


def respond(
    request: Request[Any, Any, Any], body: Problem, headers: Mapping[str, str] | None = None
) -> Response[Problem]:
    """The problem as a response, with ``instance`` set to the request path."""
    if body.instance is None:
        body = msgspec.structs.replace(body, instance=request.url.path)
    return Response(body, status_code=body.status, media_type=PROBLEM_JSON, headers=dict(headers or {}))


def _field_problems(extra: object) -> list[FieldProblem] | None:
    """Litestar's validation details (``[{message, key, source}]``) as field problems."""
    if not isinstance(extra, list):
        return None
    return [
        FieldProblem(message=str(item.get("message")), field=item.get("key"), source=item.get("source"))
        for item in extra
        if isinstance(item, dict)
    ] or None


def _http_problem(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    if isinstance(exc, ProblemError):
        return respond(request, exc.problem, exc.response_headers)
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers.setdefault("WWW-Authenticate", "Bearer")
    generic = exc.detail == HTTPStatus(exc.status_code).phrase
    detail = _too_large_detail(request) if exc.status_code == 413 else None if generic else exc.detail
    body = problem(exc.status_code, detail=detail, errors=_field_problems(exc.extra))
    return respond(request, body, headers)


def _too_large_detail(request: Request[Any, Any, Any]) -> str:
    handler = request.scope.get("route_handler")
    limit = handler.resolve_request_max_body_size() if isinstance(handler, HTTPRouteHandler) else None
    return f"the request body is larger than {limit} bytes" if limit else "the request body is too large"


QUOTA_RETRY_AFTER_SECONDS = "5"
"""``Retry-After`` of a 429 over the active-job quota: jobs free their places as they end,
at no time anyone can promise, so a client is asked to come back after a few seconds."""

_DOMAIN: dict[type[JobstreamError], tuple[int, str]] = {
    JobNotFound: (404, "job-not-found"),
    UnknownTask: (404, "unknown-task"),
    IllegalTransition: (409, "illegal-transition"),
    QuotaExceeded: (429, "quota-exceeded"),
    IdempotencyConflict: (422, "idempotency-key-reused"),
    InvalidCallback: (422, "invalid-callback-url"),
    NotReplicated: (503, "not-replicated"),
}


def _creation_problem(
    request: Request[Any, Any, Any], exc: InvalidInput | InvalidSchedule | InvalidOption | MalformedInput
) -> Response[Problem]:
    return _http_problem(request, creation_refused(exc))


def _domain_problem(request: Request[Any, Any, Any], exc: JobstreamError) -> Response[Problem]:
    status, slug = next(
        (found for kind, found in _DOMAIN.items() if isinstance(exc, kind)), (500, "internal-error")
    )
    if status == 500:
        return _internal_problem(request, exc)
    job_status = JobStatus(exc.status) if isinstance(exc, IllegalTransition) else None
    headers = _RETRY_AFTER.get(type(exc))
    return respond(request, problem(status, slug, _domain_detail(exc), job_status=job_status), headers)


def _domain_detail(exc: JobstreamError) -> str:
    if isinstance(exc, JobNotFound):
        return "no such job (it may have expired)"
    if isinstance(exc, UnknownTask):
        return f"no task type named {exc.args[0]!r}; GET /tasks lists them"
    if isinstance(exc, IdempotencyConflict):
        return (
            f"this Idempotency-Key already created job {exc.args[0]} with another type or input; "
            "use a new key for a different request"
        )
    if isinstance(exc, QuotaExceeded):
        return "too many active jobs for this owner; wait for some to finish"
    if isinstance(exc, NotReplicated):
        return (
            f"the job was not confirmed durable: {exc}. It may exist or not; send the same request "
            "again with the same Idempotency-Key, which returns the job once replicas confirm it "
            "or creates it if it was lost"
        )
    return str(exc)


REDIS_RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of a 503 while Redis is away: outages are short, and a refused retry is cheap."""

_RETRY_AFTER: dict[type[JobstreamError], dict[str, str]] = {
    QuotaExceeded: {"Retry-After": QUOTA_RETRY_AFTER_SECONDS},
    NotReplicated: {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)},  # a replica back, or a failover done
}


def _internal_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return respond(request, problem(500, "internal-error", "an unexpected error occurred"))


REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,  # refused, reset, closed; LOADING (BusyLoadingError); pool exhausted
    redis_errors.TimeoutError,  # connect or read timeout
    redis_errors.ReadOnlyError,  # a failed-over primary that is now a replica
    redis_errors.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN
    redis_errors.TryAgainError,  # a cluster slot migrating
    ConnectionError,  # socket errors redis-py did not wrap
    TimeoutError,  # a deadline of our own around Redis calls (asyncio.timeout)
)
"""What Redis (or the way to it) being unavailable raises: answered 503, never 500.

Every Redis call a route makes that cannot be retried safely surfaces here (the pool
already retried connection errors on a fresh connection, see ``web.resources``)."""


def _runtime_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """A connection to Redis that died under uvloop (503), or a bug (500)."""
    if closed_transport(exc):
        return _redis_unavailable(request, exc)
    return _internal_problem(request, exc)


def _redis_unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    logger.warning(  # no traceback: the cause is outside this process, and an outage repeats it
        "Redis unavailable on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc
    )
    detail = "the job store (Redis) is unavailable right now; retry after a moment"
    headers = {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)}
    return respond(request, problem(503, "redis-unavailable", detail), headers)


def job_ended(job: Job) -> ProblemError:
    """409 for the result of a job that ended without one (FAILURE or CANCELLED)."""
    detail = job.error.message if job.error else f"the job ended {job.status}"
    return ProblemError(
        problem(409, "job-" + job.status.lower(), detail, job_status=job.status, error=job.error)
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_problem,
    JobstreamError: _domain_problem,
    **dict.fromkeys((InvalidInput, InvalidSchedule, InvalidOption, MalformedInput), _creation_problem),
    **dict.fromkeys(REDIS_UNAVAILABLE, _redis_unavailable),
    RuntimeError: _runtime_error,
    Exception: _internal_problem,
}
"""The app's exception handlers: every error answer becomes a problem document."""
