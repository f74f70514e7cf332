"""Every state-change script, directly on a real redis-server: allowed and refused transitions."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import pytest

from broker.errors import (
    IdempotencyConflict,
    IllegalTransition,
    JobNotFound,
    QuotaExceeded,
    ScriptCode,
    StaleAttempt,
)
from broker.ids import new_job_id
from broker.keys import Keys, partition_of
from broker.lua_source import script_source
from broker.message import decode_message, encode_message
from broker.models import JobError, JobStatus
from broker.queues import PartitionsLowered, ensure_groups
from broker.registry import TaskRegistry
from broker.scripts import CreateOpts, Reply
from broker.settings import Settings, load_settings
from broker.store import GROUP, Delivery, JobStore, Started
from tests.support.deliveries import take
from tests.support.keyspace import (
    ShardListener,
    active_of,
    dead_of,
    delayed_count,
    delayed_of,
    event_record,
    index_of,
    index_size,
    queue_length,
    stream_of,
)

pytestmark = pytest.mark.topologies("single", "cluster")

ACTIVE_TTL = 5000
RETENTION = 900


@pytest.fixture
def store_settings() -> dict[str, Any]:
    """The shared ``store`` fixture, with TTLs these tests can tell apart and a cap of 3."""
    return {"active_ttl_seconds": ACTIVE_TTL, "retention_seconds": RETENTION, "max_active_per_owner": 3}


async def make(store: JobStore, owner: str = "alice", **kw: Any) -> str:
    job, created = await store.create(
        task="demo.sleep", input_json=b'{"seconds":1}', owner=owner, queue="default", **kw
    )
    assert created
    return job.id


async def running(store: JobStore) -> tuple[Started, Delivery]:
    await make(store)
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None
    return started, delivery


async def create_call(store: JobStore, job_id: str, opts: CreateOpts, owner: str = "alice") -> Reply:
    """The create script itself, as ``JobStore.create`` calls it (no retry, no replay handling)."""
    return await store.scripts.create_job(
        job_id=job_id,
        task="demo.noop",
        owner=owner,
        queue="default",
        input_json=b"{}",
        message=encode_message(job_id, "demo.noop", 1),
        active_ttl=ACTIVE_TTL,
        idempotency_key=None,
        opts=opts,
    )


def _same_place(store: JobStore) -> dict[str, Any]:
    """The settings that say where the store's keys are: its Redis, prefix and partitions."""
    s = store.settings
    return {"redis_url": s.redis_url, "prefix": s.prefix, "partitions": s.partitions}


async def raw(store: JobStore, job_id: str) -> dict[bytes, bytes]:
    fields: Any = await store.redis.hgetall(store.keys.job(job_id))
    return dict(fields)


def test_result_codes_match_the_lua_constants() -> None:
    line = next(ln for ln in script_source("start_job").splitlines() if ln.startswith("local OK,"))
    names = re.findall(r"[A-Z_]+", line.split("=")[0])
    values = [int(v) for v in re.findall(r"\d+", line.split("=")[1])]
    assert dict(zip(names, values, strict=True)) == {c.name: c.value for c in ScriptCode}


async def test_create_writes_record_index_stream_and_publishes(store: JobStore) -> None:
    job_id = new_job_id(store.keys.partitions - 1)  # the last partition: its keys, its channel
    async with ShardListener(store, store.keys.events(partition_of(job_id))) as events:
        assert (await create_call(store, job_id, CreateOpts(max_active=3))).code == ScriptCode.OK
        event = await events.next()
        assert await events.next(timeout=0.2) is None  # once: the one partition channel
    job = await store.get(job_id)
    assert (job.status, job.version, job.attempts, job.owner) == (JobStatus.PENDING, 1, 0, "alice")
    assert ACTIVE_TTL - 5 <= await store.redis.ttl(store.keys.job(job_id)) <= ACTIVE_TTL
    assert await store.redis.zscore(index_of(store, "alice", job_id), job_id) is not None
    assert await store.redis.sismember(active_of(store, "alice", job_id), job_id)
    assert await store.redis.xlen(stream_of(store, job_id)) == 1
    assert event is not None and event_record(event)["status"] == "PENDING"


