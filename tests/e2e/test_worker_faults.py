"""A 202 holds through Redis faults: no job fails, or restarts, because Redis blipped.

Real worker processes on a real ``redis-server`` of the test's own (AOF fsynced on every
write), which the tests kill connections of, SIGKILL and restart on the same port; and a
live worker frozen past its lease. Each test prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from broker.connection import RedisWatch, resilient_options
from broker.errors import IllegalTransition
from broker.keys import Keys, partition_of
from broker.models import Job, JobError, JobStatus
from broker.registry import JobContext, TaskOptions, TaskRegistry, registry
from broker.scripts import Scripts
from broker.store import GROUP, Delivery, JobStore, Started
from broker.topology import open_redis, parse_redis_url
from devtools.embedded_redis import EmbeddedRedis, free_port
from devtools.redis_cluster import ClusterNode, ClusterServers
from scheduler.ticks import Periodic, Ticker
from tests.support import polling
from tests.support.deliveries import take
from tests.support.keyspace import ShardListener, active_count, delayed_count, event_record, queue_length
from tests.support.polling import wait_for
from tests.support.worker_support import Cluster, ended, key, open_cluster
from workers.executor import JobExecutor, retry_delay

FAULT_LEASE = "10"
"""The lease of the blip test's workers: longer than any outage the tests make."""


class CrashableRedis(EmbeddedRedis):
    """A test's own ``redis-server``, fsyncing its AOF on every write, that it may SIGKILL."""

    def command(self) -> list[str]:
        return [*super().command(), "--appendfsync", "always"]

    def crash_and_restart(self, down_for: float) -> float:
        """SIGKILL the server, start it again ``down_for`` s later on the same port; returns
        the seconds it was down."""
        down = time.monotonic()
        self.crash()
        time.sleep(down_for)  # the outage itself
        self.start()
        return time.monotonic() - down

    def crash(self) -> None:
        """SIGKILL the server (by PID) and wait until it is gone."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: self.poll() is not None, 10, "redis-server to die")
        self.stop()  # reaps nothing more: it only closes the log


class CrashableNode(ClusterNode, CrashableRedis):
    """A cluster node, fsyncing its AOF on every write, that a test may SIGKILL and restart
    (it comes back with its slots: its nodes.conf and AOF are where it left them)."""

    def command(self) -> list[str]:
        return [*ClusterNode.command(self), "--appendfsync", "always"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[CrashableRedis]:
    with CrashableRedis(data_dir=tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def faulty(own_redis: CrashableRedis, tmp_path: Path) -> AsyncIterator[Cluster]:
    """A cluster on the test's own Redis, with a client that retries through its faults."""
    client = Redis.from_url(own_redis.url, socket_timeout=15, socket_connect_timeout=5, **resilient_options())
    try:
        async with open_cluster(client, own_redis.url, "t:", tmp_path / "workers.log") as c:
            yield c
    finally:
        await client.aclose()


