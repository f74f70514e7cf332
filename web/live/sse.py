"""Server-sent events: one job's stream, the caller's feed, and the tokens that open them.

Every stream follows the SSE contract (docs/ARCHITECTURE.md): subscribe first (the hub confirms the
SUBSCRIBE), then read the hash, then forward only newer versions, so nothing is missed,
repeated or reordered. Problems (404, 401, 403, 429, 503) are answered before a stream starts.

The streams write pre-encoded bytes through :class:`EventStream`, a response of our own,
rather than :class:`~litestar.response.ServerSentEvent` or :class:`~litestar.response.Stream`.
``ServerSentEvent`` can express every line we send, but it re-encodes each event per
client (through a ``StringIO``, splitting the data into lines) and runs a thread-pool hop
on every new stream; here a job's JSON is encoded once per state by :meth:`EventHub.json`
for all its clients. ``Stream`` costs a task group, a second task and an async generator
per connection (see :class:`EventStream`): 10,000 idle clients on one process need less.
The 204 for a finished job is a plain response.

Each owner may hold at most ``max_streams_per_owner`` open streams and waiting long polls
on one process (:class:`OwnerSlots`, a counter per owner: no Redis round trip); past it
a new one is answered 429 with ``Retry-After``.

``GET /events`` sends no ``id:`` lines: event ids are per-job versions, which mean nothing
across jobs, and a reconnect resumes with a fresh snapshot instead (each event carries
the job's ``version``, so a client keeps the newer of what it has and what it gets).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Coroutine, Generator, Iterable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.response.base import ASGIResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send, TypeEncodersMap
from redis.exceptions import RedisError

from broker.errors import JobNotFound
from broker.models import Job
from broker.settings import Settings
from broker.store import JobStore
from hub.event_hub import EventHub, EventsUnavailable, FeedClosed, HubStats, JobFeed, OwnerFeed, Resync
from web.auth import METRICS_OPT, User, operator_guard
from web.live.stream_tokens import (
    OWNER_SCOPE,
    STREAM_COOKIE,
    STREAM_OPT,
    StreamGrant,
    StreamTokens,
    job_scope,
)
from web.openapi import problem_responses
from web.problems import REDIS_RETRY_AFTER_SECONDS, ProblemError, problem

EVENT_STREAM = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
FEED_SNAPSHOT_SIZE = 50
"""How many of the owner's newest jobs ``GET /events`` sends on connect and on resync."""
STREAM_CAP_RETRY_AFTER_SECONDS = 5
"""``Retry-After`` of the 429 over the stream cap: long enough for one of the owner's streams to end."""

F = TypeVar("F", JobFeed, OwnerFeed)
StreamKind = Literal["job", "owner"]
_END: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}


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