async def test_idempotency_key_returns_the_same_job(store: JobStore) -> None:
    first, created = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", idempotency_key="k1"
    )
    again, created_again = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", idempotency_key="k1"
    )
    other, _ = await store.create(
        task="demo.noop", input_json=b"{}", owner="bob", queue="default", idempotency_key="k1"
    )
    assert created and not created_again
    assert again.id == first.id != other.id
    assert await queue_length(store) == 2


async def test_an_idempotency_key_replayed_with_another_input_is_refused(store: JobStore) -> None:
    first = await make(store, idempotency_key="k")
    replay = {"owner": "alice", "queue": "default", "idempotency_key": "k"}
    with pytest.raises(IdempotencyConflict, match=first):
        await store.create(task="demo.sleep", input_json=b'{"seconds":2}', **replay)
    with pytest.raises(IdempotencyConflict):
        await store.create(task="demo.noop", input_json=b"{}", **replay)
    # the same input, spaced differently, is a replay
    same, created = await store.create(task="demo.sleep", input_json=b'{ "seconds": 1 }', **replay)
    assert (same.id, created) == (first, False)
    assert await queue_length(store) == 1


async def test_a_create_sent_again_after_a_lost_reply_makes_one_job(store: JobStore) -> None:
    """The script ran but its reply was lost; the caller sends the same create (same id) again."""
    job_id = new_job_id()
    opts = CreateOpts(max_active=store.settings.max_active_per_owner)
    first = await create_call(store, job_id, opts)
    again = await create_call(store, job_id, opts)
    assert (first.code, again) == (ScriptCode.OK, Reply(ScriptCode.DUPLICATE, None, job_id))
    for _ in range(2):  # also when the first send filled the owner's quota
        await make(store)
    assert (await create_call(store, job_id, opts)).code == ScriptCode.DUPLICATE
    assert await queue_length(store) == 3
    assert await index_size(store, "alice") == 3


def test_job_ids_are_uuid7_and_ordered_by_time() -> None:
    ids = [new_job_id() for _ in range(200)]
    uuid7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
    assert all(uuid7.fullmatch(i) for i in ids)
    assert len(set(ids)) == 200
    prefixes = [i[:13] for i in ids]  # the 48-bit millisecond time
    assert prefixes == sorted(prefixes)


async def test_a_dangling_idempotency_key_is_replaced(store: JobStore) -> None:
    first, _ = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", idempotency_key="k"
    )
    await store.redis.delete(store.keys.job(first.id))  # expired, and the cleanup reconciled:
    await store.redis.srem(active_of(store, "alice", first.id), first.id)  # (a quota share may be 1)
    second, created = await store.create(
        task="demo.noop", input_json=b"{}", owner="alice", queue="default", idempotency_key="k"
    )
    assert created and second.id != first.id


async def test_quota_counts_active_jobs_only(store: JobStore) -> None:
    for _ in range(3):
        await make(store)
    with pytest.raises(QuotaExceeded):
        await make(store)
    await make(store, owner="bob")
    victim = (await store.list("alice")).jobs[0]
    await store.cancel(victim.id, "alice", RETENTION)
    await make(store)


async def test_start_takes_a_pending_job(store: JobStore) -> None:
    job_id = await make(store)
    delivery = await take(store)
    started = await store.start(delivery, "c1")
    assert started is not None and started.attempt == 1
    record = await raw(store, job_id)
    assert record[b"status"] == b"PROCESSING"
    assert record[b"worker"] == b"c1"
    assert record[b"version"] == b"2"


async def test_start_refuses_an_entry_held_by_another_consumer(store: JobStore) -> None:
    job_id = await make(store)
    delivery = await take(store, "c1")
    before = await raw(store, job_id)
    assert await store.start(delivery, "c2") is None
    assert await raw(store, job_id) == before


async def test_start_skips_and_acks_a_cancelled_job(store: JobStore) -> None:
    job_id = await make(store)
    await store.cancel(job_id, "alice", RETENTION)
    delivery = await take(store)
    assert await store.start(delivery, "c1") is None
    assert (await store.get(job_id)).status == JobStatus.CANCELLED
    assert await store.redis.xlen(delivery.stream) == 0
    pending: Any = await store.redis.xpending(delivery.stream, GROUP)
    assert pending["pending"] == 0


