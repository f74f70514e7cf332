"""Operations routes: liveness and readiness. No auth needed."""

from __future__ import annotations

import asyncio

from litestar import get
from litestar.di import NamedDependency
from redis.asyncio import Redis
from redis.exceptions import RedisError

from web.auth import EXCLUDE_KEY
from web.openapi import problem_responses
from web.problems import ProblemError, problem
from web.schemas import Health

READY_TIMEOUT_SECONDS = 2.0

_PUBLIC = {EXCLUDE_KEY: True}


@get("/healthz", opt=_PUBLIC, tags=["ops"], summary="Liveness")
async def healthz() -> Health:
    """The process is alive (touches nothing else)."""
    return Health("ok")


@get("/readyz", opt=_PUBLIC, tags=["ops"], responses=problem_responses(503), summary="Readiness")
async def readyz(redis: NamedDependency[Redis]) -> Health:
    """Ready when Redis answers PING; otherwise 503."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_SECONDS):
            await redis.ping()
    except (RedisError, OSError, TimeoutError) as err:
        detail = f"Redis is not reachable ({type(err).__name__})"
        raise ProblemError(problem(503, "not-ready", detail), headers={"Retry-After": "5"}) from None
    return Health("ready")