@pytest.fixture
async def cluster(redis: Redis, redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with open_cluster(redis, redis_url, prefix, tmp_path / "workers.log") as c:
        yield c


async def statuses(store: JobStore, ids: list[str]) -> list[tuple[bytes, bytes]]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(store.keys.job(job_id), "status", "attempts")
        return list(await pipe.execute())


async def until(condition: Any, timeout: float, what: str, cluster: Cluster) -> Any:
    """Await ``condition()`` turning true (and return it); Redis errors (it is down on purpose)
    count as not yet."""
    return await polling.until(condition, timeout, what, cluster.tail, interval=0.05, ignore=(RedisError,))


def assert_quiet_log(cluster: Cluster, *, lapsed_ok: bool = False) -> int:
    """No traceback, no exception Taskiq dropped: one warning when Redis goes and one when it
    is back is all a blip costs (and, past a lease, one error per write given up, with its
    job id). Returns how many outages the workers logged.

    Each worker logs "back" at its own next answered call: a worker with nothing left to
    do may do so after the last job ended, so the balance is awaited, not read once."""

    def balanced() -> bool:
        text = cluster.log.read_text()
        return text.count("Redis is unreachable") == text.count("Redis is back")

    wait_for(balanced, 10, "every worker that logged an outage to log Redis back", cluster.tail)
    text = cluster.log.read_text()
    assert "Traceback" not in text, text[-4000:]
    assert "never retrieved" not in text, text[-4000:]
    errors = [line for line in text.splitlines() if " ERROR " in line]
    if lapsed_ok:
        errors = [line for line in errors if "before its lease lapsed" not in line]
    assert not errors, text[-4000:]
    gone, back = text.count("Redis is unreachable"), text.count("Redis is back")
    assert gone == back, text[-4000:]
    return gone


# -- the blip ---------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_a_redis_blip_neither_fails_nor_restarts_a_running_job(
    faulty: Cluster, own_redis: CrashableRedis
) -> None:
    """16 running jobs; CLIENT KILL TYPE normal, then SIGKILL and restart redis-server."""
    cluster, store = faulty, faulty.store
    cluster.worker(JOBSTREAM_LEASE_SECONDS=FAULT_LEASE)
    ids = [await cluster.submit("test.steps", {"count": 60, "interval": 0.1}) for _ in range(16)]

    async def progress() -> list[float]:
        return [(await store.get(job_id)).progress for job_id in ids]

    async def all_running() -> bool:
        return all(p > 0 for p in await progress())

    await until(all_running, 30, "16 running jobs", cluster)
    killed: Any = await store.redis.client_kill_filter(_type="normal")
    before = await progress()

    async def all_advanced() -> bool:
        return all(b > a for a, b in zip(before, await progress(), strict=True))

    await until(all_advanced, 10, "progress after CLIENT KILL", cluster)
    before = await progress()
    down = own_redis.crash_and_restart(down_for=3.0)  # longer than the pool's own retries (2.2 s)
    await until(all_advanced, 10, "progress after the restart", cluster)
    for job_id in ids:
        job = await cluster.wait(job_id, ended, 30)
        assert (job.status, job.attempts) == (JobStatus.SUCCESS, 1), (job.error, cluster.tail())

    async def counted() -> bool:  # the worker's own counters, from its next heartbeat
        beat: Any = await store.redis.hgetall(store.keys.worker((await _consumers(store))[0]))
        return (beat[b"failed"], beat[b"lost"], beat[b"succeeded"]) == (b"0", b"0", b"16")

    await until(counted, 10, "the heartbeat to count 16 successes, no failure, no loss", cluster)
    assert assert_quiet_log(cluster) >= 1
    print(f"\nblip: 16 jobs, {killed} connections killed, redis down {down:.2f} s; 0 failed, 0 restarted")


@pytest.mark.timeout(90)
async def test_an_outage_longer_than_the_lease_may_restart_a_job_but_never_fails_it(
    faulty: Cluster, own_redis: CrashableRedis
) -> None:
    """Redis down for twice the lease while 6 jobs run on 2 workers: each ends SUCCESS."""
    cluster, store = faulty, faulty.store
    for _ in range(2):
        cluster.worker(JOBSTREAM_LEASE_SECONDS="2")
    ids = [await cluster.submit("test.steps", {"count": 40, "interval": 0.1}) for _ in range(6)]

    async def all_running() -> bool:
        return all(job.progress > 0 for job in [await store.get(job_id) for job_id in ids])

    async def both_started() -> bool:  # a worker still starting up would log its outage late
        return len(await _consumers(store)) == 2

    await until(all_running, 30, "6 running jobs", cluster)
    await until(both_started, 30, "both workers started (their heartbeats)", cluster)
    down = own_redis.crash_and_restart(down_for=4.0)
    jobs = [await cluster.wait(job_id, ended, 40) for job_id in ids]
    assert {job.status for job in jobs} == {JobStatus.SUCCESS}, [j.error for j in jobs]
    assert_quiet_log(cluster, lapsed_ok=True)
    restarts = sum(job.attempts - 1 for job in jobs)
    print(f"\nlong outage: 6 jobs, redis down {down:.2f} s (lease 2 s); 0 failed, {restarts} restarted")


@pytest.mark.timeout(60)
async def test_a_worker_started_while_redis_is_down_waits_for_it(
    faulty: Cluster, own_redis: CrashableRedis
) -> None:
    own_redis.crash()
    cluster = faulty
    worker = cluster.worker()
    wait_for(lambda: "Redis is unreachable" in cluster.tail(), 20, "the worker to notice Redis is down")
    own_redis.start()
    job = await cluster.wait(await cluster.submit("demo.noop"), ended, 20)
    assert job.status == JobStatus.SUCCESS
    assert worker.poll() is None
    assert assert_quiet_log(cluster) == 1


