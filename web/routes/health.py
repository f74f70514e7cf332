"""Operations routes: liveness and readiness. No auth needed."""

from __future__ import annotations

import asyncio
from typing import NoReturn

from litestar import get
from litestar.di import NamedDependency
from redis.exceptions import RedisError

from broker.store import JobStore
from hub.event_hub import EventHub
from web.auth import EXCLUDE_KEY
from web.openapi import problem_responses
from web.problems import REDIS_RETRY_AFTER_SECONDS, ProblemError, problem
from web.schemas import Health

READY_TIMEOUT_SECONDS = 2.0

_PUBLIC = {EXCLUDE_KEY: True}


@get("/healthz", opt=_PUBLIC, tags=["ops"], summary="Liveness")
async def healthz() -> Health:
    """The process is alive (touches nothing else)."""
    return Health("ok")


@get("/readyz", opt=_PUBLIC, tags=["ops"], responses=problem_responses(503), summary="Readiness")
async def readyz(store: NamedDependency[JobStore], hub: NamedDependency[EventHub]) -> Health:
    """Ready when Redis answers PING and the event hub's pub/sub connection is up; otherwise 503.

    Without the hub a process would answer reads but refuse every event stream, so it is
    not ready until the hub has reconnected too (about a second after Redis is back).
    """
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await store.redis.ping()
    except (RedisError, OSError, TimeoutError) as err:
        _not_ready(f"Redis is not reachable ({type(err).__name__})")
    if not hub.connected:
        _not_ready("the event hub is reconnecting to Redis")
    return Health("ready")


def _not_ready(detail: str) -> NoReturn:
    headers = {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)}
    raise ProblemError(problem(503, "not-ready", detail), headers=headers) from None
