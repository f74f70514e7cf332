"""The scheduler end to end: real ``taskiq scheduler`` and worker processes on a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from broker.models import Job, JobStatus
from broker.store import JobStore
from tests.support.polling import until as poll
from tests.support.procs import ROOT, env_for, start_worker, stop


def start_scheduler(redis_url: str, prefix: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``taskiq scheduler scheduler.app:scheduler`` re-reading schedules every second."""
    return subprocess.Popen(
        [sys.executable, "-m", "taskiq", "scheduler", "scheduler.app:scheduler", "--update-interval", "1"],
        cwd=ROOT,
        env=env_for(redis_url, prefix, env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def schedule_cli(redis_url: str, prefix: str, *args: str) -> str:
    """Run ``jobstream schedule ARGS`` (as ``python -m cli.schedule_commands``); its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.schedule_commands", *args],
        cwd=ROOT,
        env=env_for(redis_url, prefix),
        capture_output=True,
        timeout=30,
        check=True,
    )
    return done.stdout.decode()


class Procs:
    """The processes a test started; all stopped (by PID) at teardown."""

    def __init__(self, redis_url: str, prefix: str, log: Path) -> None:
        self.redis_url, self.prefix, self.log = redis_url, prefix, log
        self.started: list[subprocess.Popen[bytes]] = []

    def scheduler(self, **env: str) -> subprocess.Popen[bytes]:
        proc = start_scheduler(self.redis_url, self.prefix, self.log, **env)
        self.started.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        proc = start_worker(self.redis_url, self.prefix, log=self.log)
        self.started.append(proc)
        return proc

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""


@pytest.fixture
def procs(redis_url: str, prefix: str, tmp_path: Path) -> Iterator[Procs]:
    started = Procs(redis_url, prefix, tmp_path / "procs.log")
    try:
        yield started
    finally:
        for proc in started.started:
            stop(proc, signal.SIGTERM, timeout=10)


async def jobs_of(store: JobStore, owner: str) -> list[Job]:
    return (await store.list(owner, limit=500)).jobs


async def server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.mark.timeout(60)
async def test_two_schedulers_run_each_cleanup_tick_once(procs: Procs, store: JobStore, redis: Redis) -> None:
    tick = store.keys.lock("cleanup")
    # A runtime schedule that both replicas fire every second: still one job per second.
    schedule_cli(procs.redis_url, procs.prefix, "add", "--every", "1", "demo.noop", "--owner", "twice")
    env = {"JOBSTREAM_CLEANUP_INTERVAL_SECONDS": "1", "JOBSTREAM_REAPER_INTERVAL_SECONDS": "3600"}
    procs.scheduler(**env)
    procs.scheduler(**env)

    async def both_started() -> bool:
        return procs.tail().count("cleanup every 1 s") == 2

    await poll(both_started, 30, "two schedulers to start", procs.tail())

    async def record() -> tuple[int, int, int]:
        slot, runs, attempts = await redis.hmget(tick, ["slot", "runs", "attempts"])
        return int(slot or 0), int(runs or 0), int(attempts or 0)

    slot0, runs0, attempts0 = await poll(record, 10, "a first cleanup tick")
    jobs0 = len(await jobs_of(store, "twice"))
    started = time.monotonic()

    async def three_ticks_later() -> tuple[int, int, int] | None:
        now = await record()
        return now if now[0] >= slot0 + 3000 else None

    slot1, runs1, attempts1 = await poll(three_ticks_later, 10, "three more ticks", procs.tail())
    elapsed = time.monotonic() - started
    ticks = (slot1 - slot0) // 1000
    assert ticks >= 3
    assert runs1 - runs0 == ticks, f"{runs1 - runs0} runs in {ticks} ticks"
    assert attempts1 - attempts0 >= 2 * ticks - 1  # both replicas tried every tick
    assert all(p.poll() is None for p in procs.started)
    created = len(await jobs_of(store, "twice")) - jobs0
    assert 1 <= created <= elapsed + 2, f"{created} jobs in {elapsed:.1f} s from one every-second schedule"


@pytest.mark.timeout(60)
async def test_a_job_delayed_two_seconds_starts_two_to_three_seconds_later(
    procs: Procs, store: JobStore, redis: Redis
) -> None:
    procs.worker()

    async def worker_up() -> bool:
        return bool([key async for key in redis.scan_iter(store.keys.worker_pattern)])

    await poll(worker_up, 30, "the worker's heartbeat", procs.tail())
    run_at_ms = await server_ms(redis) + 2000
    job, _ = await store.create(
        task="demo.noop", input_json=b"{}", owner="later", queue="default", run_at_ms=run_at_ms
    )

    async def started() -> Job | None:
        current = await store.get(job.id)
        return current if current.started_at is not None else None

    ran = await poll(started, 10, "the delayed job to start", procs.tail())
    assert ran.started_at is not None
    waited = (ran.started_at - job.created_at).total_seconds()
    assert 2.0 <= waited < 10.0, waited  # never early; late only as far as a loaded machine makes it


@pytest.mark.timeout(90)
async def test_a_runtime_schedule_fires_and_stops_once_removed(
    procs: Procs, store: JobStore, redis: Redis
) -> None:
    procs.worker()
    procs.scheduler(JOBSTREAM_REAPER_INTERVAL_SECONDS="3600")
    added = schedule_cli(
        procs.redis_url, procs.prefix, "add", "--every", "1", "demo.sleep", '{"seconds": 0.05, "steps": 1}',
        "--owner", "cron-test", "--id", "every-second",
    )
    assert added.strip() == "every-second"
    assert "every-second\tevery 1s\tdemo.sleep\towner=cron-test" in schedule_cli(
        procs.redis_url, procs.prefix, "list"
    )
    # A second schedule that stays: its firings show that the scheduler went on firing.
    schedule_cli(
        procs.redis_url, procs.prefix, "add", "--every", "1", "demo.noop", "{}", "--owner", "cron-clock",
        "--id", "clock",
    )

    async def clock_fired(times: int) -> None:
        target = len(await jobs_of(store, "cron-clock")) + times

        async def reached() -> bool:
            return len(await jobs_of(store, "cron-clock")) >= target

        await poll(reached, 30, f"{times} more firings of the clock schedule", procs.tail())

    async def two_succeeded() -> bool:
        jobs = await jobs_of(store, "cron-test")
        return sum(job.status == JobStatus.SUCCESS for job in jobs) >= 2

    await poll(two_succeeded, 30, "two scheduled jobs to succeed", procs.tail())
    removed = schedule_cli(procs.redis_url, procs.prefix, "remove", "every-second")
    assert removed.strip() == "removed every-second"
    await clock_fired(2)  # a firing already past its removal check has landed by now
    settled = len(await jobs_of(store, "cron-test"))
    await clock_fired(3)  # three more firings of the removed schedule would have happened
    assert len(await jobs_of(store, "cron-test")) == settled
    assert "every-second" not in schedule_cli(procs.redis_url, procs.prefix, "list")


@pytest.mark.timeout(90)
async def test_a_one_shot_schedule_fires_once(procs: Procs, store: JobStore, redis: Redis) -> None:
    procs.worker()
    procs.scheduler(JOBSTREAM_REAPER_INTERVAL_SECONDS="3600")
    at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 2))
    schedule_cli(
        procs.redis_url, procs.prefix, "add", "--at", at, "demo.noop", "--owner", "once", "--id", "once"
    )

    async def succeeded() -> list[Job]:
        return [job for job in await jobs_of(store, "once") if job.status == JobStatus.SUCCESS]

    await poll(succeeded, 30, "the one-shot job", procs.tail())

    async def schedule_gone() -> bool:
        return "once" not in schedule_cli(procs.redis_url, procs.prefix, "list")

    await poll(schedule_gone, 10, "the fired one-shot schedule to be removed")
    assert len(await jobs_of(store, "once")) == 1
