"""Scheduler maintenance in process, on a real redis-server: cleanup, reaper, tick claims, kick."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq.exceptions import ScheduledTaskCancelledError, SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from broker.errors import NotReplicated, ScriptCode, UnknownTask
from broker.keys import Keys, partition_of
from broker.message import decode_message
from broker.models import JobStatus
from broker.registry import registry
from broker.scripts import Scripts
from broker.settings import Settings, load_settings
from broker.store import GROUP, Delivery, JobStore, Started
from broker.validation import InvalidInput
from scheduler.cleanup import Cleanup
from scheduler.reaper import Reaper
from scheduler.schedule_source import InvalidSchedule, JobScheduleSource, build_schedule, remove_schedule
from scheduler.scheduler import JobScheduler, fire_key
from scheduler.ticks import Periodic, Ticker
from tests.support.deliveries import take
from tests.support.keyspace import ShardListener, delayed_of, event_record, stream_of
from tests.support.polling import until
from workers.job_broker import JobBroker
from workers.tasks import demo  # noqa: F401 - registers the demo tasks

pytestmark = pytest.mark.timeout(30)

LEASE = 0.3


def settings_for(redis_url: str, prefix: str, **overrides: Any) -> Settings:
    return load_settings({}, redis_url=redis_url, prefix=prefix, **{"lease_seconds": LEASE, **overrides})


@pytest.fixture
def store_settings() -> dict[str, Any]:
    """The shared ``store`` fixture, with this module's short lease."""
    return {"lease_seconds": LEASE}


async def create(store: JobStore, owner: str = "alice", task: str = "demo.noop", **kw: Any) -> str:
    job, created = await store.create(task=task, input_json=b"{}", owner=owner, queue="default", **kw)
    assert created
    return job.id


async def start_next(store: JobStore) -> tuple[Started, Delivery]:
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None
    return started, delivery


async def server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def index_ids(redis: Redis, keys: Keys, owner: str) -> set[str]:
    partitions = range(keys.partitions)
    return {m.decode() for p in partitions for m in await redis.zrange(keys.owner_jobs(owner, p), 0, -1)}


async def active_ids(redis: Redis, keys: Keys, owner: str) -> set[str]:
    partitions = range(keys.partitions)
    return {m.decode() for p in partitions for m in await redis.smembers(keys.owner_active(owner, p))}


# ---------------------------------------------------------------- cleanup


async def test_cleanup_leaves_no_dangling_ids_after_jobs_expire(store: JobStore, redis: Redis) -> None:
    keys = store.keys
    # Three jobs run to the end with a one-second retention, as a worker would end them.
    finished = set()
    for owner in ("alice", "alice", "bob"):
        finished.add(await create(store, owner, idempotency_key=f"key-{len(finished)}"))
    for _ in finished:
        started, delivery = await start_next(store)
        await store.succeed(started, delivery, b"null", retention=1)
    live = {await create(store, "alice"), await create(store, "bob")}
    # Two more whose records simply expire (a PENDING one still sits in the active set).
    expired = {await create(store, "alice"), await create(store, "carol")}
    for job_id in expired:
        await redis.pexpire(keys.job(job_id), 1)

    async def all_gone() -> bool:
        return not any([await redis.exists(keys.job(j)) for j in finished | expired])

    await until(all_gone, 5, "the records to expire")
    assert (await store.list("alice")).jobs  # listing still works with dangling ids

    counts = await Cleanup(redis, store.settings, store.scripts, batch=2).run()

    assert counts["index"] == len(finished | expired)
    assert counts["active"] == len(expired)  # the finished ones had left their active set
    assert counts["idempotency"] == 3
    remaining = set()
    for owner in ("alice", "bob", "carol"):
        ids = await index_ids(redis, keys, owner)
        assert all([await redis.exists(keys.job(j)) for j in ids]), owner
        remaining |= ids
        assert await active_ids(redis, keys, owner) <= live
        listed = {job.id for job in (await store.list(owner, limit=50)).jobs}
        assert listed == ids
    assert remaining == live
    assert not await redis.exists(keys.owner_jobs("carol", 0))
    assert not [k async for k in redis.scan_iter(keys.idempotency_pattern)]
    assert await Cleanup(redis, store.settings, store.scripts).run() == dict.fromkeys(counts, 0)