async def _consumers(store: JobStore) -> list[str]:
    keys = [k async for k in store.redis.scan_iter(match=store.keys.worker_pattern)]  # every node
    return [k.decode().removeprefix(store.keys.worker("")) for k in keys]


@pytest.mark.timeout(120)
async def test_a_cluster_node_crash_neither_fails_nor_restarts_a_running_job(tmp_path: Path) -> None:
    """A Redis Cluster of its own; 16 running jobs over its partitions; one primary SIGKILLed
    and restarted (the cluster is down for its slots meanwhile): all end SUCCESS on attempt 1."""
    with ClusterServers(tmp_path / "cluster", node=CrashableNode) as servers:
        client = open_redis(parse_redis_url(servers.url), socket_timeout=15, **resilient_options())
        try:
            async with open_cluster(client, servers.url, "t:", tmp_path / "workers.log") as cluster:
                await _crash_a_node_under_running_jobs(cluster, servers)
        finally:
            await client.aclose()


async def _crash_a_node_under_running_jobs(cluster: Cluster, servers: ClusterServers) -> None:
    store = cluster.store
    for _ in range(2):
        cluster.worker(JOBSTREAM_LEASE_SECONDS=FAULT_LEASE)
    ids = [await cluster.submit("test.steps", {"count": 60, "interval": 0.1}) for _ in range(16)]

    async def all_running() -> bool:
        return all(job.progress > 0 for job in [await store.get(job_id) for job_id in ids])

    await until(all_running, 30, "16 running jobs", cluster)
    victim = cast(CrashableNode, servers.nodes[0])
    on_victim = sum(1 for i in ids if _node_port(store, i) == victim.port)
    down = victim.crash_and_restart(down_for=3.0)

    async def all_ended() -> list[Job] | None:  # the cluster answers CLUSTERDOWN for a while
        jobs = [await store.get(job_id) for job_id in ids]
        return jobs if all(job.terminal for job in jobs) else None

    for job in await until(all_ended, 40, "16 jobs to end", cluster):
        assert (job.status, job.attempts) == (JobStatus.SUCCESS, 1), (job.error, cluster.tail())
    assert_quiet_log(cluster)
    print(f"\ncluster node crash: 16 jobs, {on_victim} on the node, down {down:.2f} s; 0 failed, 0 restarted")


def _node_port(store: JobStore, job_id: str) -> int:
    cluster = cast(RedisCluster, store.redis)
    node = cluster.get_node_from_key(store.keys.job(job_id))
    return int(node.port) if node else 0


# -- churn ------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
async def test_churn_of_workers_and_a_redis_restart_ends_every_job_success_never_concurrently(
    faulty: Cluster, own_redis: CrashableRedis, tmp_path: Path
) -> None:
    """2,000 short jobs over 3 workers; a worker SIGKILLed (and replaced) every 1.5 s; Redis
    SIGKILLed and restarted half-way. Every job ends SUCCESS, no attempt overlapped another of
    its job, and every restart was a killed worker's (none a blip's)."""
    cluster, store = faulty, faulty.store
    attempts_log = tmp_path / "attempts.log"
    data = msgspec.json.encode({"log": str(attempts_log), "seconds": 0.2})
    ids: list[str] = []
    for _ in range(20):
        made = await asyncio.gather(
            *(
                store.create(task="test.logged", input_json=data, owner="tester", queue="default")
                for _ in range(100)
            )
        )
        ids += [job.id for job, _ in made]
    env = {"JOBSTREAM_LEASE_SECONDS": "3", "JOBSTREAM_MAX_DELIVERIES": "20"}
    live = [cluster.worker("--concurrency", "16", **env) for _ in range(3)]
    killed: dict[int, float] = {}
    rng = random.Random(20260424)
    redis_down = 0.0
    deadline = time.monotonic() + 120
    while await _active(store, "tester") > 0:
        assert time.monotonic() < deadline, cluster.tail()
        await asyncio.sleep(1.5)  # the fault schedule itself: a kill every 1.5 s
        victim = live.pop(rng.randrange(len(live)))
        killed[victim.pid] = time.time()
        victim.kill()
        victim.wait(10)
        live.append(cluster.worker("--concurrency", "16", **env))
        if not redis_down and len(killed) == 3:
            redis_down = own_redis.crash_and_restart(down_for=1.0)
    rows = await statuses(store, ids)
    failed = [(i, s) for i, (s, _) in zip(ids, rows, strict=True) if s != b"SUCCESS"]
    assert not failed, failed[:5]
    restarts = sum(int(a) - 1 for _, a in rows)
    blip_restarts, overlaps = _check_attempts(attempts_log, killed)
    assert overlaps == [], overlaps[:5]
    assert blip_restarts == [], blip_restarts[:5]
    assert await queue_length(store) == 0
    assert_quiet_log(cluster)
    print(
        f"\nchurn: {len(ids)} jobs, {len(killed)} workers SIGKILLed, redis down {redis_down:.2f} s; "
        f"0 failed, {restarts} restarts (all of killed workers' jobs), 0 by the blip"
    )