class OwnerSlots:
    """How many streams and waiting long polls each owner holds in this process, capped.

    A dict of counters, touched once when a stream or long poll starts and once when it
    ends; an owner at zero is forgotten. ``cap`` 0 counts nothing and refuses nothing.
    """

    __slots__ = ("_held", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._held: dict[str, int] = {}

    def take(self, owner: str) -> None:
        """Count one more for ``owner``; 429 (a :class:`ProblemError`) if it is at the cap."""
        if self.cap:
            held = self._held.get(owner, 0)
            if held >= self.cap:
                detail = f"at most {self.cap} open event streams and long polls per owner; close one first"
                raise ProblemError(
                    problem(429, "too-many-streams", detail),
                    {"Retry-After": str(STREAM_CAP_RETRY_AFTER_SECONDS)},
                )
            self._held[owner] = held + 1

    def give_back(self, owner: str) -> None:
        """One stream or long poll of ``owner`` ended."""
        held = self._held.get(owner)
        if held is None:
            return
        if held > 1:
            self._held[owner] = held - 1
        else:
            del self._held[owner]


class EventStream(Response[None]):
    """A ``text/event-stream`` response whose frames the hub writes as it dispatches them.

    Litestar's :class:`~litestar.response.Stream` pulls from an async generator in an
    anyio task group, with a second task listening for the disconnect: per connection a
    task group, a cancel scope, two tasks, several suspended frames, and per delivery a
    task wake-up through all of them. Here the request's task only waits for the stream
    to end, a bare task waits for ``http.disconnect``, and each new state is written by
    :class:`_Stream` from the hub's dispatch, synchronously while the socket takes it.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: _Stream) -> None:
        super().__init__(None, headers=SSE_HEADERS, media_type=EVENT_STREAM)
        self._stream = stream

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        merged = {**(headers or {}), **self.headers}
        return _ASGIEventStream(self._stream, headers=merged, cookies=[*self.cookies, *(cookies or ())])


class _ASGIEventStream(ASGIResponse):
    __slots__ = ("_stream",)

    _should_set_content_length = False  # chunked: the stream has no length

    def __init__(self, stream: _Stream, headers: dict[str, Any], cookies: Iterable[Cookie]) -> None:
        super().__init__(headers=headers, cookies=cookies, media_type=EVENT_STREAM)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.start_response(send)
        except BaseException:
            self._stream.abandon()  # the client left before the headers went out
            raise
        await self._stream.run(send, receive)


class _Stream(ABC):
    """One open SSE stream, written whenever its feed changes, from the hub's own dispatch.

    A write goes straight through ``send`` while the transport takes it (uvicorn's ``send``
    only suspends when the client reads too slowly); a write that does suspend is finished
    by a task of its own, and until it is, newer states wait in the feed, which keeps the
    newest only. So one slow client never holds up the others, and a delivery costs no
    task wake-up. ``sent`` tells the keepalive tick whether it wrote since the last tick.
    """

    __slots__ = ("_busy", "_done", "_later", "_send", "feed", "holder", "kind", "sent", "streams")

    def __init__(
        self, streams: EventStreams, kind: StreamKind, feed: JobFeed | OwnerFeed, holder: str
    ) -> None:
        self.streams = streams
        self.kind = kind
        self.feed = feed
        self.holder: str | None = holder  # whose stream-cap slot this holds; None once given back
        self.sent = False
        self._busy = True  # until the opening frames are out
        self._send: Send | None = None
        self._done: asyncio.Future[None] | None = None
        self._later: asyncio.Task[None] | None = None

    async def run(self, send: Send, receive: Receive) -> None:
        """Stream until the last frame, the client leaving, or the hub stopping; then close the feed."""
        self._send = send
        self._done = asyncio.get_running_loop().create_future()
        self.streams._attach(self)
        left = asyncio.ensure_future(_until_disconnect(receive, self.feed))
        try:
            if await self.opening(send):
                self._busy = False
                self.feed.on_change(self._pump)
                self._pump()
                await self._done
            self._busy = True  # nothing more but the end
            await send(_END)
        finally:
            self.feed.on_change(None)
            left.cancel()
            if self._later is not None:
                self._later.cancel()
            self.streams._detach(self)
            self.abandon()

    def abandon(self) -> None:
        """Close the feed and give back the owner's slot (idempotent)."""
        self.feed.close()
        holder, self.holder = self.holder, None
        if holder is not None:
            self.streams.slots.give_back(holder)

    @abstractmethod
    async def opening(self, send: Send) -> bool:
        """Send the first frames; False if the stream is already over."""

    @abstractmethod
    def frame_of(self, item: Job | Resync) -> bytes | None:
        """The bytes for one item taken from the feed (None: handled otherwise)."""

    def keepalive(self) -> None:
        """The tick found this stream quiet: send a comment, unless a write is under way."""
        if not self._busy:
            self._write(KEEPALIVE)

    def _pump(self) -> None:
        """Write what the feed holds while the transport takes it; end the stream once it is done."""
        while not self._busy and self._done is not None and not self._done.done():
            item = self.feed.take()
            if item is None:
                if self.feed.done:
                    self._done.set_result(None)
                return
            data = self.frame_of(item)
            if data is not None:
                self._write(data)

    def _write(self, data: bytes) -> None:
        assert self._send is not None
        self.sent = True
        steps = self._send(_body(data)).__await__()
        try:
            waits_on = steps.send(None)
        except StopIteration:
            return
        except Exception as exc:  # handed to the request's task, which raises it
            self._fail(exc)
            return
        self._in_background(_finish(steps, waits_on))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in a task of its own; meanwhile newer states wait in the feed."""
        self._busy = True
        self._later = asyncio.ensure_future(work)
        self._later.add_done_callback(self._resume)

    def _resume(self, task: asyncio.Task[None]) -> None:
        self._later = None
        if task.cancelled() or self._done is None or self._done.done():
            return
        self._busy = False
        exc = task.exception()
        if exc is not None:
            self._fail(exc)
        else:
            self._pump()

    def _fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)


async def _finish(steps: Generator[Any, Any, None], waits_on: Any) -> None:
    """Run a ``send`` that suspended (on a future, or a bare yield) to its end in this task."""
    while True:
        try:
            if waits_on is None:
                await asyncio.sleep(0)
            else:
                waits_on._asyncio_future_blocking = False  # as a task would: it is ours to await now
                await waits_on
        except BaseException as exc:  # cancelled, or the awaited future failed: the send decides
            try:
                waits_on = steps.throw(exc)
            except StopIteration:
                return
            continue
        try:
            waits_on = steps.send(None)
        except StopIteration:
            return


class _JobStream(_Stream):
    __slots__ = ("first",)

    def __init__(self, streams: EventStreams, feed: JobFeed, first: Job | None, holder: str) -> None:
        super().__init__(streams, "job", feed, holder)
        self.first = first

    async def opening(self, send: Send) -> bool:
        first, self.first = self.first, None
        await send(_body(self.streams.retry + (self.streams.frame(first) if first is not None else b"")))
        return first is None or not first.terminal

    def frame_of(self, item: Job | Resync) -> bytes | None:
        return self.streams.frame(item) if isinstance(item, Job) else None  # a job feed never resyncs


class _OwnerStream(_Stream):
    __slots__ = ("jobs",)

    def __init__(self, streams: EventStreams, feed: OwnerFeed, jobs: list[Job], holder: str) -> None:
        super().__init__(streams, "owner", feed, holder)
        self.jobs = jobs

    async def opening(self, send: Send) -> bool:
        jobs, self.jobs = self.jobs, []
        await send(_body(self.streams.retry + self.streams.snapshot_frames(jobs)))
        return True

    def frame_of(self, item: Job | Resync) -> bytes | None:
        if isinstance(item, Resync):
            self._in_background(self._resync())
            return None
        return self.streams.frame(item, with_id=False)

    async def _resync(self) -> None:
        """Send the owner's newest jobs again (the feed may have missed changes)."""
        assert isinstance(self.feed, OwnerFeed) and self._send is not None
        try:
            jobs = await self.feed.snapshot(FEED_SNAPSHOT_SIZE)
        except (RedisError, OSError):
            self.feed.close()  # Redis went away again: the client reconnects and starts afresh
            return
        if jobs:
            self.sent = True
            await self._send(_body(self.streams.snapshot_frames(jobs)))


def _body(data: bytes) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _until_disconnect(receive: Receive, feed: JobFeed | OwnerFeed) -> None:
    """Close ``feed`` once the client has gone: its stream then ends."""
    while (await receive())["type"] != "http.disconnect":
        pass
    feed.close()


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
        self._keepalive = settings.sse_keepalive_seconds
        self.retry = f"retry: {settings.sse_retry_ms}\n\n".encode()
        self.slots = OwnerSlots(settings.max_streams_per_owner)
        self._open: dict[StreamKind, int] = {"job": 0, "owner": 0}
        self._streams: set[_Stream] = set()
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

    def _attach(self, stream: _Stream) -> None:
        self._open[stream.kind] += 1
        self._streams.add(stream)
        if self._ticker is None and self._stopping is None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(), name="jobstream-sse-keepalive"
            )

    def _detach(self, stream: _Stream) -> None:
        self._open[stream.kind] -= 1
        self._streams.discard(stream)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive / 2)
            for stream in self._streams:
                if stream.sent:
                    stream.sent = False
                else:
                    stream.keepalive()

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
        return EventStream(_JobStream(self, feed, first, holder))

    async def owner_stream(self, owner: str) -> Response[Any]:
        """Subscribe to the owner's channel, read the newest jobs, then stream their changes
        (429 if the owner holds too many streams already)."""
        holder = owner
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
        return EventStream(_OwnerStream(self, feed, jobs, holder))

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

    def frame(self, job: Job, *, with_id: bool = True) -> bytes:
        """One ``event: job`` (the JSON is encoded once per state, whoever receives it)."""
        head = b"id: %d\nevent: job\ndata: " % job.version if with_id else b"event: job\ndata: "
        return head + self.hub.json(job) + b"\n\n"

    def snapshot_frames(self, jobs: list[Job]) -> bytes:
        """Oldest first, so a client that appends shows the newest last."""
        return b"".join(self.frame(job, with_id=False) for job in reversed(jobs))


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
    return await streams.owner_stream(caller.id)


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