async def test_cleanup_keeps_an_idempotency_key_a_new_job_took_over(store: JobStore, redis: Redis) -> None:
    keys = store.keys
    old = await create(store, idempotency_key="same")
    await redis.delete(keys.job(old))
    new, is_new = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", idempotency_key="same"
    )
    assert is_new and new.id != old
    scripts = store.scripts
    # A stale read of the key (still naming the old job) must not delete the new mapping.
    idempotency = keys.idempotency("alice", "same", partition_of(new.id))
    assert not await scripts.drop_idempotency(key=idempotency, job_id=old)
    await Cleanup(redis, store.settings, scripts).run()
    assert await redis.get(idempotency) == new.id.encode()


async def test_cleanup_over_five_thousand_expired_index_entries(store: JobStore, redis: Redis) -> None:
    keys = store.keys
    live = {await create(store, "big") for _ in range(20)}
    gone = [f"gone-{n}" for n in range(5000)]
    for start in range(0, len(gone), 1000):
        await redis.zadd(keys.owner_jobs("big", 0), {g: n for n, g in enumerate(gone[start : start + 1000])})
    counts = await Cleanup(redis, store.settings, store.scripts, batch=500).run()
    assert counts["index"] == 5000
    assert await index_ids(redis, keys, "big") == live


async def test_cleanup_trims_dead_letters_by_age(
    store: JobStore, redis: Redis, redis_url: str, prefix: str
) -> None:
    keys = store.keys
    dead = keys.dead("default", 0)
    now_ms = await server_ms(redis)
    for n in range(250):  # older than the one-hour retention
        await redis.xadd(dead, {"data": "x"}, id=f"{now_ms - 7_200_000 + n}-0")
    for n in range(3):
        await redis.xadd(dead, {"data": "y"}, id=f"{now_ms - 60_000 + n}-0")
    settings = settings_for(redis_url, prefix, dead_retention_seconds=3600)
    counts = await Cleanup(redis, settings, store.scripts, batch=10).run()
    assert counts["dead"] == 250
    assert [f[b"data"] for _i, f in await redis.xrange(dead)] == [b"y"] * 3


async def test_cleanup_never_lets_a_heartbeat_outlive_its_worker(store: JobStore, redis: Redis) -> None:
    keys = store.keys
    now_ms = await server_ms(redis)
    await redis.hset(keys.worker("dead"), mapping={"seen_at": now_ms - 60_000})
    await redis.hset(keys.worker("fresh"), mapping={"seen_at": now_ms})
    await redis.hset(keys.worker("kept"), mapping={"seen_at": now_ms})
    await redis.expire(keys.worker("kept"), 100)
    counts = await Cleanup(redis, store.settings, store.scripts).run()
    assert counts["heartbeats"] == 2
    assert not await redis.exists(keys.worker("dead"))
    assert 0 < await redis.pttl(keys.worker("fresh")) <= LEASE * 3 * 1000
    assert 90 < await redis.ttl(keys.worker("kept")) <= 100


# ---------------------------------------------------------------- reaper


def reaper_for(store: JobStore, **overrides: Any) -> Reaper:
    settings = settings_for(store.settings.redis_url, store.settings.prefix, **overrides)
    return Reaper(store.redis, settings, store.scripts, registry, ["default"], batch=2)


