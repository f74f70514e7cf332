"""Sentinel failover end to end: the primary SIGKILLed while 300 jobs are being created.

A primary, a replica and three sentinels (Debian's ``redis-server`` and ``redis-sentinel``,
loopback only: ``tests/support/sentinel_servers.py``); a web process, two workers and a
scheduler, all on the one ``redis+sentinel://`` URL with ``JOBSTREAM_CREATE_REPLICAS=1``.
Clients create jobs over HTTP the way the README asks them to: an Idempotency-Key each,
sent again after a 503 (honouring Retry-After). Half-way through, the primary is SIGKILLed;
once the sentinels have promoted the replica, the dead node comes back as the new primary's
replica (as an operator would bring it back), so creates can be confirmed again.

Every job that got its 202 (or, for a create sent again, its 200) must end SUCCESS, seen
by GET and, for a sample, over SSE through the failover; a job created afterwards runs;
the scheduler keeps firing. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from broker.registry import load_task_modules, registry
from broker.settings import load_settings
from scheduler.schedule_source import add_schedule, build_schedule
from tests.support.polling import until, wait_for
from tests.support.procs import ROOT, env_for, stop
from tests.support.sentinel_servers import SentinelServers
from tests.support.sse_support import ResumingReader, strictly_increasing
from tests.support.web_stack import Job, WebStack, stack_env

pytestmark = pytest.mark.timeout(150)

JOBS = 300
KILL_AFTER = 150
"""The primary dies once this many creates were answered 202."""
CREATORS = 8
FOLLOWED = 12
"""Jobs followed over SSE from before the kill to their end."""
TASK = {"type": "demo.sleep", "input": {"seconds": 1.5, "steps": 3}}


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelServers]:
    with SentinelServers(tmp_path / "redis") as servers:
        yield servers


@dataclass
class Creates:
    """What the creating clients saw: each key's job id and status, every 503, and when."""

    ids: dict[str, str] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    tries: Counter[str] = field(default_factory=Counter)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    after_kill_at: float | None = None
    killed_at: float | None = None

    async def create(self, stack: WebStack, key: str, deadline: float) -> None:
        """POST one job until it is acknowledged (202 new, 200 a replay of a confirmed one)."""
        while True:
            self.tries[key] += 1
            response = await stack.http.post("/jobs", json=TASK, headers={"Idempotency-Key": key})
            status = response.status_code
            if status in (200, 202):
                self.ids[key] = response.json()["id"]
                self.answers[str(status)] += 1
                if self.killed_at is not None and self.after_kill_at is None:
                    self.after_kill_at = time.monotonic()
                if len(self.ids) >= KILL_AFTER:
                    self.acked.set()
                return
            assert status == 503, response.text
            self.answers[f"503 {response.json()['type'].rsplit(':', 1)[-1]}"] += 1
            assert time.monotonic() < deadline, f"{key}: no 202 before the deadline: {self.answers}"
            await asyncio.sleep(min(float(response.headers["retry-after"]), 0.5))


async def create_all(stack: WebStack, creates: Creates, deadline: float) -> None:
    keys = [f"job-{i}" for i in range(JOBS)]
    queue: asyncio.Queue[str] = asyncio.Queue()
    for key in keys:
        queue.put_nowait(key)

    async def creator() -> None:
        while not queue.empty():
            await creates.create(stack, queue.get_nowait(), deadline)
            await asyncio.sleep(0.005)  # spread the creates over the failover

    await asyncio.gather(*(creator() for _ in range(CREATORS)))


def read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def start_scheduler(url: str, prefix: str, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskiq", "scheduler", "scheduler.app:scheduler", "--update-interval", "1"],
        cwd=ROOT,
        env=env_for(url, prefix, env),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_the_primary_killed_amid_300_creates_loses_no_acknowledged_job(
    sentinels: SentinelServers, tmp_path: Path, prefix: str
) -> None:
    url = sentinels.sentinel_url()
    env = stack_env(
        create_replicas="1",
        create_replicas_timeout_ms="500",
        lease_seconds="10",
        task_modules="workers.tasks",
    )
    stack = WebStack.open(url, prefix, env, tmp_path / "web.log")
    scheduler = None
    try:
        for _ in range(2):
            stack.start_worker(tmp_path / "workers.log")
        settings = load_settings({}, redis_url=url, prefix=prefix, task_modules="workers.tasks")
        load_task_modules(settings.task_modules)
        clock = build_schedule(
            registry, "demo.noop", b"{}", every_seconds=1, owner="clock", schedule_id="clock"
        )
        await add_schedule(settings, clock)
        scheduler = start_scheduler(url, prefix, tmp_path / "scheduler.log", env)
        await asyncio.to_thread(
            wait_for,
            lambda: (
                read(tmp_path / "workers.log").count("consuming default") == 2
                and "Startup completed" in read(tmp_path / "scheduler.log")
            ),
            60,
            "two workers and the scheduler to start",
            lambda: read(tmp_path / "workers.log") + read(tmp_path / "scheduler.log"),
        )

        creates = Creates()
        started = time.monotonic()
        creating = asyncio.create_task(create_all(stack, creates, started + 90))
        await asyncio.wait_for(creates.acked.wait(), 60)
        followers = [
            ResumingReader(stack.http, job_id, time.monotonic() + 90)
            for job_id in list(creates.ids.values())[-FOLLOWED:]
        ]
        creates.killed_at = time.monotonic()
        killed_wall = time.time()
        old = await asyncio.to_thread(sentinels.kill_primary)
        promoted = await asyncio.to_thread(sentinels.until_failed_over, old)
        failover = time.monotonic() - creates.killed_at
        await asyncio.to_thread(sentinels.restart_as_replica, old)
        await asyncio.wait_for(creating, 90)

        for follower in followers:
            await follower.finished()
            assert follower.events[-1]["status"] == "SUCCESS", follower.versions
            assert strictly_increasing(follower.versions), follower.versions

        async def ended(job_id: str) -> Job:
            async def done() -> Job | None:
                job = await stack.job(job_id)
                return job if job["status"] in ("SUCCESS", "FAILURE", "CANCELLED") else None

            return await until(done, 60, f"job {job_id} to end", stack.tail, interval=0.2)

        jobs = [await ended(job_id) for job_id in creates.ids.values()]
        lost = [job for job in jobs if job["status"] != "SUCCESS"]
        assert not lost, lost[:3]
        assert len(jobs) == JOBS

        after = await stack.create("demo.noop", {})
        await stack.wait(after["id"], lambda job: job["status"] == "SUCCESS", 30)
        reruns = sum(job["attempts"] - 1 for job in jobs)
        in_flight = sum(
            datetime.fromisoformat(job["started_at"]).timestamp() < killed_wall
            < datetime.fromisoformat(job["completed_at"]).timestamp()
            for job in jobs
        )
        print("in flight at the kill:", in_flight)
        print(
            f"\nsentinel failover: {JOBS} jobs, {len(creates.ids)} acknowledged "
            f"({dict(creates.answers)}), primary {old.port} -> {promoted.port} in {failover:.2f} s, "
            f"first 202 after the kill {((creates.after_kill_at or 0) - creates.killed_at):.2f} s, "
            f"lost 0, re-runs {reruns}, tries {sum(creates.tries.values())}"
        )
    finally:
        if scheduler is not None:
            stop(scheduler)
        await stack.aclose()
