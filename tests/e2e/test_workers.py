"""Workers that never lose or duplicate a job, with real worker processes on a real Redis.

The tests of what partitions change (reading every partition, reclaim, cancels, delayed
retries, named queues, a timeout) run on a Redis Cluster too; those of a worker's own life
(shutdown, its start command, lease arithmetic, dead letters) on one Redis, to keep the
suite short.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from broker.models import JobStatus
from broker.registry import JobContext, TaskRegistry
from broker.store import GROUP, Delivery
from tests.support.keyspace import active_count, dead_entries, queue_length, stream_of
from tests.support.procs import stop
from tests.support.worker_support import (
    LEASE,
    MAX_DELIVERIES,
    Cluster,
    ended,
    key,
    open_cluster,
    processing,
    worker_pid,
)
from workers.executor import JobExecutor

pytestmark = pytest.mark.topologies("single", "cluster")


@pytest.fixture
async def cluster(redis: Redis, redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(redis, redis_url, prefix, tmp_path / "workers.log") as c:
        yield c


@pytest.mark.timeout(60)
async def test_sigkill_mid_job_restarts_it_elsewhere_never_concurrently(cluster: Cluster) -> None:
    first, second = cluster.worker(), cluster.worker()
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.counted", {"key": k, "seconds": 3})
    await cluster.wait(job_id, processing, 20)
    deadline = time.monotonic() + 10
    while not await cluster.store.redis.llen(f"{k}:starts"):  # the task's code is running
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    victim = await worker_pid(cluster.store, job_id)
    stop(first if first.pid == victim else second, signal.SIGKILL)
    killed_at = time.time()
    job = await cluster.wait(job_id, ended, LEASE + 5 + 3)
    assert job.status == JobStatus.SUCCESS, job.error
    assert job.attempts == 2
    assert await cluster.count(f"{k}:runs") == 2
    starts = [float(x) for x in await cluster.store.redis.lrange(f"{k}:starts", 0, -1)]
    assert starts[1] > killed_at  # the second run began only once the first was dead
    assert job.started_at is not None and job.completed_at is not None
    assert job.completed_at.timestamp() - killed_at < LEASE + 5 + 3
    assert await worker_pid(cluster.store, job_id) != victim


@pytest.mark.timeout(60)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_a_job_longer_than_five_leases_runs_once(cluster: Cluster) -> None:
    cluster.worker()
    cluster.worker()
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.counted", {"key": k, "seconds": 5 * LEASE})
    job = await cluster.wait(job_id, ended, 5 * LEASE + 15)
    assert job.status == JobStatus.SUCCESS
    assert job.attempts == 1
    assert await cluster.count(f"{k}:runs") == 1


@pytest.mark.timeout(120)
async def test_two_thousand_noops_over_three_workers_run_once_each(cluster: Cluster) -> None:
    ids = [await cluster.submit("demo.noop") for _ in range(2000)]
    for _ in range(3):
        cluster.worker()
    store = cluster.store
    deadline = time.monotonic() + 90
    while await active_count(store, "tester") > 0:
        assert time.monotonic() < deadline, cluster.tail()
        await asyncio.sleep(0.1)
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(store.keys.job(job_id), "status", "attempts")
        rows = await pipe.execute()
    assert {(status, attempts) for status, attempts in rows} == {(b"SUCCESS", b"1")}
    assert await queue_length(store) == 0
    for partition in range(store.keys.partitions):
        pending: Any = await store.redis.xpending(store.keys.queue("default", partition), GROUP)
        assert pending["pending"] == 0


@pytest.mark.timeout(90)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_a_message_that_kills_its_worker_ends_in_the_dead_stream(cluster: Cluster) -> None:
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.crash", {"key": k})
    deadline = time.monotonic() + 60
    while not (job := await cluster.store.get(job_id)).terminal:
        assert time.monotonic() < deadline, cluster.tail()
        if all(proc.poll() is not None for proc in cluster.workers):
            cluster.worker()  # the operator's restart policy
        await asyncio.sleep(0.05)
    assert job.status == JobStatus.FAILURE
    assert job.error is not None and job.error.type == "DeliveryLimit"
    assert await cluster.count(f"{k}:runs") == MAX_DELIVERIES
    dead: Any = await dead_entries(cluster.store)
    assert [entry[1][b"job"].decode() for entry in dead] == [job_id]
    assert await queue_length(cluster.store) == 0


@pytest.mark.timeout(60)
async def test_retries_back_off_exponentially_then_succeed(cluster: Cluster) -> None:
    cluster.worker()
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.flaky", {"key": k, "fails": 2})
    seen_pending_with_error = await cluster.wait(
        job_id, lambda j: j.status == JobStatus.PENDING and j.error is not None, 20
    )
    assert seen_pending_with_error.error is not None
    assert seen_pending_with_error.error.type == "RuntimeError"
    assert seen_pending_with_error.run_at is not None
    job = await cluster.wait(job_id, ended, 30)
    assert job.status == JobStatus.SUCCESS and job.attempts == 3
    starts = [float(x) for x in await cluster.store.redis.lrange(f"{k}:starts", 0, -1)]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # backoff 0.4 s * 2**(attempt-1), jittered down to half at most
    assert gaps[0] >= 0.2 - 0.05 and gaps[1] >= 0.4 - 0.05


@pytest.mark.timeout(60)
async def test_timeout_fails_the_job_and_stops_its_code(cluster: Cluster) -> None:
    cluster.worker()
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.slow", {"key": k, "seconds": 1.5})
    job = await cluster.wait(job_id, ended, 20)
    assert job.status == JobStatus.FAILURE
    assert job.error is not None and job.error.type == "Timeout"
    await asyncio.sleep(1.5)  # the task would have finished by now had it not been stopped
    assert await cluster.count(f"{k}:finished") == 0


@pytest.mark.timeout(60)
async def test_cancel_a_running_job_stops_it_within_a_second(cluster: Cluster) -> None:
    cluster.worker()
    job_id = await cluster.submit("demo.sleep", {"seconds": 20, "steps": 200})
    await cluster.wait(job_id, lambda j: j.progress > 0, 20)
    asked = time.monotonic()
    job = await cluster.store.cancel(job_id, None, 600)
    assert job.cancel_requested
    job = await cluster.wait(job_id, ended, 1.0)
    assert job.status == JobStatus.CANCELLED
    assert time.monotonic() - asked < 1.0
    version = job.version
    await asyncio.sleep(0.5)  # two progress steps' worth: none may come
    assert (await cluster.store.get(job_id)).version == version
    assert await queue_length(cluster.store) == 0


@pytest.mark.timeout(60)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_sigterm_lets_the_running_job_finish(cluster: Cluster) -> None:
    proc = cluster.worker()
    job_id = await cluster.submit("demo.sleep", {"seconds": 2, "steps": 4})
    await cluster.wait(job_id, processing, 20)
    consumer: Any = await cluster.store.redis.hget(cluster.store.keys.job(job_id), "worker")
    heartbeat = cluster.store.keys.worker(consumer.decode())
    assert await cluster.store.redis.hget(heartbeat, "pid") == str(proc.pid).encode()
    proc.send_signal(signal.SIGTERM)
    job = await cluster.wait(job_id, ended, 20)
    assert job.status == JobStatus.SUCCESS and job.attempts == 1
    assert proc.wait(20) == 0
    assert not await cluster.store.redis.exists(heartbeat)


@pytest.mark.timeout(60)
async def test_named_queues_scale_separately(cluster: Cluster) -> None:
    k = f"{cluster.prefix}{key()}"
    cluster.worker()  # default queue only
    video_id = await cluster.submit("test.video", {"key": k}, queue="video")
    noop_id = await cluster.submit("demo.noop")
    await cluster.wait(noop_id, ended, 20)
    assert (await cluster.store.get(video_id)).status == JobStatus.PENDING
    cluster.worker("--queues", "video")
    job = await cluster.wait(video_id, ended, 20)
    assert job.status == JobStatus.SUCCESS


@pytest.mark.timeout(60)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_sigterm_past_the_grace_hands_the_job_back_at_once(cluster: Cluster) -> None:
    lease = {"JOBSTREAM_LEASE_SECONDS": "9"}
    leaving = cluster.worker("--grace", "0.3", **lease)
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.counted", {"key": k, "seconds": 4})
    await cluster.wait(job_id, processing, 20)
    cluster.worker(**lease)
    stopped_at = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    # handed back, not left to expire: restarted well within one 9 s lease
    await cluster.wait(job_id, lambda j: j.attempts == 2, 9)
    assert time.monotonic() - stopped_at < 9
    job = await cluster.wait(job_id, ended, 20)
    assert job.status == JobStatus.SUCCESS


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "receiver", [[], ["--receiver", "workers.receiver:JobReceiver"]], ids=["taskiq", "job"]
)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_the_taskiq_worker_command_runs_jobs_and_stops_on_sigterm(
    cluster: Cluster, receiver: list[str]
) -> None:
    """``taskiq worker workers.app:broker``, with Taskiq's own receiver and with ``JobReceiver``."""
    ids = [await cluster.submit("demo.noop") for _ in range(200)]
    k = f"{cluster.prefix}{key()}"
    counted = await cluster.submit("test.counted", {"key": k, "seconds": 0.5})
    proc = cluster.taskiq_worker(*receiver)
    try:
        for job_id in [*ids, counted]:
            job = await cluster.wait(job_id, ended, 30)
            assert job.status == JobStatus.SUCCESS and job.attempts == 1, job.error
        assert await cluster.count(f"{k}:runs") == 1
        assert await queue_length(cluster.store) == 0
    finally:
        assert stop(proc, signal.SIGTERM, timeout=20) == 0, cluster.tail()