async def test_reaper_fails_a_processing_job_whose_entry_is_gone_and_publishes_it(
    store: JobStore, redis: Redis
) -> None:
    keys = store.keys
    job_id = await create(store)
    _started, delivery = await start_next(store)
    # The entry vanishes (trimmed, lost in a failover): nobody holds a lease on it now.
    await redis.xack(delivery.stream, GROUP, delivery.entry_id)
    await redis.xdel(delivery.stream, delivery.entry_id)
    async with ShardListener(store, keys.events(partition_of(job_id))) as events:
        reaper = reaper_for(store)

        async def reaped() -> bool:
            return (await reaper.run())["lost"] == 1

        await until(reaped, 5, "the reaper to fail the lost job")  # once unchanged for a lease
        event = await events.next()
    assert event is not None
    published = event_record(event)
    assert published["status"] == "FAILURE"
    assert json.loads(published["error"])["type"] == "Lost"
    job = await store.get(job_id)
    assert job.status == JobStatus.FAILURE and job.error is not None and job.error.type == "Lost"
    assert str(job.version) == published["version"]
    assert job_id not in await active_ids(redis, keys, "alice")


async def test_reaper_spares_jobs_whose_message_is_still_queued(store: JobStore, redis: Redis) -> None:
    keys = store.keys
    running = await create(store)
    await start_next(store)  # PROCESSING, its entry pending (idle: its worker may be dead)
    waiting = await create(store)  # PENDING in the stream
    seconds, _ = await redis.time()
    later = await create(store, run_at_ms=int(seconds) * 1000 + 60_000)  # PENDING in the delayed set
    before = {j: (await store.get(j)).version for j in (running, waiting, later)}
    # A lease of a millisecond: every job already counts as quiet, even the running one.
    counts = await reaper_for(store, lease_seconds=0.001).run()
    assert counts["lost"] == counts["resent"] == counts["failed_pending"] == 0
    assert {j: (await store.get(j)).version for j in before} == before
    assert await active_ids(redis, keys, "alice") == {running, waiting, later}


async def test_reaper_resends_a_pending_job_whose_message_is_gone(store: JobStore, redis: Redis) -> None:
    job_id = await create(store)
    stream = stream_of(store, job_id)
    await redis.xtrim(stream, maxlen=0)  # the message is lost before any worker read it
    reaper = reaper_for(store)

    async def resent() -> bool:
        return (await reaper.run())["resent"] == 1

    await until(resent, 5, "the reaper to resend the job")
    delivery = await take(store)
    assert (delivery.job_id, delivery.dispatch) == (job_id, 2)
    assert await store.start(delivery, "c1") is not None
    assert (await store.get(job_id)).status == JobStatus.PROCESSING


async def test_reaper_can_fail_a_pending_job_whose_message_is_gone(store: JobStore, redis: Redis) -> None:
    job_id = await create(store)
    await redis.xtrim(stream_of(store, job_id), maxlen=0)
    reaper = reaper_for(store, reap_pending="fail")

    async def failed() -> bool:
        return (await reaper.run())["failed_pending"] == 1

    await until(failed, 5, "the reaper to fail the job")
    job = await store.get(job_id)
    assert job.status == JobStatus.FAILURE and job.error is not None and job.error.type == "Lost"


async def test_reap_is_fenced_on_the_version_the_reaper_saw(store: JobStore, redis: Redis) -> None:
    job_id = await create(store)
    seen = (await store.get(job_id)).version
    _started, _delivery = await start_next(store)  # a worker acts after the reaper's read
    reply = await store.scripts.reap_job(
        job_id=job_id,
        owner="alice",
        queue="default",
        version_seen=str(seen).encode(),
        min_idle_ms=0,
        active_ttl=60,
        retention=60,
        error_json=b"{}",
        pending_action="fail",
        message=b"",
        dispatch=2,
        opts=store.terminal_opts,
    )
    assert reply.code == ScriptCode.STALE
    assert (await store.get(job_id)).status == JobStatus.PROCESSING


async def test_reaper_promotes_due_delayed_messages(store: JobStore, redis: Redis) -> None:
    seconds, _ = await redis.time()
    job_id = await create(store, run_at_ms=int(seconds) * 1000 + 60_000)
    delayed = delayed_of(store, job_id)
    [message] = await redis.zrange(delayed, 0, -1)
    await redis.zadd(delayed, {message: 0}, xx=True)  # due now, and no worker to promote it
    counts = await reaper_for(store).run()
    assert counts["promoted"] == 1
    assert (await take(store)).job_id == job_id


