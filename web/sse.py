"""Server-sent events: one job's stream, the caller's feed, and the tokens that open them.

Every stream follows the SSE contract in DESIGN.md: subscribe first (the hub confirms the
SUBSCRIBE), then read the hash, then forward only newer versions, so nothing is missed,
repeated or reordered. Problems (404, 401, 403, 503) are answered before a stream starts.

The streams are Litestar :class:`~litestar.response.Stream` responses over async generators
of pre-encoded bytes rather than :class:`~litestar.response.ServerSentEvent`. That class
can express every line we send, but it re-encodes each event per client (through a
``StringIO``, splitting the data into lines) and runs a thread-pool hop on every new
stream; here a job's JSON is encoded once per state by :meth:`EventHub.json` for all its
clients, which is what 1,000 clients on one job need. The 204 for a finished job is a
plain response.

``GET /events`` sends no ``id:`` lines: event ids are per-job versions, which mean nothing
across jobs, and a reconnect resumes with a fresh snapshot instead (each event carries
the job's ``version``, so a client keeps the newer of what it has and what it gets).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response import Stream
from redis.exceptions import RedisError

from broker.errors import JobNotFound
from broker.events import EventHub, EventsUnavailable, FeedClosed, HubStats, JobFeed, OwnerFeed, Resync
from broker.models import Job
from broker.settings import Settings
from broker.store import JobStore
from web.auth import EXCLUDE_KEY, User
from web.openapi import problem_responses
from web.problems import ProblemError, problem
from web.stream_tokens import (
    OWNER_SCOPE,
    STREAM_COOKIE,
    STREAM_OPT,
    StreamGrant,
    StreamTokens,
    job_scope,
)

EVENT_STREAM = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
FEED_SNAPSHOT_SIZE = 50
"""How many of the owner's newest jobs ``GET /events`` sends on connect and on resync."""

F = TypeVar("F", JobFeed, OwnerFeed)

