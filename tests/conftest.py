"""Shared fixtures: one real Redis for the whole session, a key prefix per test, a job store.

Tests isolate themselves by prefix, never by FLUSHALL, so they can run in parallel
(under pytest-xdist each worker process gets its own session Redis). A test that acts on
the whole server (``SCRIPT FLUSH``, ``CLIENT KILL TYPE``, ``CLIENT PAUSE``) is marked
``own_redis``: its ``redis_url`` (and so ``redis``, ``store`` and any stack) is then a
``redis-server`` of its own, and the session's other tests never feel it.

A module or test marked ``topologies("single", "cluster")`` runs once per topology: under
``cluster`` its ``redis_url`` is a real three-primary Redis Cluster (one for the session,
:mod:`tests.support.redis_cluster`, its partitions the Cluster default), and ``redis`` a
``RedisCluster`` client. When the session ends, no node may have answered CROSSSLOT.
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
from broker.topology import open_redis, parse_redis_url
from devtools.embedded_redis import EmbeddedRedis
from devtools.redis_cluster import ClusterServers

OWN_REDIS = "own_redis"
TOPOLOGIES = "topologies"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{OWN_REDIS}: the test acts on the whole Redis server, so it gets a server of its own"
    )
    config.addinivalue_line(
        "markers", f"{TOPOLOGIES}(*names): run the test on each Redis topology named (single, cluster)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(TOPOLOGIES)
    if marker is not None and "topology" in metafunc.fixturenames:
        metafunc.parametrize("topology", marker.args, indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """``single`` (one redis-server), or ``cluster`` for a test marked ``topologies``."""
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterServers]:
    """A real Redis Cluster of three primaries, started on first use; at the end of the
    session every node is asked whether it ever answered CROSSSLOT (it must not have)."""
    with ClusterServers(tmp_path_factory.mktemp("redis-cluster")) as servers:
        yield servers
        crossslot = servers.error_counts("CROSSSLOT")
    assert not any(crossslot.values()), f"CROSSSLOT answered by the cluster's nodes: {crossslot}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real ``redis-server`` on a free port with its data in a temporary folder."""
    with EmbeddedRedis(data_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, tmp_path: Path, topology: str
) -> Iterator[str]:
    """The test's Redis URL: the session server's, a server of its own under ``own_redis``,
    or the session's Redis Cluster under the ``cluster`` topology.

    Fixtures shared by a module or the session take ``redis_server.url`` instead.
    """
    if topology == "cluster":
        yield request.getfixturevalue("redis_cluster").url
        return
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
    client: Any = open_redis(
        parse_redis_url(redis_url), decode_responses=False, socket_timeout=15, socket_connect_timeout=5
    )
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