async def test_start_skips_a_stale_dispatch(store: JobStore) -> None:
    job_id = await make(store)
    delivery = await take(store)
    stale = Delivery(job_id, delivery.stream, delivery.entry_id, dispatch=7)
    assert await store.start(stale, "c1") is None
    assert (await store.get(job_id)).status == JobStatus.PENDING
    assert await store.redis.xlen(delivery.stream) == 0


async def test_start_of_a_missing_job_acks_its_entry(store: JobStore) -> None:
    job_id = await make(store)
    await store.redis.delete(store.keys.job(job_id))
    delivery = await take(store)
    assert await store.start(delivery, "c1") is None
    assert await store.redis.xlen(delivery.stream) == 0


async def test_progress_updates_the_running_attempt_only(store: JobStore) -> None:
    started, _ = await running(store)
    job_id = started.job.id
    assert await store.progress(job_id, 1, 40, "Parsing", 12.5) is False
    job = await store.get(job_id)
    assert (job.progress, job.message, job.eta_seconds, job.version) == (40.0, "Parsing", 12.5, 3)
    before = await raw(store, job_id)
    with pytest.raises(StaleAttempt):
        await store.progress(job_id, 2, 50, "late")
    assert await raw(store, job_id) == before


async def test_progress_refused_while_pending(store: JobStore) -> None:
    job_id = await make(store)
    before = await raw(store, job_id)
    with pytest.raises(IllegalTransition):
        await store.progress(job_id, 0, 10)
    with pytest.raises(JobNotFound):
        await store.progress("no-such-job", 1, 10)
    assert await raw(store, job_id) == before


async def test_succeed_stores_result_sets_retention_and_empties_the_stream(store: JobStore) -> None:
    started, delivery = await running(store)
    await store.succeed(started, delivery, b'{"slept":1}', RETENTION)
    job = await store.get(started.job.id)
    assert job.status == JobStatus.SUCCESS and job.progress == 100
    assert bytes(job.result) == b'{"slept":1}'
    assert job.completed_at is not None
    assert RETENTION - 5 <= await store.redis.ttl(store.keys.job(job.id)) <= RETENTION
    assert await store.redis.xlen(delivery.stream) == 0
    assert not await store.redis.sismember(active_of(store, "alice", job.id), job.id)


async def test_terminal_states_never_change(store: JobStore) -> None:
    started, delivery = await running(store)
    await store.fail(started, delivery, JobError("Boom", "it broke"), RETENTION)
    job_id = started.job.id
    job = await store.get(job_id)
    assert job.status == JobStatus.FAILURE and job.error == JobError("Boom", "it broke")
    before = await raw(store, job_id)
    with pytest.raises(IllegalTransition):
        await store.succeed(started, delivery, b"1", RETENTION)
    with pytest.raises(IllegalTransition):
        await store.cancel(job_id, "alice", RETENTION)
    with pytest.raises(IllegalTransition):
        await store.progress(job_id, 1, 99)
    assert await raw(store, job_id) == before


async def test_retry_goes_back_to_pending_with_the_error_and_a_delayed_dispatch(store: JobStore) -> None:
    started, delivery = await running(store)
    job_id = started.job.id
    await store.retry(started, delivery, JobError("Flaky", "try again"), delay_seconds=0)
    job = await store.get(job_id)
    assert job.status == JobStatus.PENDING and job.error == JobError("Flaky", "try again")
    assert job.attempts == 1
    assert await store.redis.xlen(delivery.stream) == 0
    promoted = await store.scripts.promote_due(queue="default", partition=partition_of(job_id), limit=10)
    assert promoted.moved == 1
    again = await take(store, "c2")
    assert again.dispatch == 2
    restarted = await store.start(again, "c2")
    assert restarted is not None and restarted.attempt == 2


async def test_promote_leaves_messages_that_are_not_due(store: JobStore) -> None:
    job_id = await make(store, run_at_ms=2**42)
    assert await queue_length(store) == 0
    promoted = await store.scripts.promote_due(queue="default", partition=partition_of(job_id), limit=10)
    assert promoted.moved == 0 and promoted.next_due_ms is not None and promoted.next_due_ms > 0