LastEventId = Annotated[
    str | None,
    HeaderParameter(name="Last-Event-ID", description="the last version received (EventSource sends it)"),
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
    """The process's SSE side: opens feeds on the one hub, encodes frames, counts streams.

    :meth:`drain` (on SIGTERM) stops the hub, which ends every feed, so every stream and
    long poll returns and the server can finish its graceful shutdown.
    """

    def __init__(self, hub: EventHub, settings: Settings) -> None:
        self.hub = hub
        self._keepalive = settings.sse_keepalive_seconds
        self._retry = f"retry: {settings.sse_retry_ms}\n\n".encode()
        self._open = {"job": 0, "owner": 0}
        self._stopping: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def drain(self) -> None:
        """End every stream now (idempotent, synchronous: called from a signal hook)."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self.hub.stop())

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

    # -- opening ---------------------------------------------------------------------------

    async def job_stream(self, job_id: str, owner: str | None, last_event_id: int | None) -> Response[Any]:
        """Subscribe, read the job, then stream it; 404 if it is not ``owner``'s, 204 if done."""
        feed = await _opened(self.hub.open_job(job_id))
        try:
            job = await feed.snapshot(owner)
        except BaseException:
            feed.close()
            raise
        if job is None:
            feed.close()
            raise JobNotFound(job_id)
        first: Job | None = job  # sent unless the client has exactly this version already
        if last_event_id == job.version:
            if job.terminal:
                feed.close()
                return Response(None, status_code=204, headers={"Cache-Control": "no-cache"})
            first = None
        return self._stream(self._job_frames(feed, first))

    async def owner_stream(self, owner: str) -> Response[Any]:
        """Subscribe to the owner's channel, read the newest jobs, then stream their changes."""
        feed = await _opened(self.hub.open_owner(owner))
        try:
            jobs = await feed.snapshot(FEED_SNAPSHOT_SIZE)
        except BaseException:
            feed.close()
            raise
        return self._stream(self._owner_frames(feed, jobs))

    @staticmethod
    def _stream(frames: AsyncGenerator[bytes, None]) -> Response[Any]:
        """The streaming response; its background task closes the generator (and so the feed)
        even when the client left while a frame was being sent."""

        async def close() -> None:
            await frames.aclose()

        return Stream(frames, media_type=EVENT_STREAM, headers=SSE_HEADERS, background=BackgroundTask(close))

    # -- frames ----------------------------------------------------------------------------

    def frame(self, job: Job, *, with_id: bool = True) -> bytes:
        """One ``event: job`` (the JSON is encoded once per state, whoever receives it)."""
        head = b"id: %d\nevent: job\ndata: " % job.version if with_id else b"event: job\ndata: "
        return head + self.hub.json(job) + b"\n\n"

    async def _job_frames(self, feed: JobFeed, first: Job | None) -> AsyncGenerator[bytes, None]:
        self._open["job"] += 1
        try:
            yield self._retry + (self.frame(first) if first is not None else b"")
            if first is not None and first.terminal:
                return
            while True:
                try:
                    job = await feed.next(self._keepalive)
                except FeedClosed:
                    return
                if job is None:
                    yield KEEPALIVE
                    continue
                yield self.frame(job)
                if job.terminal:
                    return
        finally:
            self._open["job"] -= 1
            feed.close()

    async def _owner_frames(self, feed: OwnerFeed, jobs: list[Job]) -> AsyncGenerator[bytes, None]:
        self._open["owner"] += 1
        try:
            yield self._retry + self._snapshot_frames(jobs)
            while True:
                try:
                    item = await feed.next(self._keepalive)
                except FeedClosed:
                    return
                if item is None:
                    yield KEEPALIVE
                elif isinstance(item, Resync):
                    try:
                        jobs = await feed.snapshot(FEED_SNAPSHOT_SIZE)
                    except (RedisError, OSError):
                        return  # Redis went away again: the client reconnects and starts afresh
                    if jobs:
                        yield self._snapshot_frames(jobs)
                else:
                    yield self.frame(item, with_id=False)
        finally:
            self._open["owner"] -= 1
            feed.close()

    def _snapshot_frames(self, jobs: list[Job]) -> bytes:
        """Oldest first, so a client that appends shows the newest last."""
        return b"".join(self.frame(job, with_id=False) for job in reversed(jobs))


async def _opened(opening: Awaitable[F]) -> F:
    """A feed, or a 503 when the hub cannot subscribe (Redis away, or the server stopping)."""
    try:
        return await opening
    except (EventsUnavailable, FeedClosed) as err:
        detail = "live events are unavailable right now; retry, or poll GET /jobs/{id}"
        raise ProblemError(problem(503, "events-unavailable", detail), {"Retry-After": "1"}) from err


async def wait_for_newer(hub: EventHub, job: Job, seconds: float, owner: str | None) -> Job:
    """Long polling: the job once it moves past ``job.version``, else ``job`` after ``seconds``.

    When the hub cannot follow the job (Redis away, the server stopping) it answers at once
    with ``job``: the caller replies 304 and the client simply asks again.
    """
    try:
        newer = await hub.wait_for_change(job.id, job.version, seconds, owner=owner)
    except (EventsUnavailable, FeedClosed):
        return job
    return newer or job


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
    **problem_responses(400, 401, 403, 404, 503),
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
    return await streams.job_stream(job_id, caller.scope, parse_last_event_id(last_event_id))


@get(
    "/events",
    name="owner_events",
    opt={STREAM_OPT: "owner"},
    media_type=EVENT_STREAM,
    tags=["events"],
    responses=problem_responses(401, 403, 503),
    summary="Follow all my jobs (SSE)",
)
async def owner_events(streams: Streams, caller: Caller, token: QueryToken = None) -> Response[Any]:
    """The caller's newest jobs, then every change of any of the caller's jobs (no ``id:``
    lines: a reconnect gets a fresh snapshot); the snapshot is sent again after a resync."""
    return await streams.owner_stream(caller.id)


@post(
    "/jobs/{job_id:str}/stream-token",
    status_code=201,
    tags=["events"],
    responses=problem_responses(401, 404),
    summary="A token that opens this job's event stream",
)
async def job_stream_token(
    request: Request[User, Any, Any],
    job_id: FromPath[str],
    store: Store,
    stream_tokens: Tokens,
    caller: Caller,
) -> Response[StreamGrant]:
    """A short-lived token for ``GET /jobs/{id}/events?token=`` and the URL that uses it."""
    await store.get(job_id, caller.scope)  # 404 unless the caller may see the job
    token, expires = stream_tokens.mint(caller.id, admin=caller.admin, scope=job_scope(job_id))
    url = request.app.route_reverse("job_events", job_id=job_id) + "?token=" + token
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
    feed = request.app.route_reverse("owner_events")
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


@get("/events/stats", opt={EXCLUDE_KEY: True}, tags=["ops"], summary="SSE and event hub counters")
async def event_stats(streams: Streams) -> StreamStats:
    """Open streams and the hub's counters (connected, channels, listeners, events, reconnects)."""
    return streams.stats()


ROUTES = [job_events, owner_events, job_stream_token, owner_stream_token, event_stats]
