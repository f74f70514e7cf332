"""The SSE streams of one web process: opening them on the hub, writing them, keeping them alive.

Every stream follows the SSE contract (docs/ARCHITECTURE.md): subscribe first (the hub
confirms the SUBSCRIBE), then read the hash, then forward only newer versions, so nothing
is missed, repeated or reordered. Problems (404, 429, 503) are raised before a stream starts.

Each stream is written by its own request's task with ``await send(...)``: the hub's reader
only hands the newest state to the stream's feed and wakes it. A slow or failing client
therefore holds up no one: its task waits in ``send`` while newer states replace older ones
in its feed, and whatever its ``send`` raises ends that stream alone.

The frames are pre-encoded bytes sent through :class:`EventStream`, a response of our own,
rather than :class:`~litestar.response.ServerSentEvent` or :class:`~litestar.response.Stream`:
``ServerSentEvent`` re-encodes each event per client and runs a thread-pool hop on every
new stream, while here a job's JSON is encoded once per state by :meth:`EventHub.json`
for all its clients; ``Stream`` costs a task group, a second task and an async generator
per connection, and 10,000 idle clients on one process need less.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal, Protocol

from litestar import Litestar, Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.response.base import ASGIResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Scope, Send, TypeEncodersMap
from redis.exceptions import RedisError

from broker.models import Job
from hub.event_hub import JobFeed, OwnerFeed, Resync
from web.tracebacks import JobView

EVENT_STREAM = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
FEED_SNAPSHOT_SIZE = 50
"""How many of the owner's newest jobs ``GET /events`` sends on connect and on resync."""

StreamKind = Literal["job", "owner"]
_END: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}


class Frames(Protocol):
    """What a stream needs from the process's SSE side (``web.live.sse.EventStreams``)."""

    retry: bytes

    def frame(self, job: Job, *, view: JobView, with_id: bool = True) -> bytes:
        """One ``event: job``."""

    def snapshot_frames(self, jobs: list[Job], *, view: JobView) -> bytes:
        """Several jobs' events, oldest first."""

    def opened(self, stream: Stream) -> None:
        """A stream started (count it, keep it alive)."""

    def closed(self, stream: Stream) -> None:
        """A stream ended: give back what it held."""


class EventStream(Response[None]):
    """A ``text/event-stream`` response that runs its :class:`Stream` in the request's task.

    Litestar's :class:`~litestar.response.Stream` pulls from an async generator in an anyio
    task group, with a second task listening for the disconnect. Here the request's task
    runs the stream itself, and one bare task per stream waits for ``http.disconnect``.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: Stream) -> None:
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

    # Chunked: the stream has no length. This class variable is how Litestar's own streaming
    # response (ASGIStreamingResponse) says so; Litestar has no public switch for it, and that
    # response would bring the task group per stream that we leave out (module docstring).
    _should_set_content_length = False

    def __init__(self, stream: Stream, headers: dict[str, Any], cookies: Iterable[Cookie]) -> None:
        super().__init__(headers=headers, cookies=cookies, media_type=EVENT_STREAM)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.start_response(send)
        except BaseException:
            self._stream.abandon()  # the client left before the headers went out
            raise
        await self._stream.run(send, receive)


class Stream(ABC):
    """One open SSE stream: the request's task sends what its feed hands out, until it is done.

    ``sent`` tells the keepalive tick whether it wrote since the last tick; the tick calls
    :meth:`nudge` on a quiet one, which then sends ``: keepalive`` from its own task.
    ``view``: what its caller may not see of a job (see :mod:`web.tracebacks`).
    """

    __slots__ = ("feed", "frames", "holder", "keepalive_due", "kind", "sent", "view")

    def __init__(
        self,
        frames: Frames,
        kind: StreamKind,
        feed: JobFeed | OwnerFeed,
        holder: str,
        view: JobView,
    ) -> None:
        self.frames = frames
        self.view = view
        self.kind = kind
        self.feed = feed
        self.holder: str | None = holder  # whose stream-cap slot this holds; None once given back
        self.sent = False
        self.keepalive_due = False

    async def run(self, send: Send, receive: Receive) -> None:
        """Stream until the last frame, the client leaving, or the hub stopping; then close the feed."""
        self.frames.opened(self)
        left = asyncio.ensure_future(_until_disconnect(receive, self.feed))
        try:
            if await self.opening(send):
                await self._forward(send)
            await send(_END)
        finally:
            left.cancel()
            self.abandon()

    async def _forward(self, send: Send) -> None:
        """Send each item the feed hands out, and a keepalive when nudged, until the feed is done."""
        feed = self.feed
        while True:
            item = feed.take()
            if item is not None:
                self.sent = True
                await self.forward(send, item)
            elif feed.done:
                return
            elif self.keepalive_due:
                self.keepalive_due = False
                await send(_body(KEEPALIVE))
            else:
                await feed.changed()

    def nudge(self) -> None:
        """The stream has been quiet a while: have it send a keepalive comment."""
        self.keepalive_due = True
        self.feed.wake()

    def abandon(self) -> None:
        """Close the feed and give back what the stream held (idempotent)."""
        self.feed.close()
        if self.holder is not None:
            self.frames.closed(self)
            self.holder = None

    @abstractmethod
    async def opening(self, send: Send) -> bool:
        """Send the first frames; False if the stream is already over."""

    @abstractmethod
    async def forward(self, send: Send, item: Job | Resync) -> None:
        """Send one item taken from the feed."""


class JobStream(Stream):
    """``GET /jobs/{id}/events``: the job (unless the client has that version), then each newer state."""

    __slots__ = ("first",)

    def __init__(self, frames: Frames, feed: JobFeed, first: Job | None, holder: str, view: JobView) -> None:
        super().__init__(frames, "job", feed, holder, view)
        self.first = first

    async def opening(self, send: Send) -> bool:
        first, self.first = self.first, None
        frame = b"" if first is None else self.frames.frame(first, view=self.view)
        await send(_body(self.frames.retry + frame))
        return first is None or not first.terminal

    async def forward(self, send: Send, item: Job | Resync) -> None:
        if isinstance(item, Job):  # a job feed never resyncs
            await send(_body(self.frames.frame(item, view=self.view)))


class OwnerStream(Stream):
    """``GET /events``: the owner's newest jobs (an admin's: everyone's), then each change; the
    newest jobs again on a resync."""

    __slots__ = ("jobs",)

    def __init__(self, frames: Frames, feed: OwnerFeed, jobs: list[Job], holder: str, view: JobView) -> None:
        super().__init__(frames, "owner", feed, holder, view)
        self.jobs = jobs

    async def opening(self, send: Send) -> bool:
        jobs, self.jobs = self.jobs, []
        await send(
            _body(self.frames.retry + self.frames.snapshot_frames(jobs, view=self.view))
        )
        return True

    async def forward(self, send: Send, item: Job | Resync) -> None:
        if isinstance(item, Job):
            await send(_body(self.frames.frame(item, with_id=False, view=self.view)))
            return
        assert isinstance(self.feed, OwnerFeed)
        try:
            jobs = await self.feed.snapshot(FEED_SNAPSHOT_SIZE)
        except (RedisError, OSError):
            self.feed.close()  # Redis went away again: the client reconnects and starts afresh
            return
        if jobs:
            await send(_body(self.frames.snapshot_frames(jobs, view=self.view)))


def _body(data: bytes) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _until_disconnect(receive: Receive, feed: JobFeed | OwnerFeed) -> None:
    """Close ``feed`` once the client has gone: its stream then ends."""
    while (await receive())["type"] != "http.disconnect":
        pass
    feed.close()