async def test_cancel_pending_processing_and_other_owner(store: JobStore) -> None:
    pending_id = await make(store)
    with pytest.raises(JobNotFound):
        await store.cancel(pending_id, "mallory", RETENTION)
    cancelled = await store.cancel(pending_id, "alice", RETENTION)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.error is not None and cancelled.error.type == "Cancelled"

    assert await store.start(await take(store), "c1") is None  # its entry is skipped
    started, _ = await running(store)
    async with ShardListener(store, store.keys.cancels(partition_of(started.job.id))) as cancels:
        job = await store.cancel(started.job.id, None, RETENTION)
        assert job.status == JobStatus.PROCESSING and job.cancel_requested
        assert await cancels.next() == started.job.id.encode()
    assert await store.progress(started.job.id, 1, 10) is True


async def test_reclaimed_entry_restarts_and_fences_the_old_attempt(store: JobStore) -> None:
    old, delivery = await running(store)
    await asyncio.sleep(0.01)
    claimed = await store.scripts.reclaim(
        stream=delivery.stream, group=GROUP, consumer="c2", min_idle_ms=1, count=10
    )
    assert [c.entry_id for c in claimed] == [delivery.entry_id]
    assert claimed[0].deliveries == 2
    lost = await store.scripts.renew_leases(
        stream=delivery.stream, group=GROUP, consumer="c1", idle_ms=0, entry_ids=[delivery.entry_id]
    )
    assert lost == [delivery.entry_id]
    new = await store.start(delivery, "c2")
    assert new is not None and new.attempt == 2
    with pytest.raises(StaleAttempt):
        await store.progress(old.job.id, old.attempt, 50)
    with pytest.raises(StaleAttempt):
        await store.succeed(old, delivery, b"1", RETENTION)
    assert await store.redis.xlen(delivery.stream) == 1
    await store.succeed(new, delivery, b"1", RETENTION)
    assert await store.redis.xlen(delivery.stream) == 0


async def test_dead_letter_moves_the_entry_and_fails_the_job(store: JobStore) -> None:
    started, delivery = await running(store)
    assert await store.dead_letter(delivery, "c1", b"payload", 6, "alice", RETENTION)
    job = await store.get(started.job.id)
    assert job.status == JobStatus.FAILURE
    assert job.error is not None and job.error.type == "DeliveryLimit"
    dead: Any = await store.redis.xrange(dead_of(store, job.id))
    assert len(dead) == 1 and dead[0][1][b"job"].decode() == job.id
    assert await store.redis.xlen(delivery.stream) == 0


def test_settings_read_the_environment() -> None:
    settings = load_settings({"JOBSTREAM_PREFIX": "x:", "JOBSTREAM_LEASE_SECONDS": "2.5", "OTHER": "1"})
    assert (settings.prefix, settings.lease_seconds) == ("x:", 2.5)
    with pytest.raises(msgspec.ValidationError):
        load_settings({"JOBSTREAM_LEASE_SECONDS": "soon"})
    assert Settings().queues == ("default",)


async def test_listing_pages_are_stable_while_jobs_are_created(store: JobStore) -> None:
    store.settings = load_settings({}, **_same_place(store), max_active_per_owner=0)
    for _ in range(23):
        await make(store)
    seen: list[str] = []
    page = await store.list("alice", limit=5)
    while True:
        seen += [job.id for job in page.jobs]
        await make(store)  # a newer job must not shift the next page
        if page.cursor is None:
            break
        page = await store.list("alice", limit=5, cursor=page.cursor)
    assert len(seen) == len(set(seen)) == 23
    by_id = {}
    for partition in range(store.keys.partitions):
        index = store.keys.owner_jobs("alice", partition)
        rows: Any = await store.redis.zrange(index, 0, -1, withscores=True)
        by_id.update({member.decode(): score for member, score in rows})
    keys = [(by_id[i], i) for i in seen]
    assert keys == sorted(keys, reverse=True)


