"""The app's resources (one Redis client, one ``JobStore``), opened in the lifespan.

Routes receive them as dependencies (``redis``, ``store``, ``settings``, ``caller``), never
from globals, so a test can build as many apps as it likes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.di import Provide
from redis.asyncio import Redis

from broker.queues import ensure_groups
from broker.settings import Settings
from broker.store import JobStore
from broker.tasks import registry
from web.auth import User


def lifespan(settings: Settings) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Open Redis and the store at start-up (creating every queue's group), close at shutdown."""

    @asynccontextmanager
    async def open_resources(app: Litestar) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url)
        try:
            store = JobStore(redis, settings)
            await store.scripts.load_all(redis)
            await ensure_groups(redis, store.keys, registry.queues(settings.default_queue))
            app.state.redis = redis
            app.state.store = store
            yield
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


def provide_caller(request: Request[User, Any, Any]) -> User:
    """The authenticated caller (the local user when auth is off)."""
    return request.user


def dependencies(settings: Settings) -> dict[str, Provide]:
    """The app-level dependencies every route may ask for by name."""

    def provide_settings() -> Settings:
        return settings

    return {
        "settings": Provide(provide_settings, use_cache=True, sync_to_thread=False),
        "redis": Provide(provide_redis, sync_to_thread=False),
        "store": Provide(provide_store, sync_to_thread=False),
        "caller": Provide(provide_caller, sync_to_thread=False),
    }
