"""The app's resources (one Redis client, one ``Jobstream`` on its ``JobStore``, one ``EventHub``),
opened in the lifespan.

Routes receive them as dependencies (``redis``, ``store``, ``hub``, ``streams``,
``stream_tokens``, ``settings``, ``caller``), never from globals, so a test can build as
many apps as it likes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from broker.api import Jobstream
from broker.connection import HiredisConnection
from broker.settings import Settings
from broker.store import JobStore
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


class Opened:
    """What the lifespan opened that a parameterless provider hands out (one per app).

    A provider with parameters (``state``) costs a signature-model pass on every request;
    ``jobs`` is on the hot routes, so its provider reads it from here instead.
    """

    jobs: JobRoutesContext | None = None


def stream_tokens_for(settings: Settings) -> StreamTokens:
    """The stream-token minter of an app built from ``settings`` (one per app)."""
    return StreamTokens.for_settings(
        settings.jwt_secret, settings.jwt_algorithm, settings.stream_token_ttl_seconds
    )


SUBSCRIBE_TIMEOUT_SECONDS = REDIS_COMMAND_TIMEOUT_SECONDS
"""How long a new stream waits for Redis to confirm its SUBSCRIBE while the hub is connected
(a hung Redis); while the hub is disconnected it answers 503 within half a second."""


def redis_pool(url: str) -> BlockingConnectionPool:
    """The web process's connection pool, made to ride out Redis restarts.

    Blocking: past its size a request waits (``REDIS_POOL_WAIT_SECONDS``) for a free
    connection, then gets a 503; the plain pool raises at once, which a burst of SSE
    clients opening together turned into errors. Connection errors are retried on a new
    connection (reads are idempotent, and the create script recognises a re-sent create
    by its job id); timeouts are not (the command may have run), and surface as a 503.
    """
    return BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_SIZE,
        timeout=REDIS_POOL_WAIT_SECONDS,
        connection_class=HiredisConnection,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_SECONDS,
        socket_timeout=REDIS_COMMAND_TIMEOUT_SECONDS,
        health_check_interval=REDIS_HEALTH_CHECK_SECONDS,
        retry=Retry(REDIS_BACKOFF, REDIS_RETRIES, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError],
    )


def lifespan(
    settings: Settings, tokens: StreamTokens, opened: Opened
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open Redis, the ``Jobstream`` (creating every queue's group) and the event hub; close at shutdown.

    The hub is stopped as soon as the server gets SIGTERM/SIGINT, not only at the lifespan's
    end: that ends the open SSE streams and long polls, which the server waits for before
    it runs the lifespan shutdown at all.
    """

    @asynccontextmanager
    async def open_resources(app: Litestar) -> AsyncIterator[None]:
        redis = Redis.from_pool(redis_pool(settings.redis_url))
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
            creation_tokens = tokens if settings.auth == "jwt" else None
            job_path = app.route_reverse("get_job", job_id="_").removesuffix("_")
            opened.jobs = JobRoutesContext(jobstream, streams, settings, creation_tokens, job_path)
            try:
                with on_exit_signal(streams.drain):
                    yield
            finally:
                opened.jobs = None
                await streams.close()
        finally:
            await redis.aclose()

    return open_resources


def provide_redis(state: State) -> Redis:
    """The app's Redis client."""
    redis: Redis = state.redis
    return redis


def provide_store(state: State) -> JobStore:
    """The app's job store."""
    store: JobStore = state.store
    return store


def provide_hub(state: State) -> EventHub:
    """The app's event hub (its one pub/sub connection)."""
    hub: EventHub = state.hub
    return hub


def provide_streams(state: State) -> EventStreams:
    """The app's SSE streams."""
    streams: EventStreams = state.streams
    return streams


def provide_caller(request: Request[User, Any, Any]) -> User:
    """The authenticated caller (the local user when auth is off)."""
    return request.user


def dependencies(settings: Settings, tokens: StreamTokens, opened: Opened) -> dict[str, Provide]:
    """The app-level dependencies every route may ask for by name."""

    def provide_settings() -> Settings:
        return settings

    def provide_jobs() -> JobRoutesContext:
        if opened.jobs is None:
            raise RuntimeError("the app's resources are not open (outside its lifespan)")
        return opened.jobs

    def provide_stream_tokens() -> StreamTokens:
        return tokens

    return {
        "settings": Provide(provide_settings, use_cache=True, sync_to_thread=False),
        "redis": Provide(provide_redis, sync_to_thread=False),
        "store": Provide(provide_store, sync_to_thread=False),
        "hub": Provide(provide_hub, sync_to_thread=False),
        "streams": Provide(provide_streams, sync_to_thread=False),
        "stream_tokens": Provide(provide_stream_tokens, use_cache=True, sync_to_thread=False),
        "caller": Provide(provide_caller, sync_to_thread=False),
        "jobs": Provide(provide_jobs, sync_to_thread=False),
    }