async def _active(store: JobStore, owner: str) -> int:
    try:
        return await active_count(store, owner)
    except RedisError:
        return 1  # Redis is restarting: not done yet


def _check_attempts(log: Path, killed: dict[int, float]) -> tuple[list[str], list[str]]:
    """(attempts that ended on a live worker yet were run again, attempts that overlapped)."""
    runs: dict[str, dict[int, list[Any]]] = defaultdict(dict)
    for line in log.read_text().splitlines():
        job_id, attempt, pid, what, at = line.split()
        run = runs[job_id].setdefault(int(attempt), [int(pid), None, None])
        run[1 if what == "start" else 2] = float(at)
    blip, overlaps = [], []
    for job_id, attempts in runs.items():
        ordered = [attempts[n] for n in sorted(attempts)]
        for (pid, start, end), (_, next_start, _) in itertools.pairwise(ordered):
            if end is not None and pid not in killed:
                blip.append(f"{job_id}: attempt on {pid} ended and ran again")
            stop = end if end is not None else killed.get(pid)
            if stop is None or start is None or next_start is None or next_start < stop:
                overlaps.append(f"{job_id}: {ordered}")
    return blip, overlaps


# -- a live worker that loses its lease ---------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.topologies("single", "cluster")
async def test_a_frozen_worker_that_lost_its_lease_is_refused_and_overlaps_nothing(cluster: Cluster) -> None:
    """SIGSTOP a worker between two steps of a job, past its lease; another worker reclaims
    and finishes the job; SIGCONT: the frozen attempt's next write is refused and it stops."""
    store = cluster.store
    k = f"{cluster.prefix}{key()}"
    job_id = await cluster.submit("test.fenced", {"key": k, "steps": 3})
    events = await ShardListener(store, store.keys.events(partition_of(job_id))).open()
    frozen = cluster.worker()
    effects = f"{k}:effects"
    await until(lambda: store.redis.llen(effects), 20, "the first step", cluster)
    frozen.send_signal(signal.SIGSTOP)
    try:
        taker = cluster.worker()
        await cluster.wait(job_id, lambda j: j.attempts == 2, 20)
        await store.redis.rpush(f"{k}:gate:2", *["go"] * 3)
        job = await cluster.wait(job_id, ended, 20)
        await store.redis.rpush(f"{k}:gate:1", *["go"] * 3)  # the frozen attempt may go on...
    finally:
        frozen.send_signal(signal.SIGCONT)
    # ...and its next write is refused: it stops before its second step's effects.
    wait_for(
        lambda: "no longer holds the job" in cluster.tail() or "lease lost" in cluster.tail(),
        20,
        "the refusal",
    )
    assert (job.status, job.attempts) == (JobStatus.SUCCESS, 2)
    assert [int(a) for a in await store.redis.lrange(effects, 0, -1)] == [1, 2, 2, 2]
    assert await cluster.count(f"{k}:overlap") == 0
    assert (await store.get(job_id)).version == job.version  # nothing wrote after the end
    published = []
    while (data := await events.next(timeout=0.2)) is not None:  # all were sent by now
        published.append(event_record(data))
    await events.close()
    terminal = [r for r in published if r["id"] == job_id and r["status"] in ("SUCCESS", "FAILURE")]
    assert len(terminal) == 1  # SUCCESS once
    assert frozen.poll() is None and taker.poll() is None  # both workers lived throughout
    print("\nlease loss: 1 job, 1 worker frozen past its lease; 1 SUCCESS, 0 overlapping effects")


