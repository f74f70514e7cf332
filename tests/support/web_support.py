"""Helpers for the web tests: settings, in-process clients, key snapshots."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from broker.settings import Settings, load_settings
from web.app import create_app

SECRET = "test-secret-of-at-least-thirty-two-bytes"
PROBLEM_JSON = "application/problem+json"

T = TypeVar("T")


def web_settings(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for one test: its Redis and prefix, no auth unless overridden."""
    values: dict[str, Any] = {"redis_url": redis_url, "prefix": prefix, "auth": "none", **overrides}
    return load_settings({}, **values)


@asynccontextmanager
async def app_client(settings: Settings, path_prefix: str = "") -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app in process (lifespan run), behind Litestar's async test client."""
    async with AsyncTestClient(create_app(settings, path_prefix=path_prefix)) as client:
        yield client


async def keys_under(redis: Redis, prefix: str) -> set[bytes]:
    """Every key under the test's prefix (SCAN, never KEYS)."""
    return {key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)}


async def job_keys(redis: Redis, prefix: str) -> set[bytes]:
    """The job record hashes under the test's prefix."""
    return {key async for key in redis.scan_iter(match=f"{prefix}job:*", count=1000)}
