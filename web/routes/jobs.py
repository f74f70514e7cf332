"""``/jobs``: create, read, list, fetch the result of, and cancel jobs.

Every route is a call into the app's one ``Jobstream`` (the public Python API), so a rule
of creating, reading or cancelling a job lives there alone. Another owner's job is a 404 on
every route (the caller's scope is the ``owner``); an admin's scope is everyone's.
``GET /jobs/{id}?wait=S`` long-polls on the event hub.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, HeaderParameter, QueryParameter

from broker.models import Job, JobStatus
from broker.settings import Settings
from broker.validation import LABEL_FILTER_PATTERN
from web.answers import JsonAnswer, json_answers
from web.auth import User
from web.live.stream_tokens import CreatedJob, StreamTokens, job_scope
from web.openapi import CreateJobOperation, problem_responses
from web.problems import ProblemError, job_ended, problem
from web.resources import JobRoutesContext
from web.routes.creation import decode_body
from web.schemas import JobPage, JobResult
from web.tracebacks import shown_to

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Same owner + same key returns the first job (200) instead of creating another; "
        "422 if the body asks for another type or input.",
    ),
]
IfNoneMatch = Annotated[str | None, HeaderParameter(name="If-None-Match", description="a previous ETag")]
WaitSeconds = Annotated[
    float | None,
    QueryParameter(
        ge=0,
        description="with If-None-Match: answer as soon as the job changes, or 304 after this many "
        "seconds (capped by the server)",
    ),
]
LabelFilter = Annotated[
    list[Annotated[str, msgspec.Meta(pattern=LABEL_FILTER_PATTERN)]] | None,
    QueryParameter(
        description="key:value; only jobs with this label (repeat it: jobs with every one of them)",
        schema_extra={"items": {"type": "string", "pattern": LABEL_FILTER_PATTERN}},
    ),
]
Jobs = NamedDependency[JobRoutesContext]
UserRequest = Request[User, Any, Any]
log = logging.getLogger("jobstream.web")


def job_headers(job: Job, settings: Settings) -> dict[str, str]:
    """ETag, no-cache, and a ``Retry-After`` polling hint while the job is still active."""
    headers = {"ETag": job.etag, "Cache-Control": "no-cache"}
    if not job.terminal:
        headers["Retry-After"] = str(settings.poll_retry_after_seconds)
    return headers


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC 9110 asks)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


def creation_body(job: Job, tokens: StreamTokens | None, caller: User) -> CreatedJob:
    """What ``POST /jobs`` answers: the job, and a ``stream_token`` that opens its event stream
    (none without ``tokens``: in no-auth mode a stream needs no token).

    The token is the job owner's: a service that created the job for a user hands it to
    that user's browser, and it opens that job's stream and nothing of the service's.
    """
    if tokens is None:
        token = None
    elif job.owner == caller.id:
        token = tokens.mint(caller.id, admin=caller.admin, scope=job_scope(job.id))[0]
    else:
        token = tokens.mint(job.owner, admin=False, scope=job_scope(job.id))[0]
    return CreatedJob(**msgspec.structs.asdict(job), stream_token=token)


def creation_owner(caller: User, owner: str | None) -> str:
    """Whose job ``POST /jobs`` creates: the caller's, or (services only) the ``owner`` asked for."""
    if owner is None or owner == caller.id:
        return caller.id
    if caller.service:
        return owner
    raise ProblemError(problem(403, "forbidden", "only a service may create a job for another owner"))


def listing_owner(caller: User, owner: str | None) -> str | None:
    """Whose jobs ``GET /jobs`` lists: the caller's, or (admins and services) the one asked for;
    without ``owner``, an admin's listing is every owner's (None)."""
    if owner is None:
        return None if caller.admin else caller.id
    if owner == caller.id or caller.admin or caller.service:
        return owner
    raise ProblemError(problem(403, "forbidden", "only an admin or a service may list another owner's jobs"))


def fetches(caller: User, job: Job) -> bool:
    """Whether ``caller`` reading ``job`` counts as the fetch of its result (a keep-until-fetched
    task's record then goes after a grace): the owner's read or a service's, never an
    operator's look at someone else's job."""
    return caller.service or job.owner == caller.id


def label_filter(filters: list[str] | None) -> dict[str, str] | None:
    """``?label=case:42&label=team:a`` as ``{"case": "42", "team": "a"}`` (every one must match);
    None when one key is asked with two values, which no job can match."""
    wanted: dict[str, str] = {}
    for item in filters or ():
        key, _, value = item.partition(":")
        if wanted.setdefault(key, value) != value:
            return None
    return wanted


