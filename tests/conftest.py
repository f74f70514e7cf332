"""Shared fixtures: one real Redis for the whole session, a key prefix per test, a job store.

Tests isolate themselves by prefix, never by FLUSHALL, so they can run in parallel
(under pytest-xdist each worker process gets its own session Redis). A test that acts on
the whole server (``SCRIPT FLUSH``, ``CLIENT KILL TYPE``, ``CLIENT PAUSE``) is marked
``own_redis``: its ``redis_url`` (and so ``redis``, ``store`` and any stack) is then a
``redis-server`` of its own, and the session's other tests never feel it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from broker.api import Jobstream
from broker.queues import ensure_groups
from broker.settings import load_settings
from broker.store import JobStore
from devtools.embedded_redis import EmbeddedRedis

OWN_REDIS = "own_redis"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{OWN_REDIS}: the test acts on the whole Redis server, so it gets a server of its own"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real ``redis-server`` on a free port with its data in a temporary folder."""
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """The test's Redis URL: the session server's, or a server of its own under ``own_redis``.

    Fixtures shared by a module or the session take ``redis_server.url`` instead.
    """
    if request.node.get_closest_marker(OWN_REDIS) is None:
        yield redis_server.url
        return
    with EmbeddedRedis(data_dir=tmp_path / "own-redis") as own:
        yield own.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own, like ``t1a2b3c4d:``."""
    return f"t{uuid.uuid4().hex[:8]}:"


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the test's Redis (bytes replies), closed after the test.

    Its socket timeouts bound every command: a read that never completes fails the test in
    seconds instead of hanging it (and its event loop's teardown) until CI gives up.
    """
    client = Redis.from_url(redis_url, decode_responses=False, socket_timeout=15, socket_connect_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def store_settings() -> dict[str, Any]:
    """Settings the ``store`` fixture gets on top of the test's Redis and prefix.

    A module that needs others (a short lease, a cap per owner) overrides this fixture.
    """
    return {}


@pytest_asyncio.fixture
async def store(redis: Redis, redis_url: str, prefix: str, store_settings: dict[str, Any]) -> JobStore:
    """A ``JobStore`` on the test's Redis and prefix, with the ``default`` queue's group made."""
    settings = load_settings({}, redis_url=redis_url, prefix=prefix, **store_settings)
    job_store = JobStore(redis, settings)
    await ensure_groups(redis, job_store.keys, ["default"])
    return job_store


@pytest_asyncio.fixture
async def js(redis_url: str, prefix: str) -> AsyncIterator[Jobstream]:
    """The public API on the test's Redis and prefix, with the demo tasks."""
    settings = load_settings({}, redis_url=redis_url, prefix=prefix, task_modules="workers.tasks")
    async with Jobstream.from_settings(settings) as api:
        yield api