@pytest.mark.timeout(60)
@pytest.mark.topologies("single")  # its partitions change nothing: one topology is enough
async def test_a_worker_without_the_task_leaves_the_job_to_one_with_it(cluster: Cluster) -> None:
    lacking = cluster.worker(JOBSTREAM_TASK_MODULES="workers.tasks")
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.counted", {"key": k})
    stream = stream_of(cluster.store, job_id)
    deadline = time.monotonic() + 20
    while not (await cluster.store.redis.xpending(stream, GROUP))["pending"]:  # delivered to it
        assert time.monotonic() < deadline, cluster.tail()
        await asyncio.sleep(0.02)
    assert stop(lacking) == 0
    job = await cluster.store.get(job_id)
    assert job.status == JobStatus.PENDING and job.attempts == 0  # neither started nor failed
    cluster.worker()  # it has the task: reclaims the entry after a lease, and runs it
    job = await cluster.wait(job_id, ended, LEASE + 10)
    assert job.status == JobStatus.SUCCESS and job.attempts == 1, job.error
    assert await cluster.count(f"{k}:runs") == 1


cycles_registry = TaskRegistry()


class _Nothing(msgspec.Struct):
    pass


@cycles_registry.task("cycles.succeeds")
async def _succeeds(ctx: JobContext, data: _Nothing) -> None:
    pass


