"""How a worker reads several partitions: full reads under a backlog, never more than its room,
and an idle worker still woken by a job in any partition (workers.deliveries, real Redis)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage

from broker.connection import RedisWatch
from broker.registry import TaskRegistry
from broker.store import JobStore
from workers.deliveries import Deliveries

pytestmark = pytest.mark.topologies("single", "cluster")
PARTITIONS = 4


@pytest.fixture
def store_settings() -> dict[str, Any]:
    return {"partitions": PARTITIONS}


def deliveries(store: JobStore, limit: int) -> Deliveries:
    watch = RedisWatch(logging.getLogger("test"), "worker")
    return Deliveries(store.settings, TaskRegistry(), ["default"], store, "reader", watch, limit)


async def fill(redis: Redis, store: JobStore, per_partition: int) -> None:
    for partition in range(PARTITIONS):
        for n in range(per_partition):
            await redis.xadd(store.keys.queue("default", partition), {"data": f"{partition}-{n}"})


async def next_read(reads: AsyncGenerator[bytes | AckableMessage, None]) -> None:
    """Wait (bounded) for the next read that returned entries."""
    await asyncio.wait_for(anext(reads), 5)


def held_per_stream(reader: Deliveries) -> dict[str, int]:
    return {stream: len(ids) for stream, ids in reader.inflight.items() if ids}


@pytest.mark.timeout(30)
async def test_a_backlog_is_read_a_full_count_at_a_time(redis: Redis, store: JobStore) -> None:
    await fill(redis, store, 30)
    reader = deliveries(store, limit=100)  # reads take at most 50 entries (count)
    reads = reader.listen(redis, batches=True)
    try:
        await next_read(reads)
        # One read of 50: all 30 of one partition and 20 of the next, not 25 from each of four.
        assert reader.held == 50
        first, second = (store.keys.queue("default", p) for p in range(2))
        assert held_per_stream(reader) == {first: 30, second: 20}
        await next_read(reads)  # room for 50 more: the sweep starts at the partition after
        assert reader.held == 100
        third, fourth = (store.keys.queue("default", p) for p in range(2, 4))
        assert held_per_stream(reader) == {first: 30, second: 20, third: 30, fourth: 20}
    finally:
        await reads.aclose()


@pytest.mark.timeout(30)
async def test_a_worker_never_holds_more_than_it_runs(redis: Redis, store: JobStore) -> None:
    await fill(redis, store, 3)
    reader = deliveries(store, limit=1)
    reads = reader.listen(redis, batches=True)
    try:
        await next_read(reads)
        assert reader.held == 1
        waiting = asyncio.ensure_future(anext(reads))
        await asyncio.sleep(0.2)  # no room: the reader must not read meanwhile
        assert not waiting.done() and reader.held == 1
        ((stream, ids),) = [(s, i) for s, i in reader.inflight.items() if i]
        reader.release(stream, next(iter(ids)))
        await asyncio.wait_for(waiting, 5)
        assert reader.held == 1
    finally:
        await reads.aclose()


@pytest.mark.timeout(30)
async def test_an_idle_worker_gets_a_job_of_any_partition_at_once(redis: Redis, store: JobStore) -> None:
    reader = deliveries(store, limit=100)
    reads = reader.listen(redis, batches=True)
    try:
        waiting = asyncio.ensure_future(anext(reads))
        await asyncio.sleep(0.3)  # every partition swept and found empty: blocking reads now
        assert not waiting.done()
        stream = store.keys.queue("default", PARTITIONS - 1)
        await redis.xadd(stream, {"data": "late"})
        await asyncio.wait_for(waiting, 2)  # within the read's block (1 s), not the next sweep
        assert held_per_stream(reader) == {stream: 1}
    finally:
        await reads.aclose()