# -- cancels racing starts ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.topologies("single", "cluster")
async def test_cancels_racing_the_start_all_end_cancelled(cluster: Cluster) -> None:
    """Cancel each of 30 jobs 0-5 ms after creating it: before, during or just after its start."""
    cluster.worker()
    warm = await cluster.submit("demo.noop")
    await cluster.wait(warm, ended, 20)
    k = f"{cluster.prefix}{key()}"
    rng = random.Random(5)
    ids = []
    for _ in range(30):
        job_id = await cluster.submit("test.counted", {"key": k, "seconds": 30})
        await asyncio.sleep(rng.choice([0, rng.uniform(0, 0.005)]))  # the race itself, not a wait
        job = await cluster.store.cancel(job_id, None, 600)
        assert job.status == JobStatus.CANCELLED or job.cancel_requested
        ids.append(job_id)
    jobs = [await cluster.wait(job_id, ended, 10) for job_id in ids]
    assert {j.status for j in jobs} == {JobStatus.CANCELLED}
    assert all(j.attempts <= 1 for j in jobs)
    assert await queue_length(cluster.store) == 0
    for partition in range(cluster.store.keys.partitions):
        stream = cluster.store.keys.queue("default", partition)
        assert (await cluster.store.redis.xpending(stream, GROUP))["pending"] == 0
    await until(lambda: _runs_nothing(cluster.store), 5, "every started run to stop", cluster)
    started = sum(j.attempts for j in jobs)
    print(f"\ncancel race: 30 jobs, {30 - started} cancelled before a start, {started} after; all CANCELLED")


async def _runs_nothing(store: JobStore) -> bool:
    """The worker's heartbeat says it runs no job's code any more."""
    [consumer] = await _consumers(store)
    running: Any = await store.redis.hget(store.keys.worker(consumer), "running")
    return running == b""


class _CancelledMidStart(JobStore):
    """A store whose start is followed, before the worker sees its reply, by a cancel."""

    executor: JobExecutor

    async def start(self, delivery: Delivery, consumer: str, token: str | None = None) -> Started | None:
        started = await super().start(delivery, consumer, token)
        await self.cancel(delivery.job_id, None, 600)  # PROCESSING -> cancel_requested, published
        self.executor.cancel(delivery.job_id)  # the pub/sub message arrives before the job is registered
        return started


