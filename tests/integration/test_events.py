"""EventHub on a real redis-server: fan-out, reference counting, reconnects, long polling.

Job changes go through the real JobStore scripts; every wait is on an event or a
deadline-bounded condition, never a fixed sleep (the slow reader's sleep is the point).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from broker.errors import JobNotFound
from broker.keys import partition_of
from broker.models import Job, JobStatus, job_encoder
from broker.store import GROUP, Delivery, JobStore, Started
from devtools.embedded_redis import free_port
from hub.event_hub import EventHub, EventsUnavailable, FeedClosed, JobFeed, OwnerFeed, Resync
from tests.support.keyspace import stream_of
from tests.support.polling import until
from web.auth import User
from web.live.sse import EventStreams

pytestmark = pytest.mark.timeout(60)

RETENTION = 600


@pytest.fixture
def hub_name(prefix: str) -> str:
    """The hub's CLIENT SETNAME, unique to the test so CLIENT LIST finds only its connection."""
    return f"events-{prefix.rstrip(':')}"


@pytest.fixture
async def hub(redis: Redis, store: JobStore, hub_name: str) -> AsyncIterator[EventHub]:
    hub = EventHub(store, client_name=hub_name)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()


async def running_job(store: JobStore, owner: str = "u") -> tuple[Started, Delivery]:
    """Create a job and start it as a worker would (read its stream entry, then start)."""
    job, created = await store.create(task="demo.sleep", input_json=b"{}", owner=owner, queue="default")
    assert created
    stream = stream_of(store, job.id)
    reply: Any = await store.redis.xreadgroup(GROUP, "c1", {stream: ">"}, count=1)
    entry_id = reply[0][1][0][0]
    delivery = Delivery(job.id, stream, entry_id.decode(), dispatch=1)
    started = await store.start(delivery, "c1")
    assert started is not None and started.job.id == job.id
    return started, delivery


async def succeed(store: JobStore, started: Started, delivery: Delivery) -> Job:
    await store.succeed(started, delivery, b'{"ok":true}', RETENTION)
    return await store.get(started.job.id)


async def numsub(redis: Redis, channel: str) -> int:
    """Subscribers of a shard channel (PUBSUB SHARDNUMSUB; on Cluster, asked of its node)."""
    if isinstance(redis, RedisCluster):
        node = redis.get_node_from_key(channel)
        reply: Any = await redis.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
    else:
        reply = await redis.pubsub_shardnumsub(channel)
    return int(reply[0][1])


