"""Worker processes for end-to-end tests: a test's store and the workers it started.

Shared by the worker tests (``test_workers``) and the fault tests (``test_worker_faults``).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis

from broker.models import Job, JobStatus
from broker.queues import ensure_groups
from broker.settings import load_settings
from broker.store import JobStore
from tests.support.polling import until
from tests.support.procs import ROOT, env_for, start_worker, stop

LEASE = 1.5
MAX_DELIVERIES = 2


@dataclass
class Cluster:
    """A test's store and the worker processes it started (all stopped at teardown)."""

    store: JobStore
    redis_url: str
    prefix: str
    log: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def environ(self, **env: str) -> dict[str, str]:
        return {
            "JOBSTREAM_LEASE_SECONDS": str(LEASE),
            "JOBSTREAM_MAX_DELIVERIES": str(MAX_DELIVERIES),
            "JOBSTREAM_TASK_MODULES": "workers.tasks,tests.support.worker_tasks",
            **env,
        }

    def worker(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        proc = start_worker(self.redis_url, self.prefix, *args, env=self.environ(**env), log=self.log)
        self.workers.append(proc)
        return proc

    def taskiq_worker(self, *args: str) -> subprocess.Popen[bytes]:
        """The production form, ``taskiq worker workers.app:broker`` (a manager and one child).

        Stop it with SIGTERM: a SIGKILLed manager would leave its child running.
        """
        argv = [sys.executable, "-m", "taskiq", "worker", "workers.app:broker", "--workers", "1", *args]
        with self.log.open("ab") as out:
            return subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env_for(self.redis_url, self.prefix, self.environ()),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def submit(self, task: str, data: dict[str, Any] | None = None, queue: str = "default") -> str:
        job, _ = await self.store.create(
            task=task, input_json=msgspec.json.encode(data or {}), owner="tester", queue=queue
        )
        return job.id

    async def wait(self, job_id: str, done: Callable[[Job], bool], timeout: float) -> Job:
        async def probe() -> Job | None:
            job = await self.store.get(job_id)
            return job if done(job) else None

        return await until(probe, timeout, f"job {job_id}", self.tail)

    async def count(self, key: str) -> int:
        return int(await self.store.redis.get(key) or 0)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def ended(job: Job) -> bool:
    return job.terminal


def processing(job: Job) -> bool:
    return job.status == JobStatus.PROCESSING


def key() -> str:
    return f"k{uuid.uuid4().hex[:8]}"


async def worker_pid(store: JobStore, job_id: str) -> int:
    consumer: Any = await store.redis.hget(store.keys.job(job_id), "worker")
    return int(consumer.decode().rsplit("-", 2)[1])


@contextlib.asynccontextmanager
async def open_cluster(redis: Redis, redis_url: str, prefix: str, log: Path) -> AsyncIterator[Cluster]:
    """A cluster on ``redis`` with its queues' groups made; SIGKILLs its workers on exit."""
    settings = load_settings({}, redis_url=redis_url, prefix=prefix)
    store = JobStore(redis, settings)
    await ensure_groups(redis, store.keys, ["default", "video"])
    c = Cluster(store, redis_url, prefix, log)
    try:
        yield c
    finally:
        for proc in c.workers:
            stop(proc, signal.SIGKILL)
