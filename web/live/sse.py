"""Server-sent events: the routes of one job's stream, the caller's feed, and the tokens that
open them, and :class:`EventStreams`, which opens streams on the process's one event hub.

How a stream is written is in :mod:`web.live.streams`. Problems (404, 401, 403, 429, 503)
are answered before a stream starts. The 204 for a finished job is a plain response.

Each owner may hold at most ``max_streams_per_owner`` open streams and waiting long polls
on one process (:class:`~web.live.owner_slots.OwnerSlots`); past it a new one is answered
429 with ``Retry-After``.

``GET /events`` sends no ``id:`` lines: event ids are per-job versions, which mean nothing
across jobs, and a reconnect resumes with a fresh snapshot instead (each event carries
the job's ``version``, so a client keeps the newer of what it has and what it gets).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter

from broker.errors import JobNotFound
from broker.models import Job, job_encoder
from broker.settings import Settings
from broker.store import JobStore
from hub.event_hub import EventHub, EventsUnavailable, FeedClosed, HubStats, JobFeed, OwnerFeed
from web.auth import METRICS_OPT, User, operator_guard
from web.live.owner_slots import OwnerSlots
from web.live.stream_tokens import (
    OWNER_SCOPE,
    STREAM_COOKIE,
    STREAM_OPT,
    StreamGrant,
    StreamTokens,
    job_scope,
)
from web.live.streams import (
    EVENT_STREAM,
    FEED_SNAPSHOT_SIZE,
    EventStream,
    JobStream,
    OwnerStream,
    Stream,
    StreamKind,
)
from web.openapi import problem_responses
from web.problems import REDIS_RETRY_AFTER_SECONDS, ProblemError, problem
from web.tracebacks import JobView

F = TypeVar("F", JobFeed, OwnerFeed)


LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID", max_length=20, description="the last version received (EventSource sends it)"
    ),
]
QueryToken = Annotated[
    str | None,
    QueryParameter(
        name="token", description="a stream token from POST .../stream-token (never a bearer token)"
    ),
]


class StreamStats(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /events/stats``: open SSE streams of this process, and its hub's counters."""

    job_streams: int
    owner_streams: int
    draining: bool
    hub: HubStats


