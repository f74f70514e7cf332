"""The script batcher: calls of one loop turn share a pipeline, errors reach their caller, and a
failed batch is never sent again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from broker.batching import ScriptBatcher, batcher_for
from broker.lua_source import Script
from broker.settings import load_settings
from broker.store import JobStore
from tests.support.keyspace import index_size

BUSY_THEN_INCR = Script.of(
    "busy_then_incr",
    """
    local t = redis.call('TIME')
    local until_us = t[1] * 1000000 + t[2] + tonumber(ARGV[1]) * 1000
    repeat
      t = redis.call('TIME')
    until t[1] * 1000000 + t[2] >= until_us
    return redis.call('INCR', KEYS[1])
    """,
)


async def test_concurrent_calls_share_one_round_trip_and_keep_their_replies(
    redis: Redis, prefix: str
) -> None:
    script = Script.of("echo", "return {KEYS[1], ARGV[1]}")
    await redis.script_load(script.source)
    batcher = ScriptBatcher(redis)
    sent: list[int] = []
    original = batcher._send

    async def counting(batch: Any) -> None:
        sent.append(len(batch))
        await original(batch)

    batcher._send = counting  # type: ignore[method-assign]
    replies = await asyncio.gather(*(batcher.call(script, (f"{prefix}{i}",), (i,)) for i in range(50)))
    assert [r[1] for r in replies] == [str(i).encode() for i in range(50)]
    assert sent == [50]


async def test_a_failing_call_fails_alone(redis: Redis, prefix: str) -> None:
    good = Script.of("good", "return 1")
    bad = Script.of("bad", "return redis.error_reply('nope')")
    batcher = ScriptBatcher(redis)
    results = await asyncio.gather(
        batcher.call(good, (), ()),
        batcher.call(bad, (), ()),
        batcher.call(good, (), ()),
        batcher.call(good, (), (None,)),  # type: ignore[arg-type]  # not packable: this call's own error
        return_exceptions=True,
    )
    assert results[0] == results[2] == 1
    assert isinstance(results[1], ResponseError)
    assert isinstance(results[3], Exception)


@pytest.mark.own_redis  # SCRIPT FLUSH empties the whole server's script cache
async def test_a_flushed_script_cache_is_reloaded(redis: Redis, prefix: str) -> None:
    script = Script.of("flushed", f"return '{prefix}'")
    batcher = ScriptBatcher(redis)
    await redis.script_flush()
    assert await batcher.call(script, (), ()) == prefix.encode()


@pytest.mark.timeout(10)
async def test_a_dead_connection_fails_every_waiting_caller() -> None:
    redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=None)
    batcher = ScriptBatcher(redis)
    script = Script.of("one", "return 1")
    results = await asyncio.gather(*(batcher.call(script, (), ()) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)
    await redis.aclose()


@pytest.mark.timeout(10)
async def test_a_batch_whose_connection_fails_mid_flight_is_not_sent_again(
    redis_url: str, redis: Redis, prefix: str
) -> None:
    # The client would retry a plain command three times on a timeout; a batch is not a plain command.
    client = Redis.from_url(redis_url, socket_timeout=0.05, retry=Retry(NoBackoff(), 3))
    try:
        await client.script_load(BUSY_THEN_INCR.source)
        batcher = ScriptBatcher(client)
        counters = [f"{prefix}ran{i}" for i in range(5)]
        # The first call keeps Redis busy past the socket timeout: the reply never comes in time.
        results = await asyncio.gather(
            *(
                batcher.call(BUSY_THEN_INCR, (key,), (200 if i == 0 else 0,))
                for i, key in enumerate(counters)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(r, TimeoutError | ConnectionError | asyncio.TimeoutError) for r in results), (
            results
        )
        # Read once Redis is free: every script of the batch ran, and ran once.
        assert [int(n) for n in await redis.mget(counters)] == [1] * len(counters)
        assert await batcher.call(BUSY_THEN_INCR, (counters[0],), (0,)) == 2  # a fresh connection
    finally:
        await client.aclose()


async def test_a_killed_connection_fails_the_call_and_is_replaced(redis_url: str, prefix: str) -> None:
    name = f"{prefix}batcher".replace(":", "-")
    client = Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), 3))
    admin = Redis.from_url(redis_url)
    try:
        batcher = ScriptBatcher(client)
        script = Script.of("echo_arg", "return ARGV[1]")
        assert await batcher.call(script, (), ("a",)) == b"a"
        clients: Any = await admin.client_list()
        (mine,) = [c for c in clients if c["name"] == name]
        assert await admin.client_kill_filter(_id=mine["id"]) == 1
        with pytest.raises(ConnectionError):
            await batcher.call(script, (), ("b",))  # not sent again, whatever the client's retry says
        assert await batcher.call(script, (), ("c",)) == b"c"
    finally:
        await client.aclose()
        await admin.aclose()


async def test_a_resend_safe_script_is_sent_again_by_its_caller_as_the_client_says(
    redis_url: str, prefix: str
) -> None:
    name = f"{prefix}store".replace(":", "-")
    client = Redis.from_url(redis_url, client_name=name, retry=Retry(NoBackoff(), 1))
    admin = Redis.from_url(redis_url)
    try:
        store = JobStore(client, load_settings({}, redis_url=redis_url, prefix=prefix))
        create = {"task": "demo.noop", "input_json": b"{}", "owner": "alice", "queue": "default"}
        first, _ = await store.create(**create)  # type: ignore[arg-type]
        clients: Any = await admin.client_list()
        (mine,) = [c for c in clients if c["name"] == name]
        assert await admin.client_kill_filter(_id=mine["id"]) == 1
        second, created = await store.create(**create)  # type: ignore[arg-type]
        assert created and second.id != first.id
        assert await index_size(store, "alice") == 2  # one job per create
    finally:
        await client.aclose()
        await admin.aclose()


INCR = Script.of("incr", "return redis.call('INCR', KEYS[1])")


async def _assign(cluster: RedisCluster, slot: int, owner: ClusterNode) -> None:
    """Give ``slot`` (empty) to ``owner``, told to every primary at once (no gossip to wait for)."""
    owner_id = await cluster.cluster_myid(owner)
    for node in cluster.get_primaries():
        await cluster.execute_command("CLUSTER SETSLOT", slot, "NODE", owner_id, target_nodes=node)


@pytest.mark.topologies("cluster")
@pytest.mark.timeout(30)
async def test_calls_to_a_slot_that_moved_run_once_where_it_went_and_the_map_follows(
    redis: RedisCluster, prefix: str
) -> None:
    """The Cluster batcher sends by its slot map; a node that no longer serves a slot answers
    MOVED (the call did not run), the call goes once to the node named, and the map is
    refreshed, so the next calls go there directly."""
    await redis.script_load(INCR.source)  # on every primary
    batcher = batcher_for(redis)
    key = f"{{{prefix}moved}}:n"
    slot = redis.keyslot(key)
    assert await redis.cluster_countkeysinslot(slot) == 0
    source = redis.get_node_from_key(key)
    assert source is not None
    (target, *_rest) = [node for node in redis.get_primaries() if node.name != source.name]
    await _assign(redis, slot, target)  # this client's map still says ``source``
    try:
        replies = await asyncio.gather(*(batcher.call(INCR, (key,), ()) for _ in range(5)))
        assert sorted(replies) == [1, 2, 3, 4, 5]  # each ran exactly once
        deadline = time.monotonic() + 5
        while (moved := redis.get_node_from_key(key)) is None or moved.name != target.name:
            assert time.monotonic() < deadline, "the slot map never followed the slot"
            await asyncio.sleep(0.02)
        assert sorted(await asyncio.gather(*(batcher.call(INCR, (key,), ()) for _ in range(3)))) == [6, 7, 8]
    finally:
        await redis.delete(key)
        await _assign(redis, slot, source)
        await redis.exists(key)  # the client's map follows it back
