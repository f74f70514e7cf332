"""Soak: 20,000 jobs that succeed, fail, retry, time out and are cancelled, on two worker
processes and a Redis of the test's own. Every job ends as planned, the workers' counters
reconcile exactly with the jobs, and once a short retention passes and the cleanup has run,
Redis holds the keys it held before and its memory is back to its baseline."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from broker.queues import ensure_groups
from broker.settings import Settings, load_settings
from broker.store import JobStore
from devtools.embedded_redis import EmbeddedRedis
from scheduler.cleanup import Cleanup
from tests.support.procs import start_worker, stop

PLAN = {"ok": 15_000, "retry": 2_000, "fail": 2_000, "timeout": 400}
PENDING_CANCELS = 500
RUNNING_CANCELS = 100
TOTAL = sum(PLAN.values()) + PENDING_CANCELS + RUNNING_CANCELS
OWNERS = [f"owner{i}" for i in range(8)]
RETENTION = 5
LEASE = 3.0
MEMORY_SLACK = 1024 * 1024
"""How far used_memory may stay above its baseline. Redis keeps a constant few hundred KiB
after a stream's entries come and go (173 KiB here after 20,000 and after 80,000 XADD/XDEL:
it does not grow with the work), and the jobs' run leaves some in client buffers. Anything
left per job (an index entry, a stream entry, a delayed message) would be over a megabyte."""

# What each kind of job ends as: (status, attempts, error type).
ENDS = {
    "ok": ("SUCCESS", 1, None),
    "retry": ("SUCCESS", 2, None),
    "fail": ("FAILURE", 2, "RuntimeError"),
    "timeout": ("FAILURE", 2, "Timeout"),
    "pending-cancel": ("CANCELLED", 0, "Cancelled"),
    "running-cancel": ("CANCELLED", 1, "Cancelled"),
}


@pytest.fixture
async def soak_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    with EmbeddedRedis(data_dir=tmp_path / "redis") as server:
        yield server


def settings_for(url: str) -> Settings:
    return load_settings(
        {},
        redis_url=url,
        prefix="soak:",
        retention_seconds=RETENTION,
        active_ttl_seconds=600,
        max_active_per_owner=0,
        lease_seconds=LEASE,
        task_modules="workers.tasks,tests.support.soak_tasks",
    )


async def create_all(store: JobStore, planned: dict[str, str]) -> None:
    """Every job but the ones cancelled while running, created in concurrent batches."""
    kinds = [kind for kind, n in PLAN.items() for _ in range(n)] + ["pending-cancel"] * PENDING_CANCELS

    async def one(i: int, kind: str) -> None:
        owner = OWNERS[i % len(OWNERS)]
        if kind == "pending-cancel":  # waits an hour, so it is still PENDING when cancelled
            job, _ = await store.create(
                task="soak.mixed", input_json=b'{"outcome":"ok"}', owner=owner, queue="default",
                delay_ms=3_600_000,
            )
        else:
            job, _ = await store.create(
                task="soak.mixed", input_json=msgspec.json.encode({"outcome": kind}), owner=owner,
                queue="default", idempotency_key=f"soak-{i}" if i % 10 == 0 else None,
            )
        planned[job.id] = kind

    for start in range(0, len(kinds), 1000):
        await asyncio.gather(*(one(i, kinds[i]) for i in range(start, min(start + 1000, len(kinds)))))


async def cancel_while_running(store: JobStore, planned: dict[str, str]) -> None:
    held = []
    for i in range(RUNNING_CANCELS):
        job, _ = await store.create(
            task="soak.hold", input_json=b"{}", owner=OWNERS[i % len(OWNERS)], queue="default"
        )
        held.append(job.id)
        planned[job.id] = "running-cancel"
    deadline = time.monotonic() + 60
    waiting = set(held)
    while waiting:  # cancel each as soon as a worker runs it
        assert time.monotonic() < deadline, f"{len(waiting)} hold jobs never started"
        for job_id in list(waiting):
            if (await store.get(job_id)).status == "PROCESSING":
                await store.cancel(job_id, None, RETENTION)
                waiting.discard(job_id)
        await asyncio.sleep(0.05)
    for job_id, kind in planned.items():
        if kind == "pending-cancel":
            await store.cancel(job_id, None, RETENTION)


async def watch_ends(
    store: JobStore, planned: dict[str, str], ends: dict[str, tuple[str, int, str | None]]
) -> None:
    """Record each job's end as soon as it ends (before its short retention expires it),
    while jobs are still being created; returns once all ``TOTAL`` have ended."""
    deadline = time.monotonic() + 150
    while len(ends) < TOTAL:
        assert time.monotonic() < deadline, f"{TOTAL - len(ends)} jobs never ended"
        waiting = [job_id for job_id in list(planned) if job_id not in ends]
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id in waiting:
                pipe.hmget(store.keys.job(job_id), "status", "attempts", "error")
            rows = await pipe.execute()
        for job_id, (status, attempts, error) in zip(waiting, rows, strict=True):
            assert status is not None, f"job {job_id} ({planned[job_id]}) vanished before it ended"
            if status in (b"SUCCESS", b"FAILURE", b"CANCELLED"):
                kind = msgspec.json.decode(error)["type"] if error else None
                ends[job_id] = (status.decode(), int(attempts), kind)
        await asyncio.sleep(0.1)


async def worker_counters(redis: Redis, settings: Settings) -> Counter[str]:
    total: Counter[str] = Counter()
    async for key in redis.scan_iter(f"{settings.prefix}worker:*"):
        fields: Any = await redis.hgetall(key)
        for name in ("started", "succeeded", "failed", "retried", "cancelled", "lost"):
            total[name] += int(fields.get(name.encode(), 0))
    return total


async def memory(redis: Redis) -> tuple[int, int]:
    """used_memory now, and the most it ever was."""
    info: Any = await redis.info("memory")
    return int(info["used_memory"]), int(info["used_memory_peak"])


@pytest.mark.timeout(240)
async def test_twenty_thousand_mixed_jobs_reconcile_and_leave_redis_as_it_was(
    soak_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    settings = settings_for(soak_redis.url)
    redis = Redis.from_url(soak_redis.url, socket_timeout=30)
    store = JobStore(redis, settings)
    await store.scripts.load_all(redis)
    await ensure_groups(redis, store.keys, ["default"])
    env = {"JOBSTREAM_LEASE_SECONDS": str(LEASE), "JOBSTREAM_TASK_MODULES": settings.task_modules,
           "JOBSTREAM_RETENTION_SECONDS": str(RETENTION)}
    log = tmp_path / "workers.log"
    workers = [start_worker(soak_redis.url, settings.prefix, env=env, log=log) for _ in range(2)]
    try:
        while len([k async for k in redis.scan_iter(f"{settings.prefix}worker:*")]) < 2:
            assert all(w.poll() is None for w in workers), log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        baseline_keys = {k async for k in redis.scan_iter(f"{settings.prefix}*")}
        baseline, _ = await memory(redis)

        planned: dict[str, str] = {}
        ends: dict[str, tuple[str, int, str | None]] = {}
        watcher = asyncio.create_task(watch_ends(store, planned, ends))
        await create_all(store, planned)
        await cancel_while_running(store, planned)
        await watcher

        assert len(planned) == TOTAL == 20_000
        wrong = {j: (planned[j], end) for j, end in ends.items() if end != ENDS[planned[j]]}
        assert not wrong, list(wrong.items())[:5]
        expected = Counter(
            started=PLAN["ok"] + 2 * (PLAN["retry"] + PLAN["fail"] + PLAN["timeout"]) + RUNNING_CANCELS,
            succeeded=PLAN["ok"] + PLAN["retry"],
            failed=PLAN["fail"] + PLAN["timeout"],
            retried=PLAN["retry"] + PLAN["fail"] + PLAN["timeout"],
            cancelled=RUNNING_CANCELS,
        )
        deadline = time.monotonic() + 3 * LEASE  # heartbeats carry the counters every lease/3
        while (counters := await worker_counters(redis, settings)) != expected:
            assert time.monotonic() < deadline, (counters, expected)
            await asyncio.sleep(0.1)

        # The one key the jobs leave for good: each partition's running totals (a field per task
        # type, ``created:<task>``), which /metrics reads.
        counts = {store.keys.counts(p).encode() for p in range(store.keys.partitions)}
        assert len(await redis.hgetall(store.keys.counts(0))) <= 10  # the soak's few task types
        deadline = time.monotonic() + RETENTION + 60
        cleanup = Cleanup(redis, settings, store.scripts)
        while (keys := {k async for k in redis.scan_iter(f"{settings.prefix}*")}) != baseline_keys | counts:
            assert time.monotonic() < deadline, sorted(keys - baseline_keys)[:10]
            await cleanup.run()
            await asyncio.sleep(0.5)
        after, peak = await memory(redis)
        print(f"soak: {TOTAL} jobs; used_memory baseline {baseline}, with jobs {peak}, after {after}")
        assert peak - baseline > 4 * MEMORY_SLACK  # the jobs were really there
        assert abs(after - baseline) < MEMORY_SLACK
    finally:
        for worker in workers:
            stop(worker, signal.SIGTERM)
        await redis.aclose()
