"""What the tests read of the key schema when jobs live in several partitions: the keys of one
job's partition, and totals over every partition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio.cluster import ClusterPubSub

from broker.keys import partition_of
from broker.store import JobStore


def stream_of(store: JobStore, job_id: str, queue: str = "default") -> str:
    """The queue stream of the job's partition."""
    return store.keys.queue(queue, partition_of(job_id))


def delayed_of(store: JobStore, job_id: str, queue: str = "default") -> str:
    """The delayed set of the job's partition."""
    return store.keys.delayed(queue, partition_of(job_id))


def dead_of(store: JobStore, job_id: str, queue: str = "default") -> str:
    """The dead-letter stream of the job's partition."""
    return store.keys.dead(queue, partition_of(job_id))


def index_of(store: JobStore, owner: str, job_id: str) -> str:
    """The owner's index in the job's partition."""
    return store.keys.owner_jobs(owner, partition_of(job_id))


def active_of(store: JobStore, owner: str, job_id: str) -> str:
    """The owner's active set in the job's partition."""
    return store.keys.owner_active(owner, partition_of(job_id))


async def _total(store: JobStore, command: str, key: Callable[[int], str]) -> int:
    """``command`` (a count) on ``key(p)`` of every partition ``p``, summed."""
    partitions = range(store.keys.partitions)
    counts: list[Any] = [await store.redis.execute_command(command, key(p)) for p in partitions]
    return sum(int(c) for c in counts)


async def queue_length(store: JobStore, queue: str = "default") -> int:
    """Entries in the queue's streams, over every partition."""
    return await _total(store, "XLEN", lambda p: store.keys.queue(queue, p))


async def delayed_count(store: JobStore, queue: str = "default") -> int:
    """Messages in the queue's delayed sets, over every partition."""
    return await _total(store, "ZCARD", lambda p: store.keys.delayed(queue, p))


async def dead_entries(store: JobStore, queue: str = "default") -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Entries of the queue's dead-letter streams, over every partition."""
    entries: list[Any] = []
    for p in range(store.keys.partitions):
        entries += await store.redis.xrange(store.keys.dead(queue, p))
    return entries


async def index_size(store: JobStore, owner: str) -> int:
    """Jobs in the owner's indexes, over every partition."""
    return await _total(store, "ZCARD", lambda p: store.keys.owner_jobs(owner, p))


async def active_count(store: JobStore, owner: str) -> int:
    """Jobs in the owner's active sets, over every partition."""
    return await _total(store, "SCARD", lambda p: store.keys.owner_active(owner, p))


class ShardListener:
    """A test's own subscriber to a shard channel (a partition's events or cancels), on any
    topology: ``async with ShardListener(store, channel) as listener``, then
    ``await listener.next(timeout)``."""

    def __init__(self, store: JobStore, channel: str) -> None:
        self.channel = channel
        self.pubsub: Any = store.redis.pubsub()

    async def open(self) -> ShardListener:
        """SSUBSCRIBE, and wait for Redis to confirm it."""
        await self.pubsub.ssubscribe(self.channel)
        confirmation = await self._get(5.0)
        assert confirmation is not None and confirmation["type"] == "ssubscribe", confirmation
        return self

    async def close(self) -> None:
        await self.pubsub.aclose()

    async def __aenter__(self) -> ShardListener:
        return await self.open()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def _get(self, timeout: float) -> Any:
        if isinstance(self.pubsub, ClusterPubSub):
            return await self.pubsub.get_sharded_message(timeout=timeout)
        return await self.pubsub.get_message(timeout=timeout)

    async def next(self, timeout: float = 2.0) -> bytes | None:
        """The next message's data, or None after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            message = await self._get(left)
            if message is not None and message["type"] == "smessage":
                data: bytes = message["data"]
                return data
        return None


def event_record(data: bytes) -> dict[str, str]:
    """A published event's record as a dict (after its ``[id, owner]`` header line)."""
    header, _, body = data.partition(b"\n")
    job_id, owner = msgspec.json.decode(header)
    flat = msgspec.json.decode(body)
    record = dict(zip(flat[::2], flat[1::2], strict=True))
    assert (record["id"], record["owner"]) == (job_id, owner)  # the header names the record
    return record