# ---------------------------------------------------------------- tick claims


async def test_each_tick_runs_on_one_replica_only(store: JobStore, redis: Redis) -> None:
    key = store.keys.lock("probe")
    slots: list[int] = []

    async def run() -> dict[str, int]:
        slots.append(int(await redis.hget(key, "slot") or 0))  # the slot just claimed
        return {"n": 1}

    scripts = Scripts.register(redis, store.keys)
    tickers = [Ticker(redis, scripts, f"r{n}", Periodic("probe", 0.2, run)) for n in range(3)]
    loops = [asyncio.create_task(t.run_forever()) for t in tickers]

    async def five_done() -> bool:  # and every claimed run recorded: the loops are asleep
        runs, completed = await redis.hmget(key, ["runs", "completed"])
        return len(slots) >= 5 and int(runs or 0) == int(completed or 0) == len(slots)

    try:
        await until(five_done, 5, "five ticks")
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    assert len(set(slots)) == len(slots), slots  # no slot ran twice
    assert all(slot % 200 == 0 for slot in slots)
    assert sorted(slots) == slots
    record = await redis.hgetall(key)
    assert int(record[b"total_n"]) == len(slots)
    assert int(record[b"attempts"]) >= 2 * len(slots)  # every replica tried every tick


# ---------------------------------------------------------------- firing schedules


async def test_kick_creates_a_job_deduplicated_by_its_fire_key(
    redis: Redis, redis_url: str, prefix: str
) -> None:
    settings = settings_for(redis_url, prefix)
    broker = JobBroker(settings, registry)
    schedule = build_schedule(registry, "demo.sleep", b'{"seconds": 0.1}', every_seconds=5, owner="ops")
    labels = {**schedule.labels, "idempotency_key": fire_key(schedule, time.time())}
    for _ in range(2):  # two replicas fire the same slot
        await AsyncKicker("demo.sleep", broker, dict(labels)).kiq(**schedule.kwargs)
    store = JobStore(redis, settings)
    jobs = (await store.list("ops")).jobs
    assert len(jobs) == 1
    assert jobs[0].type == "demo.sleep" and jobs[0].status == JobStatus.PENDING
    assert msgspec.json.decode(jobs[0].input)["seconds"] == 0.1  # stored as POST /jobs stores it
    message = decode_message((await redis.xrange(stream_of(store, jobs[0].id)))[0][1][b"data"])
    assert message.task_id == jobs[0].id
    with pytest.raises(SendTaskError) as refused:
        await AsyncKicker("demo.sleep", broker, {}).kiq(seconds="soon")
    assert isinstance(refused.value.__cause__, InvalidInput)  # Jobstream.submit's own check
    await broker.redis.aclose()