async def test_listing_filters_and_skips_expired_records(store: JobStore) -> None:
    ids = [await make(store) for _ in range(3)]
    await store.redis.delete(store.keys.job(ids[1]))
    await store.cancel(ids[0], "alice", RETENTION)
    page = await store.list("alice", status=JobStatus.PENDING)
    assert [job.id for job in page.jobs] == [ids[2]]
    assert [job.id for job in (await store.list("alice")).jobs] == [ids[2], ids[0]]
    with pytest.raises(ValueError, match="cursor"):
        await store.list("alice", cursor="12")


async def test_jobs_list_in_creation_order_within_one_millisecond(store: JobStore) -> None:
    """Many creates in one pipeline land in the same millisecond (often the same microsecond)."""
    store.settings = load_settings({}, **_same_place(store), max_active_per_owner=0)
    created = await asyncio.gather(*(make(store) for _ in range(60)))
    by_time = {job_id: (await store.get(job_id)).created_at for job_id in created}
    assert len(set(by_time.values())) < len(created)  # some share a millisecond
    sequence: dict[str, float] = {}
    for partition in range(store.keys.partitions):  # each partition's index order is total
        index = store.keys.owner_jobs("alice", partition)
        rows: Any = await store.redis.zrange(index, 0, -1, withscores=True)
        assert len({score for _, score in rows}) == len(rows)
        sequence.update({member.decode(): score for member, score in rows})
    listed: list[str] = []
    cursor = None
    while True:
        page = await store.list("alice", limit=7, cursor=cursor)
        listed += [job.id for job in page.jobs]
        if (cursor := page.cursor) is None:
            break
    # One partition: exactly creation order. Several (on several nodes, created at once):
    # the merge of the partitions' orders by (sequence, id), each partition's own intact.
    assert listed == sorted(created, key=lambda i: (sequence[i], i), reverse=True)
    for partition in range(store.keys.partitions):
        mine = [i for i in created if partition_of(i) == partition]
        assert [i for i in listed if partition_of(i) == partition] == mine[::-1]
    if store.keys.partitions == 1:
        assert listed == created[::-1]


async def test_cancelling_a_delayed_job_takes_its_message_off_the_delayed_set(store: JobStore) -> None:
    job_id = await make(store, delay_ms=3_600_000)
    other = await make(store, delay_ms=3_600_000)
    assert await delayed_count(store) == 2
    cancelled = await store.cancel(job_id, "alice", RETENTION)
    assert cancelled.status == JobStatus.CANCELLED
    places = {delayed_of(store, i) for i in (job_id, other)}
    remaining: Any = [m for place in places for m in await store.redis.zrange(place, 0, -1)]
    assert [decode_message(m).task_id for m in remaining] == [other]


# -- opts, times from Redis TIME, updated_at, retention ---------------------------------------


async def redis_ms(store: JobStore) -> int:
    seconds, micros = await store.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_create_opts_omitted_take_the_scripts_defaults(store: JobStore) -> None:
    job_id = new_job_id()
    reply = await create_call(store, job_id, CreateOpts())  # no quota, no idempotency key, run now
    assert reply.code == ScriptCode.OK and reply.record is not None
    assert b"run_at" not in reply.record
    assert await queue_length(store) == 1
    assert await delayed_count(store) == 0
    assert [k async for k in store.redis.scan_iter(match=store.keys.idempotency_pattern)] == []


async def test_create_opts_given_are_read_by_name(store: JobStore) -> None:
    before = await redis_ms(store)
    delayed = await create_call(store, new_job_id(), CreateOpts(delay_ms=60_000, max_active=2))
    after = await redis_ms(store)
    assert delayed.code == ScriptCode.OK and delayed.record is not None
    run_at = int(delayed.record[b"run_at"])
    assert before + 60_000 <= run_at <= after + 60_000  # Redis TIME + delay, in the script
    delayed_id = delayed.record[b"id"].decode()
    message = encode_message(delayed_id, "demo.noop", 1)
    assert await store.redis.zscore(delayed_of(store, delayed_id), message) == run_at
    assert (await create_call(store, new_job_id(), CreateOpts(max_active=2))).code == ScriptCode.OK
    assert (await create_call(store, new_job_id(), CreateOpts(max_active=2))).code == ScriptCode.QUOTA


