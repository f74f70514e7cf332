"""Bounded iteration over Redis keys and collections: SCAN-family cursors, one batch at a time.

Maintenance never uses KEYS or reads a whole collection at once; each call here returns
about ``count`` items, so memory stays flat however large the keyspace grows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from broker.topology import RedisClient


async def scan_keys(redis: RedisClient, pattern: str, kind: str, count: int) -> AsyncIterator[list[bytes]]:
    """Batches of the keys matching ``pattern`` whose type is ``kind`` (SCAN ... TYPE; on
    Cluster redis-py scans every primary)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=count, _type=kind):
        batch.append(cast(bytes, key))
        if len(batch) >= count:
            yield batch
            batch = []
    if batch:
        yield batch


async def zset_members(redis: RedisClient, key: str, count: int) -> AsyncIterator[list[bytes]]:
    """Batches of a sorted set's members (ZSCAN: safe while members are removed)."""
    cursor = 0
    while True:
        cursor, pairs = await redis.zscan(key, cursor, count=count)
        if pairs:
            yield [cast(bytes, member) for member, _score in pairs]
        if cursor == 0:
            return


async def set_members(redis: RedisClient, key: str, count: int) -> AsyncIterator[list[bytes]]:
    """Batches of a set's members (SSCAN: safe while members are removed)."""
    cursor = 0
    while True:
        cursor, members = await redis.sscan(key, cursor, count=count)
        if members:
            yield cast(list[bytes], members)
        if cursor == 0:
            return


async def stream_entries(
    redis: RedisClient, key: str, count: int
) -> AsyncIterator[list[tuple[bytes, dict[bytes, bytes]]]]:
    """Batches of a stream's entries, oldest first (XRANGE from after the last one read)."""
    start = "-"
    while True:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = cast(
            Any, await redis.xrange(key, min=start, max="+", count=count)
        )
        if not entries:
            return
        yield entries
        start = "(" + entries[-1][0].decode()
        if len(entries) < count:
            return
