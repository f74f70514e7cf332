"""The app's resources (one Redis client, one ``Jobstream`` on its ``JobStore``, one ``EventHub``),
opened in the lifespan, or by the first request that needs them when no lifespan ran.

Starlette and FastAPI never run a mounted app's lifespan, so ``FastAPI().mount("/api",
create_app())`` reaches the routes with nothing open: the first request that needs Redis
then opens everything, once, under a lock (:meth:`Resources.on_first_use`), and
:func:`close_resources` closes it at the host's shutdown. A host can instead run the app's
lifespan inside its own (``async with api.lifespan(): yield``: Litestar's public context
manager), which opens everything at start-up, as a standalone server does.

Routes receive them as dependencies (``redis``, ``store``, ``hub``, ``streams``,
``stream_tokens``, ``settings``, ``caller``), never from globals, so a test can build as
many apps as it likes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.api import Jobstream
from broker.settings import Settings
from broker.store import JobStore
from broker.topology import RedisClient, Topology, open_redis
from hub.event_hub import EventHub
from web.auth import User
from web.live.sse import EventStreams
from web.live.stream_tokens import StreamTokens
from web.shutdown import on_exit_signal

REDIS_POOL_SIZE = 100
REDIS_POOL_WAIT_SECONDS = 1.0
"""How long a request waits for a free pooled connection before its 503."""
REDIS_CONNECT_TIMEOUT_SECONDS = 1.0
"""Connecting to Redis (a ``socket_connect_timeout`` in the URL overrides it)."""
REDIS_COMMAND_TIMEOUT_SECONDS = 2.0
"""A Redis that does not answer a command within this long (frozen, or cut off by a silent
network) is unavailable: the request gets its 503 then, not after redis-py's default 5 s.
Commands take microseconds; the margin is for an event loop busy with a burst of clients
(a ``socket_timeout`` in the URL overrides it)."""
REDIS_HEALTH_CHECK_SECONDS = 30
"""A pooled connection idle this long is PINGed before its next command (busy ones never are)."""
REDIS_RETRIES = 2
REDIS_BACKOFF = ExponentialBackoff(cap=0.2, base=0.025)
"""Connection errors are retried on a fresh connection after 50 ms, then 100 ms: a socket
that died while idle (Redis restarted, CLIENT KILL, a proxy's idle cut) costs its request
nothing, and an outage is answered 503 in well under a second."""


@dataclass(frozen=True, slots=True)
class JobRoutesContext:
    """Everything the job routes use, as one dependency.

    Litestar resolves two or more dependencies of a route in an anyio task group; on the
    hot routes (create, get) that cost a fifth of the request's CPU time (profiled with
    py-spy under wrk), so they take this one bundle and the caller from ``request.user``.
    """

    jobstream: Jobstream
    """The one door to the core: the routes create, read, list and cancel through it."""
    streams: EventStreams
    """The SSE side: long polls wait on its hub, within the owner's stream cap."""
    settings: Settings
    creation_tokens: StreamTokens | None
    """Mints the stream token of each created job; None in no-auth mode, where streams need none."""
    job_path: str
    """``GET /jobs/{id}``'s path up to the id (the ``Location`` of a created job)."""


SUBSCRIBE_TIMEOUT_SECONDS = REDIS_COMMAND_TIMEOUT_SECONDS
"""How long a new stream waits for Redis to confirm its SUBSCRIBE while the hub is connected
(a hung Redis); while the hub is disconnected it answers 503 within half a second."""