class EventStreams:
    """The process's SSE side: opens feeds on the one hub, encodes frames, keeps streams alive.

    One task ticks every half keepalive interval and nudges each stream that wrote nothing
    since the previous tick, which then sends ``: keepalive``: a quiet stream hears from
    the server every ``sse_keepalive_seconds``, without a timer per stream and per wait.
    :meth:`drain` (on SIGTERM) stops the hub, which ends every feed, so every stream and
    long poll returns and the server can finish its graceful shutdown.
    """

    def __init__(self, hub: EventHub, settings: Settings) -> None:
        self.hub = hub
        self.settings = settings
        self._keepalive = settings.sse_keepalive_seconds
        self.retry = f"retry: {settings.sse_retry_ms}\n\n".encode()
        self.slots = OwnerSlots(settings.max_streams_per_owner)
        self._open: dict[StreamKind, int] = {"job": 0, "owner": 0}
        self._streams: set[Stream] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def drain(self) -> None:
        """End every stream now (idempotent, synchronous: called from a signal hook)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.hub.stop())
            if self._ticker is not None:
                self._ticker.cancel()

    async def close(self) -> None:
        """Drain, and wait until the hub has stopped (the lifespan's shutdown)."""
        self.drain()
        assert self._stopping is not None
        await self._stopping

    def stats(self) -> StreamStats:
        """Counters for metrics."""
        return StreamStats(
            job_streams=self._open["job"],
            owner_streams=self._open["owner"],
            draining=self._stopping is not None,
            hub=self.hub.stats(),
        )

    def opened(self, stream: Stream) -> None:
        """Count ``stream`` and keep it alive (the first one starts the keepalive tick)."""
        self._open[stream.kind] += 1
        self._streams.add(stream)
        if self._ticker is None and self._stopping is None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(), name="jobstream-sse-keepalive"
            )

    def closed(self, stream: Stream) -> None:
        """``stream`` ended (or never started): stop counting it, give back its owner's slot."""
        if stream in self._streams:
            self._streams.discard(stream)
            self._open[stream.kind] -= 1
        if stream.holder is not None:
            self.slots.give_back(stream.holder)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive / 2)
            for stream in self._streams:
                if stream.sent:
                    stream.sent = False
                else:
                    stream.nudge()

    # -- opening ---------------------------------------------------------------------------

    async def job_stream(self, job_id: str, caller: User, last_event_id: int | None) -> Response[Any]:
        """Subscribe, read the job, then stream it; 404 if the caller may not see it, 204 if
        done, 429 if the caller holds too many streams already."""
        holder = caller.id
        self.slots.take(holder)
        try:
            feed = await _opened(self.hub.open_job(job_id))
        except BaseException:
            self.slots.give_back(holder)
            raise
        try:
            job = await feed.snapshot(caller.scope)
            if job is None:
                raise JobNotFound(job_id)
        except BaseException:
            feed.close()
            self.slots.give_back(holder)
            raise
        first: Job | None = job  # sent unless the client has exactly this version already
        if last_event_id == job.version:
            if job.terminal:
                feed.close()
                self.slots.give_back(holder)
                return Response(None, status_code=204, headers={"Cache-Control": "no-cache"})
            first = None
        return EventStream(JobStream(self, feed, first, holder, JobView.of(caller, self.settings)))

    async def owner_stream(self, caller: User) -> Response[Any]:
        """Follow the caller's jobs (an admin's: every owner's), read the newest, then stream
        their changes (429 if the caller holds too many streams already)."""
        holder = caller.id
        owner = None if caller.admin else caller.id
        self.slots.take(holder)
        try:
            feed = await _opened(self.hub.open_owner(owner))
        except BaseException:
            self.slots.give_back(holder)
            raise
        try:
            jobs = await feed.snapshot(FEED_SNAPSHOT_SIZE)
        except BaseException:
            feed.close()
            self.slots.give_back(holder)
            raise
        return EventStream(OwnerStream(self, feed, jobs, holder, JobView.of(caller, self.settings)))

    async def wait_for_newer(self, job: Job, seconds: float, caller: User) -> Job:
        """Long polling: the job once it moves past ``job.version``, else ``job`` after ``seconds``.

        A waiting long poll holds one of the caller's stream slots (429 past the cap). When
        the hub cannot follow the job (Redis away, the server stopping) it answers at once
        with ``job``: the caller replies 304 and the client asks again after ``Retry-After``.
        """
        self.slots.take(caller.id)
        try:
            newer = await self.hub.wait_for_change(job.id, job.version, seconds, owner=caller.scope)
        except (EventsUnavailable, FeedClosed):
            return job
        finally:
            self.slots.give_back(caller.id)
        return newer or job

    # -- frames ----------------------------------------------------------------------------

    def frame(self, job: Job, *, view: JobView, with_id: bool = True) -> bytes:
        """One ``event: job`` (the JSON is encoded once per state and view, whoever receives it).

        When ``view`` hides tracebacks, a state carrying an error is encoded for this client
        alone: the hub's cache holds whole states, and states without their worker.
        """
        head = b"id: %d\nevent: job\ndata: " % job.version if with_id else b"event: job\ndata: "
        if view.hide_tracebacks and job.error is not None:
            body = job_encoder.encode(view.apply(job))
        else:
            body = self.hub.json(job, hide_worker=view.hide_worker)
        return head + body + b"\n\n"

    def snapshot_frames(self, jobs: list[Job], *, view: JobView) -> bytes:
        """Oldest first, so a client that appends shows the newest last."""
        return b"".join(self.frame(job, with_id=False, view=view) for job in reversed(jobs))


async def _opened(opening: Awaitable[F]) -> F:
    """A feed, or a 503 when the hub cannot subscribe (Redis away, or the server stopping)."""
    try:
        return await opening
    except (EventsUnavailable, FeedClosed) as err:
        detail = "live events are unavailable right now; retry, or poll GET /jobs/{id}"
        retry_after = {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)}
        raise ProblemError(problem(503, "events-unavailable", detail), retry_after) from err


