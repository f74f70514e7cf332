"""Shared fixtures: one real Redis for the whole session, and a key prefix per test.

Tests isolate themselves by prefix, never by FLUSHALL, so they can run in parallel
(under pytest-xdist each worker process gets its own session Redis).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from devtools.embedded_redis import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real ``redis-server`` on a free port with its data in a temporary folder."""
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The session Redis URL, ``redis://127.0.0.1:PORT/0``."""
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, like ``t1a2b3c4d:``."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the session Redis (bytes replies), closed after the test.

    Its socket timeouts bound every command: a read that never completes fails the test in
    seconds instead of hanging it (and its event loop's teardown) until CI gives up.
    """
    client = Redis.from_url(redis_url, decode_responses=False, socket_timeout=15, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()