@cycles_registry.task("cycles.fails")
async def _fails(ctx: JobContext, data: _Nothing) -> None:
    raise RuntimeError("on purpose")


@cycles_registry.task("cycles.fails_once", retries=1, backoff=60.0)
async def _fails_once(ctx: JobContext, data: _Nothing) -> None:
    raise RuntimeError("on purpose, then a retry")


@cycles_registry.task("cycles.times_out", timeout=0.2)
async def _times_out(ctx: JobContext, data: _Nothing) -> None:
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("task", "counter"),
    [
        ("cycles.succeeds", "succeeded"),
        ("cycles.fails", "failed"),  # a traceback per job
        ("cycles.fails_once", "retried"),  # the same, and a retry is scheduled
        ("cycles.times_out", "failed"),  # cancelled at its timeout
    ],
    ids=["succeeding", "failing", "retried", "timed-out"],
)
@pytest.mark.topologies("single")  # what the worker's own code makes; a RedisCluster client's are its own
async def test_a_finished_job_leaves_no_reference_cycle(cluster: Cluster, task: str, counter: str) -> None:
    """Workers collect garbage rarely (``workers.gc_tuning``): that is only cheap if jobs make
    no cycles, whichever way they end (an exception's traceback is the usual culprit)."""
    store = cluster.store
    await store.scripts.load_all(store.redis)
    executor = JobExecutor(store, cycles_registry, "c1")
    n = 200
    ids = {await cluster.submit(task) for _ in range(n)}
    deliveries = []
    for partition in range(store.keys.partitions):
        stream = store.keys.queue("default", partition)
        reply: Any = await store.redis.xreadgroup(GROUP, "c1", {stream: ">"}, count=n)
        for entry_id, fields in reply[0][1] if reply else ():
            job_id = msgspec.json.decode(fields[b"data"])["task_id"]
            deliveries.append(Delivery(job_id, stream, entry_id.decode(), 1))
    assert {d.job_id for d in deliveries} == ids
    gc.collect()
    gc.disable()
    try:
        await asyncio.gather(*(executor.run(d) for d in deliveries))
        cyclic = gc.collect()
    finally:
        gc.enable()
    assert getattr(executor.counters, counter) == n
    assert cyclic < n / 4, cyclic  # one cycle per job would free several objects each
