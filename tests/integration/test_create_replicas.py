"""``JOBSTREAM_CREATE_REPLICAS``: a create is acknowledged only once replicas have the job.

A real primary and replica (``ReplicaSet``, no sentinel: WAIT works the same on one Redis
with replicas); the replica is SIGSTOPped to play one that does not confirm. The batcher
appends ``PUBLISH <marker>`` and ``WAIT`` to a batch that holds a create (broker.batching).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from broker.api import Jobstream
from broker.batching import ScriptBatcher
from broker.errors import NotReplicated
from broker.keys import Keys
from broker.lua_source import Script
from broker.settings import load_settings
from broker.store import JobStore
from tests.support.sentinel_servers import ReplicaSet
from tests.support.web_support import PROBLEM_JSON, app_client, web_settings

pytestmark = pytest.mark.timeout(60)

TIMEOUT_MS = 300


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSet]:
    """A primary and one replica for the module (each test has its own prefix)."""
    with ReplicaSet(tmp_path_factory.mktemp("replicated")) as servers:
        yield servers


@pytest_asyncio.fixture
async def js(replicated: ReplicaSet, prefix: str) -> AsyncIterator[Jobstream]:
    """The public API asking one replica to confirm every create within ``TIMEOUT_MS``."""
    async with Jobstream.from_settings(settings(replicated, prefix)) as api:
        yield api


def settings(servers: ReplicaSet, prefix: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "redis_url": servers.url,
        "prefix": prefix,
        "task_modules": "workers.tasks",
        "create_replicas": 1,
        "create_replicas_timeout_ms": TIMEOUT_MS,
        **overrides,
    }
    return load_settings({}, **values)


async def on_replica(servers: ReplicaSet, key: str) -> bool:
    replica = Redis(port=servers.nodes[1].port, socket_timeout=5)
    try:
        return bool(await replica.exists(key))
    finally:
        await replica.aclose()


async def test_a_create_returns_once_the_replica_has_the_job(js: Jobstream, replicated: ReplicaSet) -> None:
    job = await js.submit("demo.noop", {}, owner="alice")
    # WAIT returned: the replica acknowledged the offset of the create's write, so it has it.
    assert await on_replica(replicated, js.store.keys.job(job.id))


async def test_no_replica_confirming_is_not_replicated_within_the_timeout(
    js: Jobstream, replicated: ReplicaSet
) -> None:
    with replicated.frozen(replicated.nodes[1]):
        started = time.monotonic()
        with pytest.raises(NotReplicated) as raised:
            await js.submit("demo.noop", {}, owner="alice", idempotency_key="k1")
        waited = time.monotonic() - started
    assert (raised.value.wanted, raised.value.confirmed, raised.value.timeout_ms) == (1, 0, TIMEOUT_MS)
    assert TIMEOUT_MS / 1000 <= waited < TIMEOUT_MS / 1000 + 1.0
    # Sent again with its key once the replica is back: the same job, now confirmed.
    job = await js.submit("demo.noop", {}, owner="alice", idempotency_key="k1")
    again = await js.submit("demo.noop", {}, owner="alice", idempotency_key="k1")
    assert again.id == job.id
    assert await on_replica(replicated, js.store.keys.job(job.id))


async def test_a_replay_waits_until_the_replicas_have_the_job_it_returns(
    replicated: ReplicaSet, prefix: str
) -> None:
    """The job was written on another connection (here by a process that does not wait), and
    the replay writes nothing itself. WAIT is documented to cover the connection's own
    writes; the marker's PUBLISH makes it cover the job the replay returns. (Redis 7.0.15
    happens to set a connection's WAIT offset on any command, so there this holds without
    the marker too; the marker keeps it true where WAIT does what its documentation says.)"""
    clients = [Redis.from_url(replicated.url, socket_timeout=5) for _ in range(2)]
    quiet = JobStore(clients[0], settings(replicated, prefix, create_replicas=0))
    durable = JobStore(clients[1], settings(replicated, prefix))
    create = {"task": "demo.noop", "input_json": b"{}", "owner": "alice", "queue": "default"}
    try:
        await quiet.scripts.load_all()
        with replicated.frozen(replicated.nodes[1]):
            job, _ = await quiet.create(**create, idempotency_key="k2")
            with pytest.raises(NotReplicated):
                await durable.create(**create, idempotency_key="k2")
        replayed, new = await durable.create(**create, idempotency_key="k2")
        assert (replayed.id, new) == (job.id, False)
    finally:
        for client in clients:
            await client.aclose()


async def test_without_create_replicas_nothing_waits(replicated: ReplicaSet, prefix: str) -> None:
    async with Jobstream.from_settings(settings(replicated, prefix, create_replicas=0)) as api:
        with replicated.frozen(replicated.nodes[1]):
            started = time.monotonic()
            await api.submit("demo.noop", {}, owner="alice")
            assert time.monotonic() - started < TIMEOUT_MS / 1000


async def test_post_jobs_answers_503_with_retry_after_then_the_job_on_the_same_key(
    replicated: ReplicaSet, prefix: str
) -> None:
    app_settings = web_settings(
        replicated.url, prefix, create_replicas=1, create_replicas_timeout_ms=TIMEOUT_MS
    )
    body = {"type": "demo.noop", "input": {}}
    headers = {"Idempotency-Key": "order-7"}
    client: AsyncTestClient[Litestar]
    async with app_client(app_settings) as client:
        with replicated.frozen(replicated.nodes[1]):
            started = time.monotonic()
            refused = await client.post("/jobs", json=body, headers=headers)
            waited = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert refused.headers["retry-after"] == "1"
        problem = refused.json()
        assert problem["type"] == "urn:jobstream:problem:not-replicated"
        assert "Idempotency-Key" in problem["detail"]
        assert waited < TIMEOUT_MS / 1000 + 1.0
        # The job was written on the primary: sent again, it is that job, confirmed now.
        answered = await client.post("/jobs", json=body, headers=headers)
        assert answered.status_code == 200, answered.text
        created = await client.post("/jobs", json=body, headers={"Idempotency-Key": "order-8"})
        assert created.status_code == 202, created.text
        assert await on_replica(replicated, Keys(prefix).job(answered.json()['id']))


async def test_only_the_durable_calls_of_a_batch_fail_when_replicas_do_not_confirm(
    redis: Redis, prefix: str
) -> None:
    """On a Redis with no replica at all: the create-like call fails, its neighbours do not."""
    script = Script.of("incr", "return redis.call('INCR', KEYS[1])")
    await redis.script_load(script.source)
    batcher = ScriptBatcher(redis)
    batcher.wait_for_replicas(1, 100, f"{prefix}marker")
    started = time.monotonic()
    plain, durable, other = await asyncio.gather(
        batcher.call(script, (f"{prefix}a",), ()),
        batcher.call(script, (f"{prefix}b",), (), durable=True),
        batcher.call(script, (f"{prefix}c",), ()),
        return_exceptions=True,
    )
    assert time.monotonic() - started >= 0.1
    assert (plain, other) == (1, 1)
    assert isinstance(durable, NotReplicated)
    assert await redis.get(f"{prefix}b") == b"1"  # written on the primary, only not confirmed
    # A batch without a durable call never waits.
    started = time.monotonic()
    assert await batcher.call(script, (f"{prefix}a",), ()) == 2
    assert time.monotonic() - started < 0.1
