"""Operations routes: liveness, readiness and the placeholder home page. No auth needed."""

from __future__ import annotations

import asyncio
from html import escape
from typing import Any

from litestar import MediaType, Request, get
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


@get("/", opt=_PUBLIC, media_type=MediaType.HTML, include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> str:
    """A placeholder home page until the dashboard lands: a link to the API docs."""
    config = request.app.openapi_config
    docs = escape(config.path if config and config.path else "/schema")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>jobstream</title></head>"
        f'<body><h1>jobstream</h1><p><a href="{docs}">API documentation</a></p></body></html>'
    )