async def test_progress_opts_keep_the_message_when_omitted_and_clear_the_eta(store: JobStore) -> None:
    started, _ = await running(store)
    job_id = started.job.id
    await store.progress(job_id, 1, 10, "parsing", eta_seconds=12.5)
    job = await store.get(job_id)
    assert (job.progress, job.message, job.eta_seconds) == (10, "parsing", 12.5)
    await store.progress(job_id, 1, 20)  # no message, no ETA
    job = await store.get(job_id)
    assert (job.progress, job.message, job.eta_seconds) == (20, "parsing", None)


async def test_updated_at_moves_with_every_change_on_the_redis_clock(store: JobStore) -> None:
    stamps: list[tuple[int, int, int]] = []  # (Redis ms before, updated_at, Redis ms after)

    async def stamped(change: Any) -> None:
        before = await redis_ms(store)
        await change
        after = await redis_ms(store)
        fields = await raw(store, job_id)
        stamps.append((before, int(fields[b"updated_at"]), after))

    job_id = new_job_id()
    await stamped(create_call(store, job_id, CreateOpts()))
    delivery = await take(store)
    await asyncio.sleep(0.002)  # so each change falls in a later millisecond than the last
    await stamped(store.start(delivery, "c1"))
    await asyncio.sleep(0.002)
    await stamped(store.progress(job_id, 1, 50))
    await asyncio.sleep(0.002)
    await stamped(store.cancel(job_id, "alice", RETENTION))
    for before, updated_at, after in stamps:
        assert before <= updated_at <= after
    assert [s[1] for s in stamps] == sorted({s[1] for s in stamps})  # strictly increasing
    job = await store.get(job_id)
    assert job.updated_at.timestamp() * 1000 == stamps[-1][1]
    assert job.created_at.timestamp() * 1000 == stamps[0][1]


async def test_a_retry_is_due_its_backoff_after_redis_time(store: JobStore) -> None:
    started, delivery = await running(store)
    before = await redis_ms(store)
    await store.retry(started, delivery, JobError("Flaky", "again"), delay_seconds=30)
    after = await redis_ms(store)
    fields = await raw(store, started.job.id)
    run_at = int(fields[b"run_at"])
    assert before + 30_000 <= run_at <= after + 30_000
    [(_, score)] = await store.redis.zrange(delayed_of(store, started.job.id), 0, -1, withscores=True)
    assert score == run_at


async def test_zero_retention_publishes_the_end_then_deletes_the_record(store: JobStore) -> None:
    started, delivery = await running(store)
    async with ShardListener(store, store.keys.events(partition_of(started.job.id))) as events:
        await store.succeed(started, delivery, b"1", retention=0)
        event = await events.next()
    assert event is not None and event_record(event)["status"] == "SUCCESS"
    assert not await store.redis.exists(store.keys.job(started.job.id))
    assert await store.redis.xlen(delivery.stream) == 0


def test_retention_has_one_rule_and_zero_is_a_value() -> None:
    tasks = TaskRegistry()

    async def fn(ctx: Any, data: dict[str, Any]) -> None:
        return None

    tasks.task("kept.default")(fn)
    tasks.task("kept.never", retention=0)(fn)
    tasks.task("kept.hour", retention=3600)(fn)
    assert [tasks.get(n).retention(99) for n in ("kept.default", "kept.never", "kept.hour")] == [99, 0, 3600]
    assert tasks.retention("not.registered", 99) == 99
    with pytest.raises(ValueError, match="retention"):
        tasks.task("kept.negative", retention=-1)(fn)


async def test_a_process_with_fewer_partitions_than_were_used_refuses_to_start(store: JobStore) -> None:
    redis, prefix = store.redis, f"{store.keys.prefix}meta-"
    await ensure_groups(redis, Keys(prefix, 4), ["default"])
    await ensure_groups(redis, Keys(prefix, 8), ["default"])  # raising it is fine
    with pytest.raises(PartitionsLowered, match="JOBSTREAM_PARTITIONS=8"):
        await ensure_groups(redis, Keys(prefix, 4), ["default"])
    await ensure_groups(redis, Keys(prefix, 8), ["default"])