async def hub_connections(redis: Redis, name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The hub's connections (found by its client name), of one CLIENT LIST TYPE or all."""
    clients: Any = await redis.client_list(_type=kind) if kind else await redis.client_list()
    return [c for c in clients if c.get("name") == name]


async def drain(feed: JobFeed) -> list[Job]:
    return [job async for job in feed]


def assert_increasing(jobs: list[Job]) -> None:
    versions = [j.version for j in jobs]
    assert all(a < b for a, b in itertools.pairwise(versions)), versions


# -- fan-out and back-pressure --------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_thousand_updates_reach_fast_and_slow_listeners(hub: EventHub, store: JobStore) -> None:
    started, delivery = await running_job(store)
    job_id = started.job.id
    loop = asyncio.get_running_loop()
    fast_seen: list[Job] = []
    slow_seen: list[Job] = []

    async def read_fast(feed: JobFeed) -> float:
        async for job in feed:
            fast_seen.append(job)
        return loop.time()

    async def read_slow(feed: JobFeed) -> float:
        async for job in feed:
            slow_seen.append(job)
            await asyncio.sleep(0.02)  # a client on a slow link
        return loop.time()

    async with hub.listen_job(job_id) as fast, hub.listen_job(job_id) as slow:
        first = await fast.snapshot()
        assert first is not None and first.status == JobStatus.PROCESSING
        await slow.snapshot()
        fast_task = asyncio.create_task(read_fast(fast))
        slow_task = asyncio.create_task(read_slow(slow))
        for step in range(1000):
            await store.progress(job_id, started.attempt, step / 10, f"step {step}")
        final = await succeed(store, started, delivery)
        finished_at = loop.time()
        fast_done, slow_done = await asyncio.gather(fast_task, slow_task)

    assert final.status == JobStatus.SUCCESS
    assert final.version == first.version + 1001
    for seen in (fast_seen, slow_seen):
        assert_increasing(seen)
        assert seen[0].version > first.version
        assert seen[-1] == final  # the whole terminal state, equal to the hash
    assert len(slow_seen) < len(fast_seen) // 4, (len(slow_seen), len(fast_seen))
    assert len(fast_seen) > 500, len(fast_seen)  # it kept up, though the slow one lagged
    assert fast_done - finished_at < 0.5
    assert fast_done < slow_done


async def test_500_listeners_share_one_connection_and_the_partition_subscription(
    hub: EventHub, store: JobStore, redis: Redis, hub_name: str
) -> None:
    started, delivery = await running_job(store)
    job_id = started.job.id
    channel = store.keys.events(partition_of(job_id))
    partitions = store.keys.partitions
    feeds = await asyncio.gather(*(hub.open_job(job_id) for _ in range(500)))
    try:
        conns = await hub_connections(redis, hub_name, "pubsub")
        assert len(conns) == 1 and conns[0]["ssub"] == str(partitions), conns
        assert len(await hub_connections(redis, hub_name)) == 1
        assert await numsub(redis, channel) == 1
        stats = hub.stats()
        assert (stats.channels, stats.listeners) == (partitions, 500)
        for feed in feeds:
            await feed.snapshot()
        readers = [asyncio.create_task(drain(feed)) for feed in feeds]
        for step in range(5):
            await store.progress(job_id, started.attempt, step * 20.0)
        final = await succeed(store, started, delivery)
        results = await asyncio.gather(*readers)
    finally:
        for feed in feeds:
            feed.close()
    assert all(seen and seen[-1] == final for seen in results)
    assert {id(hub.json(seen[-1])) for seen in results} == {id(hub.json(final))}  # encoded once
    assert hub.json(final) == job_encoder.encode(final)
    for seen in results:
        assert_increasing(seen)
    assert hub.stats().listeners == 0 and hub.stats().channels == partitions
    assert await numsub(redis, channel) == 1  # the partition stays subscribed: no churn per client
    assert len(await hub_connections(redis, hub_name, "pubsub")) == 1


@pytest.mark.topologies("single", "cluster")
async def test_a_feed_closing_leaves_the_others_on_the_same_job(
    hub: EventHub, store: JobStore, redis: Redis
) -> None:
    started, _ = await running_job(store)
    channel = store.keys.events(partition_of(started.job.id))
    first = await hub.open_job(started.job.id)
    second = await hub.open_job(started.job.id)
    first.close()
    first.close()  # idempotent
    await store.progress(started.job.id, started.attempt, 10.0)
    job = await second.next(timeout=5)
    assert job is not None and job.progress == 10.0  # still delivered to the other
    second.close()
    assert hub.stats().listeners == 0
    assert await numsub(redis, channel) == 1


async def test_churn_of_listeners_sends_nothing_to_redis(
    hub: EventHub, store: JobStore, redis: Redis
) -> None:
    """Following is a dict operation: a thousand opens and closes leave one subscription."""
    started, _ = await running_job(store)
    job_id = started.job.id

    async def open_close() -> None:
        for _ in range(20):
            feed = await hub.open_job(job_id)
            await asyncio.sleep(0)
            feed.close()

    await asyncio.gather(*(open_close() for _ in range(10)))
    assert hub.stats().listeners == 0
    assert await numsub(redis, store.keys.events(partition_of(job_id))) == 1
    async with hub.listen_job(job_id) as feed:
        await feed.snapshot()
        await store.progress(job_id, started.attempt, 55.0)
        job = await feed.next(timeout=5)
        assert job is not None and job.progress == 55.0


# -- reconnects -----------------------------------------------------------------------


@pytest.mark.own_redis  # CLIENT KILL TYPE pubsub cuts every subscriber of the server
async def test_pubsub_killed_mid_job_listener_still_ends_on_terminal(
    hub: EventHub, store: JobStore, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobstream.events")
    started, delivery = await running_job(store)
    job_id = started.job.id
    seen: list[Job] = []
    halfway = asyncio.Event()

    async def read(feed: JobFeed) -> None:
        async for job in feed:
            seen.append(job)
            if job.progress >= 30:
                halfway.set()

    async def produce() -> Job:
        for step in range(600):
            await store.progress(job_id, started.attempt, step / 6)
            await asyncio.sleep(0)
        return await succeed(store, started, delivery)

    async with hub.listen_job(job_id) as feed:
        await feed.snapshot()
        reader = asyncio.create_task(read(feed))
        producer = asyncio.create_task(produce())
        await halfway.wait()
        killed = await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        final = await producer
        await reader
    assert seen[-1] == final and final.status == JobStatus.SUCCESS
    assert_increasing(seen)
    assert hub.stats().reconnects == 1
    assert any("reconnected" in r.getMessage() for r in caplog.records)


@pytest.mark.own_redis  # CLIENT KILL TYPE pubsub cuts every subscriber of the server
async def test_terminal_state_published_while_disconnected_arrives_by_resync(
    redis: Redis, store: JobStore
) -> None:
    """The terminal event is lost to pub/sub (the hub is away); the re-read snapshot carries it."""
    hub = EventHub(store, backoff_base=0.6)  # reconnect waits >= 0.3 s
    await hub.start()
    try:
        started, delivery = await running_job(store)
        owner_started, owner_delivery = await running_job(store, owner="o")
        async with hub.listen_job(started.job.id) as feed, hub.listen_owner("o") as owner_feed:
            await feed.snapshot()
            await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            final = await succeed(store, started, delivery)
            await succeed(store, owner_started, owner_delivery)
            job = await feed.next(timeout=10)
            assert job == final
            assert await owner_feed.next(timeout=10) == Resync("reconnect")
            recent = await owner_feed.snapshot()
            assert [j.status for j in recent] == [JobStatus.SUCCESS]
        assert hub.stats().reconnects == 1
    finally:
        await hub.stop()


@pytest.mark.own_redis  # CLIENT PAUSE ALL stops the whole server
async def test_idle_ping_notices_an_unresponsive_server(redis: Redis, store: JobStore) -> None:
    """No answer to the idle PING (the server is paused) counts as a lost connection."""
    hub = EventHub(store, keepalive_seconds=0.2)
    await hub.start()
    try:
        started, _ = await running_job(store)
        async with hub.listen_job(started.job.id) as feed:
            await feed.snapshot()
            await until(lambda: _true(hub.stats().connected))
            await redis.execute_command("CLIENT", "PAUSE", "1000", "ALL")
            await until(lambda: _true(hub.stats().reconnects == 1), timeout=10)
            await store.progress(started.job.id, started.attempt, 77.0)
            job = await feed.next(timeout=10)
            assert job is not None and job.progress == 77.0
    finally:
        await hub.stop()


# -- owner feeds ----------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_owner_feed_gets_all_its_jobs_and_no_one_elses(hub: EventHub, store: JobStore) -> None:
    async with hub.listen_owner("alice") as alice, hub.listen_owner("bob") as bob:
        # bob's jobs run first: were they wrongly fanned out to alice, they would reach her
        # feed before her own terminal events.
        bob_final = [await _run_to_end(store, "bob") for _ in range(2)]
        alice_final = [await _run_to_end(store, "alice") for _ in range(3)]
        alice_seen = await _collect_until_terminal(alice, {j.id for j in alice_final})
        bob_seen = await _collect_until_terminal(bob, {j.id for j in bob_final})
    assert {j.owner for j in alice_seen} == {"alice"}
    assert {j.owner for j in bob_seen} == {"bob"}
    for finals, seen in ((alice_final, alice_seen), (bob_final, bob_seen)):
        for final in finals:
            mine = [j for j in seen if j.id == final.id]
            assert_increasing(mine)
            assert mine[-1] == final


async def _run_to_end(store: JobStore, owner: str) -> Job:
    started, delivery = await running_job(store, owner)
    for step in range(3):
        await store.progress(started.job.id, started.attempt, step * 30.0)
    return await succeed(store, started, delivery)


async def _collect_until_terminal(feed: OwnerFeed, job_ids: set[str]) -> list[Job]:
    seen: list[Job] = []
    pending = set(job_ids)
    while pending:
        item = await feed.next(timeout=10)
        assert isinstance(item, Job), item
        seen.append(item)
        if item.terminal:
            pending.discard(item.id)
    return seen


async def test_owner_feed_overflow_turns_into_resync(redis: Redis, store: JobStore) -> None:
    hub = EventHub(store, owner_max_pending=5)
    await hub.start()
    try:
        async with hub.listen_owner("carol") as feed:
            for _ in range(8):  # eight distinct jobs queue up unread
                await store.create(task="demo.sleep", input_json=b"{}", owner="carol", queue="default")
            await until(lambda: _true(hub.stats().events_received >= 8))
            assert await feed.next(timeout=5) == Resync("overflow")
            snapshot = await feed.snapshot(limit=50)
            assert len(snapshot) == 8
            # everything in the snapshot is marked seen: nothing older is handed out again
            assert await feed.next(timeout=0.05) is None
    finally:
        await hub.stop()


async def _true(value: bool) -> bool:
    return value


# -- long polling ---------------------------------------------------------------------


@pytest.mark.topologies("single", "cluster")
async def test_wait_for_change(hub: EventHub, store: JobStore) -> None:
    started, delivery = await running_job(store)
    job_id = started.job.id
    version = (await store.get(job_id)).version

    t0 = time.monotonic()
    job = await hub.wait_for_change(job_id, version - 1, timeout=30)
    assert job is not None and job.version == version
    assert time.monotonic() - t0 < 5  # at once, not after the timeout

    waiter = asyncio.create_task(hub.wait_for_change(job_id, version, timeout=30))
    await until(lambda: _true(hub.stats().listeners == 1))
    await store.progress(job_id, started.attempt, 42.0, "answer")
    job = await waiter
    assert job is not None and job.version == version + 1 and job.progress == 42.0

    assert await hub.wait_for_change(job_id, version + 1, timeout=0.2) is None

    final = await succeed(store, started, delivery)
    t0 = time.monotonic()
    assert await hub.wait_for_change(job_id, final.version, timeout=30) is None  # never changes
    assert time.monotonic() - t0 < 5
    with pytest.raises(JobNotFound):
        await hub.wait_for_change("no-such-job", 0, timeout=1)
    with pytest.raises(JobNotFound):
        await hub.wait_for_change(job_id, 0, timeout=1, owner="someone-else")
    assert hub.stats().listeners == 0


# -- life cycle -----------------------------------------------------------------------


async def test_stop_ends_feeds_cleanly(
    redis: Redis, store: JobStore, hub_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = EventHub(store, client_name=hub_name)
    await hub.start()
    started, _ = await running_job(store)
    job_feed = await hub.open_job(started.job.id)
    owner_feed = await hub.open_owner("u")
    await job_feed.snapshot()

    async def iterate(feed: JobFeed | OwnerFeed) -> int:
        return len([item async for item in feed])

    readers = [asyncio.create_task(iterate(job_feed)), asyncio.create_task(iterate(owner_feed))]
    received = hub.stats().events_received
    await store.progress(started.job.id, started.attempt, 1.0)
    await until(lambda: _true(hub.stats().events_received > received))
    await hub.stop()
    counts = await asyncio.wait_for(asyncio.gather(*readers), 5)
    assert counts == [1, 1]
    with pytest.raises(FeedClosed):
        await job_feed.next(timeout=1)
    with pytest.raises(FeedClosed):
        await hub.open_job(started.job.id)
    job_feed.close()
    owner_feed.close()
    await hub.stop()  # idempotent
    assert await hub_connections(redis, hub_name) == []
    assert hub.stats().listeners == 0
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


async def test_unreachable_redis_times_out_subscribing(store: JobStore) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    hub = EventHub(store, redis_url=nowhere, subscribe_timeout=0.3)
    await hub.start()  # returns after the first (failed) attempt; keeps retrying
    try:
        with pytest.raises(EventsUnavailable):
            await hub.open_job("any")
        assert hub.stats().listeners == 0  # the feed that waited is gone again
    finally:
        await hub.stop()


@pytest.mark.topologies("single", "cluster")
async def test_changed_wakes_on_each_change_and_on_wake_and_take_hands_out_the_newest(
    hub: EventHub, store: JobStore
) -> None:
    """The SSE streams' loop: take() what is there, else await changed() (offered, ended or woken)."""
    started, delivery = await running_job(store)
    feed = await hub.open_job(started.job.id)
    assert await feed.snapshot() is not None

    waiting = asyncio.create_task(feed.changed())
    for step in range(3):  # nobody takes: the feed keeps the newest only
        await store.progress(started.job.id, started.attempt, step, f"step {step}")
    await asyncio.wait_for(waiting, 5)  # the first change woke it
    await until(lambda: _true(hub.stats().events_received >= 3))
    newest = feed.take()
    assert newest is not None and newest.message == "step 2"
    assert feed.take() is None and not feed.done

    woken = asyncio.create_task(feed.changed())
    await asyncio.sleep(0)  # let it start waiting
    assert not woken.done()
    feed.wake()  # what the keepalive tick does
    await asyncio.wait_for(woken, 5)
    assert feed.take() is None

    end = await succeed(store, started, delivery)
    assert await feed.next(timeout=5) == end
    assert feed.done  # the terminal state was handed out
    feed.close()
    with pytest.raises(FeedClosed):
        await feed.next()


# -- SSE streams on the hub --------------------------------------------------------------


class _Client:
    """An ASGI ``send`` that records each body, and raises ``error`` instead of taking body ``fail_at``."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None) -> None:
        self.bodies: list[bytes] = []
        self._fail_at = fail_at
        self._error = error

    async def send(self, message: Any) -> None:
        if message["type"] != "http.response.body":
            return
        if self._fail_at is not None and len(self.bodies) == self._fail_at:
            assert self._error is not None
            raise self._error
        self.bodies.append(message["body"])

    def has(self, text: str) -> bool:
        return any(text.encode() in body for body in self.bodies)


@pytest.mark.topologies("single", "cluster")
async def test_a_stream_whose_send_raises_does_not_stop_the_other_streams(
    hub: EventHub, store: JobStore
) -> None:
    """Each stream writes from its own task: a client gone (OSError) or a send that raises a
    BaseException (CancelledError) ends that stream alone; the others get every later event."""
    streams = EventStreams(hub, store.settings)
    started, delivery = await running_job(store)
    gone = asyncio.Event()  # never set: no client of this test disconnects by itself

    async def receive() -> Any:
        await gone.wait()
        return {"type": "http.disconnect"}

    clients = [_Client(), _Client(1, OSError("client gone")), _Client(1, asyncio.CancelledError()), _Client()]
    runs = []
    for client in clients:
        response = await streams.job_stream(started.job.id, User("u"), None)
        asgi = response.to_asgi_response(None, cast(Any, None))
        runs.append(asyncio.create_task(asgi(cast(Any, {"type": "http"}), receive, client.send)))
    await until(lambda: _true(all(len(client.bodies) == 1 for client in clients)))  # the snapshots

    await store.progress(started.job.id, started.attempt, 10.0, "first")
    failed = await asyncio.wait_for(asyncio.gather(*runs[1:3], return_exceptions=True), 5)
    assert isinstance(failed[0], OSError) and isinstance(failed[1], asyncio.CancelledError)
    await store.progress(started.job.id, started.attempt, 20.0, "second")
    end = await succeed(store, started, delivery)
    await asyncio.wait_for(asyncio.gather(runs[0], runs[3]), 5)  # each ended after the terminal state
    for client in (clients[0], clients[3]):
        assert client.has('"first"') and client.has('"second"') and client.has(f"id: {end.version}\n")
    assert streams.stats().job_streams == 0 and hub.stats().listeners == 0


async def test_a_hub_that_follows_nothing_receives_nothing(
    hub: EventHub, store: JobStore, redis: Redis, hub_name: str
) -> None:
    """A process that only creates jobs pays nothing for events: the partitions' channels are
    subscribed the first time it follows something, and held from then on."""
    started, _ = await running_job(store)
    await store.progress(started.job.id, started.attempt, 5.0)
    assert hub.stats().events_received == 0
    assert await hub_connections(redis, hub_name, "pubsub") == []
    async with hub.listen_job(started.job.id) as feed:
        await feed.snapshot()
        assert len(await hub_connections(redis, hub_name, "pubsub")) == 1
        await store.progress(started.job.id, started.attempt, 6.0)
        job = await feed.next(timeout=5)
        assert job is not None and job.progress == 6.0
    assert len(await hub_connections(redis, hub_name, "pubsub")) == 1  # held from then on
