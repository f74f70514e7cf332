"""``HiredisConnection`` packs exactly what redis-py's own asyncio connection packs."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Connection, Redis
from redis.exceptions import DataError

from broker.connection import HiredisConnection
from broker.models import JobStatus

COMMANDS: list[tuple[Any, ...]] = [
    ("EVALSHA", "a" * 40, 2, "js:job:{x}", "js:owner:é:jobs", b"{}", 86400, 0, 1.5, -3),
    ("CLIENT SETNAME", "jobstream-web:1"),
    (b"CONFIG GET", b"maxmemory"),
    ("SET", JobStatus.PENDING, memoryview(b"view"), bytearray(b"array")),
    ("SET", "big", b"x" * 100_000),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_packs_the_same_bytes_as_redis_py(command: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisConnection().pack_command(*command))
    theirs = b"".join(bytes(part) for part in Connection().pack_command(*command))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True, object()])
def test_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisConnection().pack_command("SET", "k", bad)


async def test_a_client_on_it_talks_to_redis(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url, connection_class=HiredisConnection)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"{prefix}k", memoryview(b"v"))
            pipe.get(f"{prefix}k")
            pipe.hset(f"{prefix}h", mapping={"a": 1, "b": 2.5})
            pipe.hgetall(f"{prefix}h")
            assert await pipe.execute() == [True, b"v", 2, {b"a": b"1", b"b": b"2.5"}]
    finally:
        await client.aclose()