def open_web_redis(topology: Topology) -> RedisClient:
    """The web process's Redis client, its pool made to ride out Redis restarts.

    Blocking: past its size a request waits (``REDIS_POOL_WAIT_SECONDS``) for a free
    connection, then gets a 503; the plain pool raises at once, which a burst of SSE
    clients opening together turned into errors. Connection errors are retried on a new
    connection (reads are idempotent, and the create script recognises a re-sent create
    by its job id); timeouts are not (the command may have run), and surface as a 503.
    """
    return open_redis(
        topology,
        max_connections=REDIS_POOL_SIZE,
        pool_timeout=REDIS_POOL_WAIT_SECONDS,
        hiredis=True,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_COMMAND_TIMEOUT_SECONDS,
        health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
        retry=Retry(REDIS_BACKOFF, REDIS_RETRIES, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )


class Resources:
    """What the lifespan (or the first request) opened, for the providers to hand out (one per app).

    A provider with parameters (``state``) costs a signature-model pass on every request;
    ``jobs`` is on the hot routes, so its provider reads it from here instead: once open,
    the lazy path costs it an ``is None`` test.
    """

    def __init__(self, settings: Settings, creation_tokens: StreamTokens | None) -> None:
        self.settings = settings
        self.creation_tokens = creation_tokens
        """Mints the stream token of each created job; None where streams need none (no auth)."""
        self.jobs: JobRoutesContext | None = None
        self.app: Litestar | None = None
        """The app, for :meth:`on_first_use` (set by ``create_app``)."""
        self._lock = asyncio.Lock()
        self._opened_on_first_use: AsyncExitStack | None = None

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Open Redis, the ``Jobstream`` (creating every queue's group) and the event hub; close at the end.

        The hub is stopped as soon as the server gets SIGTERM/SIGINT, not only at the lifespan's
        end: that ends the open SSE streams and long polls, which the server waits for before
        it runs the lifespan shutdown at all.
        """
        settings = self.settings
        redis = open_web_redis(settings.topology)
        try:
            store = JobStore(redis, settings)
            hub = EventHub(
                store,
                redis_url=settings.redis_url,
                subscribe_timeout=SUBSCRIBE_TIMEOUT_SECONDS,
                connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
                client_name=f"jobstream-web:{os.getpid()}",
            )
            jobstream = Jobstream(redis, settings, store=store, hub=hub)
            await jobstream.prepare()
            await hub.start()
            streams = EventStreams(hub, settings)
            app.state.redis = redis
            app.state.store = store
            app.state.hub = hub
            app.state.streams = streams
            job_path = app.route_reverse("get_job", job_id="_").removesuffix("_")
            self.jobs = JobRoutesContext(jobstream, streams, settings, self.creation_tokens, job_path)
            try:
                with on_exit_signal(streams.drain):
                    yield
            finally:
                self.jobs = None
                await streams.close()
        finally:
            await redis.aclose()

    async def on_first_use(self) -> JobRoutesContext:
        """Open the resources when no lifespan did (a mounted app): once, however many requests ask.

        A failure (Redis unreachable) is the asking request's error (a 503); the next request
        tries again.
        """
        async with self._lock:
            if self.jobs is None:
                assert self.app is not None, "create_app sets the app"
                stack = AsyncExitStack()
                await stack.enter_async_context(self.lifespan(self.app))
                self._opened_on_first_use = stack
        assert self.jobs is not None
        return self.jobs

    async def close(self) -> None:
        """Close what :meth:`on_first_use` opened (what a lifespan opened, it closes itself)."""
        async with self._lock:
            stack, self._opened_on_first_use = self._opened_on_first_use, None
            if stack is not None:
                await stack.aclose()


async def close_resources(app: Litestar) -> None:
    """Close what an app opened on first use (mounted without its lifespan): call it at the
    host's shutdown. Harmless when the lifespan ran, or nothing was opened."""
    resources: Resources = app.state.resources
    await resources.close()


async def jobstream_of(app: Litestar) -> Jobstream:
    """The ``Jobstream`` the app's own routes use, for a host app's endpoints: one Redis pool and
    one event hub per process. Opens the app's resources if nothing did yet (as its first
    request would; close them with :func:`close_resources`)."""
    resources: Resources = app.state.resources
    return (await resources.on_first_use()).jobstream


def provide_caller(request: Request[User, Any, Any]) -> User:
    """The authenticated caller (the local user when auth is off)."""
    return request.user


def dependencies(resources: Resources, tokens: StreamTokens) -> dict[str, Provide]:
    """The app-level dependencies every route may ask for by name.

    Each one that needs Redis opens the resources on first use when no lifespan has.
    """
    settings = resources.settings

    def provide_settings() -> Settings:
        return settings

    async def provide_jobs() -> JobRoutesContext:
        jobs = resources.jobs
        return jobs if jobs is not None else await resources.on_first_use()

    def provide_stream_tokens() -> StreamTokens:
        return tokens

    def from_state(name: str) -> Provide:
        """``app.state.<name>`` (``redis``, ``store``, ``hub``, ``streams``), opened on first use."""

        async def provide(state: State) -> Any:
            if resources.jobs is None:
                await resources.on_first_use()
            return getattr(state, name)

        return Provide(provide)

    return {
        "settings": Provide(provide_settings, use_cache=True, sync_to_thread=False),
        **{name: from_state(name) for name in ("redis", "store", "hub", "streams")},
        "stream_tokens": Provide(provide_stream_tokens, use_cache=True, sync_to_thread=False),
        "caller": Provide(provide_caller, sync_to_thread=False),
        "jobs": Provide(provide_jobs),
    }