class JobController(Controller):
    """The job routes; each one is a thin call into ``Jobstream``."""

    path = "/jobs"
    tags = ["jobs"]

    @post(
        "/",
        status_code=202,
        operation_class=CreateJobOperation,
        responses={
            **json_answers(
                CreatedJob, {202: "Accepted: the job, queued", 200: "the job this Idempotency-Key created"}
            ),
            **problem_responses(400, 401, 403, 404, 413, 422, 429, 503),
        },
        summary="Create a job",
    )
    async def create_job(
        self, request: UserRequest, jobs: Jobs, idempotency_key: IdempotencyKey = None
    ) -> JsonAnswer:
        """Validate, then queue the job: 202 and ``Location``.

        A replayed ``Idempotency-Key`` (same owner) answers 200 with the job the key first
        created; 422 when the new body asks for another type or input. A service may pass
        ``owner``: the job is that owner's, and records the service in ``created_by``.
        """
        caller = request.user
        body = decode_body(await request.body())
        owner = creation_owner(caller, body.owner)
        submitted = await jobs.jobstream.submit_json(
            body.type,
            bytes(body.input),
            owner=owner,
            idempotency_key=idempotency_key,
            delay=body.delay_seconds,
            run_at=body.run_at,
            timeout=body.timeout,
            labels=body.labels,
            created_by=caller.id,
            callback_url=body.callback_url,
        )
        job = submitted.job
        if submitted.created and owner != caller.id:
            log.info("job %s created for owner %s by service %s", job.id, owner, caller.id)
        headers = job_headers(job, jobs.settings)
        headers["Location"] = request.scope.get("root_path", "") + jobs.job_path + job.id  # mount prefix
        answer = creation_body(shown_to(job, caller, jobs.settings), jobs.creation_tokens, caller)
        return JsonAnswer(answer, headers, 202 if submitted.created else 200)

    @get(
        "/{job_id:str}",
        name="get_job",
        responses={
            **json_answers(Job, {200: "the job"}),
            304: ResponseSpec(None, description="Not Modified"),
            **problem_responses(400, 401, 404, 429, 503),
        },
        summary="Get a job",
    )
    async def get_job(
        self,
        request: UserRequest,
        job_id: FromPath[str],
        jobs: Jobs,
        if_none_match: IfNoneMatch = None,
        wait: WaitSeconds = None,
    ) -> JsonAnswer:
        """The job's current state; 304 when ``If-None-Match`` holds its current ETag.

        With ``wait``, a request whose ETag is current waits (up to ``long_poll_max_seconds``)
        for the next change and answers it at once; 304 if none came; 429 if the caller
        already holds ``max_streams_per_owner`` streams and long polls.
        """
        settings, caller = jobs.settings, request.user
        job = await jobs.jobstream.get(job_id, caller.scope, fetch=False)
        if wait and not job.terminal and etag_matches(if_none_match, job.etag):
            seconds = min(wait, settings.long_poll_max_seconds)
            job = await jobs.streams.wait_for_newer(job, seconds, caller)
        if fetches(caller, job):
            job = await jobs.jobstream.mark_fetched(job)
        headers = job_headers(job, settings)
        if etag_matches(if_none_match, job.etag):
            return JsonAnswer.not_modified(headers)
        return JsonAnswer(shown_to(job, request.user, settings), headers)

    @get("/", responses=problem_responses(400, 401, 403, 503), summary="List jobs")
    async def list_jobs(
        self,
        request: UserRequest,
        jobs: Jobs,
        status: FromQuery[JobStatus | None] = None,
        task_type: Annotated[str | None, QueryParameter(name="type", max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        cursor: Annotated[str | None, QueryParameter(pattern=r"^[0-9]{1,17}\.[0-9a-f-]{36}$")] = None,
        owner: Annotated[
            str | None, QueryParameter(description="another owner's jobs (admins and services only)")
        ] = None,
        label: LabelFilter = None,
    ) -> Response[JobPage]:
        """The caller's jobs, newest first, filtered by ``status``, ``type`` and ``label``; an
        admin's are every owner's unless ``owner`` names one."""
        whose = listing_owner(request.user, owner)
        labels = label_filter(label)
        if labels is None:
            return Response(JobPage([], None), headers={"Cache-Control": "no-cache"})
        page = await jobs.jobstream.list(
            whose, status=status, task=task_type, labels=labels, limit=limit, cursor=cursor
        )
        shown = [shown_to(job, request.user, jobs.settings) for job in page.jobs]
        return Response(JobPage(shown, page.cursor), headers={"Cache-Control": "no-cache"})

    @get(
        "/{job_id:str}/result",
        responses={
            202: ResponseSpec(JobResult, description="Accepted: the job has not ended yet (see Retry-After)"),
            **problem_responses(400, 401, 404, 409, 503),
        },
        summary="Get a job's result",
    )
    async def job_result(
        self, request: UserRequest, job_id: FromPath[str], jobs: Jobs
    ) -> Response[JobResult]:
        """200 with the result on SUCCESS; 202 while active; 409 with the error on FAILURE or CANCELLED."""
        settings, caller = jobs.settings, request.user
        job = await jobs.jobstream.get(job_id, caller.scope, fetch=False)
        if fetches(caller, job):
            job = await jobs.jobstream.mark_fetched(job)
        if job.status is JobStatus.SUCCESS:
            return Response(JobResult(job.id, job.status, job.result), headers={"Cache-Control": "no-cache"})
        if job.terminal:
            raise job_ended(shown_to(job, request.user, settings))
        headers = {"Cache-Control": "no-cache", "Retry-After": str(settings.poll_retry_after_seconds)}
        return Response(JobResult(job.id, job.status, job.result), status_code=202, headers=headers)

    @post(
        "/{job_id:str}/cancel",
        status_code=200,
        responses=problem_responses(400, 401, 404, 409, 503),
        summary="Cancel a job",
    )
    async def cancel_job(self, request: UserRequest, job_id: FromPath[str], jobs: Jobs) -> Response[Job]:
        """CANCELLED at once if PENDING; if PROCESSING, ``cancel_requested`` and its worker stops it."""
        job = await jobs.jobstream.cancel(job_id, request.user.scope)
        return Response(shown_to(job, request.user, jobs.settings), headers=job_headers(job, jobs.settings))
