"""The script batcher: calls of one loop turn share a pipeline, and errors reach their caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError

from broker.batching import ScriptBatcher


async def test_concurrent_calls_share_one_round_trip_and_keep_their_replies(
    redis: Redis, prefix: str
) -> None:
    script = redis.register_script("return {KEYS[1], ARGV[1]}")
    await redis.script_load(script.script)
    batcher = ScriptBatcher(redis)
    sent: list[int] = []
    original = batcher._send

    async def counting(batch: Any) -> None:
        sent.append(len(batch))
        await original(batch)

    batcher._send = counting  # type: ignore[method-assign]
    replies = await asyncio.gather(*(batcher.call(script, [f"{prefix}{i}"], [i]) for i in range(50)))
    assert [r[1] for r in replies] == [str(i).encode() for i in range(50)]
    assert sent == [50]


async def test_a_failing_call_fails_alone(redis: Redis, prefix: str) -> None:
    good = redis.register_script("return 1")
    bad = redis.register_script("return redis.error_reply('nope')")
    batcher = ScriptBatcher(redis)
    results = await asyncio.gather(
        batcher.call(good, [], []),
        batcher.call(bad, [], []),
        batcher.call(good, [], []),
        return_exceptions=True,
    )
    assert results[0] == results[2] == 1
    assert isinstance(results[1], ResponseError)


@pytest.mark.own_redis  # SCRIPT FLUSH empties the whole server's script cache
async def test_a_flushed_script_cache_is_reloaded(redis: Redis, prefix: str) -> None:
    script = redis.register_script(f"return '{prefix}'")
    batcher = ScriptBatcher(redis)
    await redis.script_flush()
    assert await batcher.call(script, [], []) == prefix.encode()


@pytest.mark.timeout(10)
async def test_a_dead_connection_fails_every_waiting_caller() -> None:
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)
    batcher = ScriptBatcher(redis)
    script = redis.register_script("return 1")
    results = await asyncio.gather(*(batcher.call(script, [], []) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await redis.aclose()


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_killed_connection_is_retried_as_the_client_says_then_replaced(
    redis_url: str, prefix: str, retries: int
) -> None:
    name = f"{prefix}batcher{retries}".replace(":", "-")
    client = Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), retries))
    admin = Redis.from_url(redis_url)
    try:
        batcher = ScriptBatcher(client)
        script = client.register_script("return ARGV[1]")
        assert await batcher.call(script, [], ["a"]) == b"a"
        clients: Any = await admin.client_list()
        (mine,) = [c for c in clients if c["name"] == name]
        assert await admin.client_kill_filter(_id=mine["id"]) == 1
        if retries:
            assert await batcher.call(script, [], ["b"]) == b"b"  # sent again on a new connection
        else:
            with pytest.raises(ConnectionError):
                await batcher.call(script, [], ["b"])
        assert await batcher.call(script, [], ["c"]) == b"c"
    finally:
        await client.aclose()
        await admin.aclose()