async def test_a_cancel_between_the_start_script_and_the_task_code_ends_it_unrun(
    redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    async with open_cluster(redis, redis_url, prefix, tmp_path / "w.log") as cluster:
        import tests.support.worker_tasks  # noqa: F401 - registers test.counted

        store = _CancelledMidStart(redis, cluster.store.settings)
        store.executor = executor = JobExecutor(store, registry, "c1")
        k = f"{prefix}{key()}"
        job_id = await cluster.submit("test.counted", {"key": k, "seconds": 30})
        await executor.run(await _deliver(store, "c1"))
        job = await store.get(job_id)
        assert (job.status, job.attempts) == (JobStatus.CANCELLED, 1)
        assert await cluster.count(f"{k}:runs") == 0  # its code never ran
        assert executor.counters.cancelled == 1


async def _deliver(store: JobStore, consumer: str) -> Delivery:
    return await take(store, consumer)


# -- the retry schedule ---------------------------------------------------------------------------


def test_the_retry_delay_is_exponential_jittered_and_bounded_by_backoff_max() -> None:
    options = TaskOptions(retries=10_000, backoff=0.5, backoff_max=60.0)
    assert [retry_delay(options, n, jitter=1.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    for attempt in (1, 5, 8, 9, 50, 1_000, 10_000):  # 10_000: 2**9999 would overflow a float
        bound = min(60.0, 0.5 * 2 ** min(attempt - 1, 64))
        for _ in range(50):
            assert bound / 2 <= retry_delay(options, attempt) <= bound <= 60.0


faults_registry = TaskRegistry()


class _Nothing(msgspec.Struct):
    pass


@faults_registry.task("faults.always_fails", retries=20, backoff=10.0, backoff_max=0.3)
async def always_fails(ctx: JobContext, data: _Nothing) -> None:
    raise RuntimeError(f"attempt {ctx.attempt} fails")


async def test_retries_wait_no_longer_than_backoff_max(
    redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Attempt 6 of a task with backoff 10 s waits at most backoff_max (0.3 s), not 320 s."""
    async with open_cluster(redis, redis_url, prefix, tmp_path / "w.log") as cluster:
        store = cluster.store
        executor = JobExecutor(store, faults_registry, "c1")
        job_id = await cluster.submit("faults.always_fails")
        for attempt in range(1, 7):
            await executor.run(await _deliver(store, "c1"))
            job = await store.get(job_id)
            assert (job.status, job.attempts) == (JobStatus.PENDING, attempt)
            assert job.run_at is not None and job.completed_at is None
            now_ms: Any = await redis.time()
            wait = job.run_at.timestamp() - (now_ms[0] + now_ms[1] / 1e6)
            assert wait <= 0.3 + 0.05, (attempt, wait)
            await asyncio.sleep(max(0.0, wait))  # until it is due; then promote it onto the stream
            await store.scripts.promote_due(queue="default", partition=partition_of(job_id), limit=10)
        assert executor.counters.retried == 6 and executor.counters.failed == 0


@faults_registry.task("faults.stubborn", timeout=0.3)
async def stubborn(ctx: JobContext, data: _Nothing) -> None:
    """Swallows the first cancel, as redis-py 8.1 on Python 3.11 did now and then."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(5)
    await asyncio.sleep(5)


async def test_a_timeout_stops_code_that_swallows_a_cancel(
    redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    async with open_cluster(redis, redis_url, prefix, tmp_path / "w.log") as cluster:
        executor = JobExecutor(cluster.store, faults_registry, "c1")
        job_id = await cluster.submit("faults.stubborn")
        began = time.monotonic()
        await executor.run(await _deliver(cluster.store, "c1"))
        assert time.monotonic() - began < 2  # not the 10 s its code would take
        job = await cluster.store.get(job_id)
        assert job.status == JobStatus.FAILURE and job.error is not None and job.error.type == "Timeout"


# -- idempotent writes ------------------------------------------------------------------------------


async def test_re_sent_start_finish_and_retry_count_once(
    redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """A write re-sent after a lost reply finds itself applied: OK, no second attempt, no second change."""
    async with open_cluster(redis, redis_url, prefix, tmp_path / "w.log") as cluster:
        store = cluster.store
        job_id = await cluster.submit("demo.noop")
        delivery = await _deliver(store, "c1")
        first = await store.start(delivery, "c1", "token-1")
        again = await store.start(delivery, "c1", "token-1")
        assert first is not None and again is not None and again.attempt == first.attempt == 1
        version = (await store.get(job_id)).version
        await store.succeed(first, delivery, b"1", 60)
        await store.succeed(first, delivery, b"1", 60)
        job = await store.get(job_id)
        assert (job.status, job.version) == (JobStatus.SUCCESS, version + 1)
        with pytest.raises(IllegalTransition):
            await store.fail(first, delivery, JobError("Boom", "not mine"), 60)

        retried_id = await cluster.submit("demo.noop")
        delivery = await _deliver(store, "c1")
        started = await store.start(delivery, "c1")
        assert started is not None and started.job.id == retried_id
        for _ in range(2):
            await store.retry(started, delivery, JobError("Flaky", "again"), delay_seconds=0)
        assert await delayed_count(store) == 1
        assert (await store.get(retried_id)).status == JobStatus.PENDING


# -- logs: one warning per outage -------------------------------------------------------------------


def test_the_watch_logs_an_outage_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = RedisWatch(logging.getLogger("test.watch"), "worker")
    with caplog.at_level(logging.WARNING, "test.watch"):
        began = time.monotonic()
        for _ in range(5):
            watch.failed("reading the queues", ConnectionError("refused"), time.monotonic())
        watch.answered()
        watch.answered()
        watch.failed("renewing leases", ConnectionError("refused"), began)  # began before it was back
    assert [r.getMessage() for r in caplog.records] == [
        "worker: Redis is unreachable (reading the queues: refused); retrying until it is back",
        f"worker: Redis is back after {watch.back_at - began:.1f} s",
    ]


async def test_the_scheduler_loop_warns_once_while_redis_is_down(caplog: pytest.LogCaptureFixture) -> None:
    """A tick that cannot reach Redis is retried with backoff, not logged with a traceback each time."""
    # Nothing listens there; no retries of the client's own, so each tick fails at once.
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    calls = 0

    async def run() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {}

    ticker = Ticker(dead, Scripts.register(dead, Keys("t:")), "me", Periodic("cleanup", 60, run))
    with caplog.at_level(logging.INFO, "jobstream.scheduler"):
        loop = asyncio.create_task(ticker.run_forever())
        await asyncio.sleep(1.0)  # long enough for several tries at the loop's backoff
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    await dead.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "Redis is unreachable" in messages[0], messages
    assert not any(r.exc_info for r in caplog.records)
    assert calls == 0