def parse_last_event_id(value: str | None) -> int | None:
    """``Last-Event-ID`` as a version; anything that is not one counts as absent."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


# -- routes ---------------------------------------------------------------------------------

Streams = NamedDependency[EventStreams]
Caller = NamedDependency[User]
Tokens = NamedDependency[StreamTokens]
Store = NamedDependency[JobStore]

_SSE_RESPONSES = {
    204: ResponseSpec(None, description="the stream already ended (Last-Event-ID is the terminal version)"),
    **problem_responses(400, 401, 403, 404, 429, 503),
}


@get(
    "/jobs/{job_id:str}/events",
    name="job_events",
    opt={STREAM_OPT: "job"},
    media_type=EVENT_STREAM,
    tags=["events"],
    responses=_SSE_RESPONSES,
    summary="Follow a job (SSE)",
)
async def job_events(
    job_id: FromPath[str],
    streams: Streams,
    caller: Caller,
    last_event_id: LastEventId = None,
    token: QueryToken = None,
) -> Response[Any]:
    """The job now, then every newer state, ``event: job`` with ``id:`` = version; ends after
    the terminal state. Auth: bearer header, ``?token=`` (stream token), or the stream cookie."""
    return await streams.job_stream(job_id, caller, parse_last_event_id(last_event_id))


@get(
    "/events",
    name="owner_events",
    opt={STREAM_OPT: "owner"},
    media_type=EVENT_STREAM,
    tags=["events"],
    responses=problem_responses(401, 403, 429, 503),
    summary="Follow all my jobs (SSE)",
)
async def owner_events(streams: Streams, caller: Caller, token: QueryToken = None) -> Response[Any]:
    """The caller's newest jobs, then every change of any of the caller's jobs (no ``id:``
    lines: a reconnect gets a fresh snapshot); the snapshot is sent again after a resync."""
    return await streams.owner_stream(caller)


@post(
    "/jobs/{job_id:str}/stream-token",
    status_code=201,
    tags=["events"],
    responses=problem_responses(401, 404, 503),
    summary="A token that opens this job's event stream",
)
async def job_stream_token(
    request: Request[User, Any, Any],
    job_id: FromPath[str],
    store: Store,
    stream_tokens: Tokens,
    caller: Caller,
) -> Response[StreamGrant]:
    """A short-lived token for ``GET /jobs/{id}/events?token=`` and the URL that uses it.

    A service (not an admin) asks for the owner's browser: the token is the owner's, as the
    one ``POST /jobs`` answers a service with.
    """
    job = await store.get(job_id, caller.scope)  # 404 unless the caller may see the job
    holder = job.owner if caller.service and not caller.admin else caller.id
    admin = caller.admin and holder == caller.id
    token, expires = stream_tokens.mint(holder, admin=admin, scope=job_scope(job_id))
    root = request.scope.get("root_path", "")  # the prefix of a mount (FastAPI, Starlette)
    url = root + request.app.route_reverse("job_events", job_id=job_id) + "?token=" + token
    return Response(StreamGrant(token, expires, url), headers={"Cache-Control": "no-store"})


@post(
    "/events/stream-token",
    status_code=201,
    tags=["events"],
    responses=problem_responses(401),
    summary="A token (and cookie) that opens my event streams",
)
async def owner_stream_token(
    request: Request[User, Any, Any], stream_tokens: Tokens, caller: Caller
) -> Response[StreamGrant]:
    """A short-lived ``owner`` token: it opens ``GET /events`` and any of the caller's job
    streams. Also set as an HttpOnly, SameSite=Strict cookie, so a same-origin EventSource
    needs no token in its URL; call again before ``expires_at`` to keep the cookie fresh."""
    token, expires = stream_tokens.mint(caller.id, admin=caller.admin, scope=OWNER_SCOPE)
    feed = request.scope.get("root_path", "") + request.app.route_reverse("owner_events")
    cookie = Cookie(
        key=STREAM_COOKIE,
        value=token,
        path=feed.removesuffix("/events") or "/",
        max_age=int(stream_tokens.ttl.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return Response(
        StreamGrant(token, expires, f"{feed}?token={token}"),
        headers={"Cache-Control": "no-store"},
        cookies=[cookie],
    )


@get(
    "/events/stats",
    opt={METRICS_OPT: True},
    guards=[operator_guard],
    tags=["ops"],
    responses=problem_responses(401, 403),
    summary="SSE and event hub counters",
)
async def event_stats(streams: Streams) -> StreamStats:
    """Open streams and the hub's counters (connected, channels, listeners, events, reconnects)."""
    return streams.stats()


ROUTES = [job_events, owner_events, job_stream_token, owner_stream_token, event_stats]