async def test_replicas_firing_one_schedule_create_one_job_and_bad_ones_are_logged(
    redis: Redis, redis_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(redis_url, prefix)
    broker = JobBroker(settings, registry)
    replicas = [JobScheduler(broker, [], settings) for _ in range(2)]
    source = LabelScheduleSource(broker)
    schedule = build_schedule(registry, "demo.noop", every_seconds=3600, owner="ops")
    for replica in replicas:
        await replica.on_ready(source, schedule)
    assert len((await JobStore(redis, settings).list("ops")).jobs) == 1
    bad = schedule.model_copy(update={"task_name": "demo.sleep", "kwargs": {"seconds": "soon"}})
    await replicas[0].on_ready(source, bad)  # logged, not raised: the scheduler goes on
    assert "no job created" in caplog.text
    await broker.redis.aclose()


async def test_a_firing_that_meets_a_redis_fault_is_sent_again_until_it_lands(
    redis: Redis,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failover under a firing (a lost connection, then a create no replica confirmed yet)
    delays its job; it does not drop it."""
    settings = settings_for(redis_url, prefix)
    broker = JobBroker(settings, registry)
    faults: list[Exception] = [RedisConnectionError("the primary went away"), NotReplicated(1, 0, 500)]
    kick = broker.kick

    async def kick_after_faults(message: Any) -> None:
        if faults:
            raise faults.pop(0)
        await kick(message)

    monkeypatch.setattr(broker, "kick", kick_after_faults)
    schedule = build_schedule(registry, "demo.noop", every_seconds=3600, owner="ops")
    await JobScheduler(broker, [], settings).on_ready(LabelScheduleSource(broker), schedule)
    assert not faults
    assert len((await JobStore(redis, settings).list("ops")).jobs) == 1
    assert "no job created" not in caplog.text
    assert "Redis is unreachable" in caplog.text and "Redis is back" in caplog.text
    await broker.redis.aclose()


def test_fire_keys_agree_across_replicas_and_differ_across_slots() -> None:
    cron = build_schedule(registry, "demo.noop", cron="*/5 * * * *", schedule_id="c")
    every = build_schedule(registry, "demo.noop", every_seconds=10, schedule_id="e")
    base = 1_800_000_000.0  # a whole minute
    assert fire_key(cron, base + 0.004) == fire_key(cron, base - 0.003) == fire_key(cron, base + 20)
    assert fire_key(cron, base) != fire_key(cron, base + 300)
    assert fire_key(every, base + 10.002) == fire_key(every, base + 14) != fire_key(every, base + 20)


def test_a_bad_schedule_is_refused_when_added() -> None:
    with pytest.raises(UnknownTask):
        build_schedule(registry, "no.such.task", cron="* * * * *")
    with pytest.raises(InvalidSchedule, match="invalid input"):
        build_schedule(registry, "demo.sleep", b'{"seconds": -1}', every_seconds=1)
    with pytest.raises(InvalidSchedule, match="cron"):
        build_schedule(registry, "demo.noop", cron="every minute")
    with pytest.raises(InvalidSchedule, match="exactly one"):
        build_schedule(registry, "demo.noop", cron="* * * * *", every_seconds=5)
    with pytest.raises(InvalidSchedule, match="at least 1"):
        build_schedule(registry, "demo.noop", every_seconds=0)


# ---------------------------------------------------------------- the schedule source


async def test_the_schedule_source_reads_what_taskiq_redis_stored_and_one_shots_end(
    redis_url: str, prefix: str
) -> None:
    """Same Redis layout as taskiq-redis's ``ListRedisScheduleSource`` (JSON): nothing to migrate."""
    settings = settings_for(redis_url, prefix)
    old = ListRedisScheduleSource(redis_url, prefix=f"{prefix}schedule", serializer=JSONSerializer())
    cron = build_schedule(registry, "demo.noop", cron="*/5 * * * *", schedule_id="c", owner="ops")
    due = dt.datetime.now(dt.UTC)
    once = build_schedule(registry, "demo.noop", at=due, schedule_id="o")
    await old.add_schedule(cron)
    source = JobScheduleSource(settings)
    try:
        await source.add_schedule(once)
        assert {s.schedule_id for s in await old.get_schedules()} == {"c", "o"}  # and back
        found = {s.schedule_id: s for s in await source.get_schedules()}
        assert found.keys() == {"c", "o"}
        assert found["c"].cron == "*/5 * * * *" and found["c"].labels == {"owner": "ops"}
        await source.post_send(found["o"])  # a one-shot, once sent, is gone
        await source.post_send(found["c"])  # a cron stays
        assert [s.schedule_id for s in await source.list_all()] == ["c"]
        assert await remove_schedule(settings, "c") and not await remove_schedule(settings, "c")
        assert await source.get_schedules() == []
        with pytest.raises(ScheduledTaskCancelledError):
            await source.pre_send(cron)  # removed: not sent, even by a scheduler that read it before
    finally:
        await source.shutdown()
        await old.shutdown()
