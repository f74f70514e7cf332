"""Sentinel failover end to end: the primary SIGKILLed while 300 jobs are being created.

A primary, a replica and three sentinels (Debian's ``redis-server`` and ``redis-sentinel``,
loopback only: ``tests/support/sentinel_servers.py``); a web process, two workers and a
scheduler, all on the one ``redis+sentinel://`` URL with ``JOBSTREAM_CREATE_REPLICAS=1``.
Clients create jobs over HTTP the way the README asks them to: an Idempotency-Key each,
sent again after a 503 (honouring Retry-After, capped at half a second). Once 150 creates
were acknowledged, the primary is SIGKILLed; once the sentinels have promoted the replica,
the dead node comes back as the new primary's replica (as an operator would bring it
back), so creates can be confirmed by a replica again.

Every job that got its 202 (or, sent again, its 200) must end SUCCESS, read by GET, and a
sample followed over SSE through the failover must see it; a job created afterwards runs;
the scheduler's every-second schedule keeps firing; no process logs a traceback or an
error. ``pytest -s`` prints the figures.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from broker.api import Jobstream
from broker.models import JobStatus
from broker.registry import load_task_modules, registry
from broker.settings import load_settings
from scheduler.schedule_source import add_schedule, build_schedule
from tests.support.polling import until, wait_for
from tests.support.procs import ROOT, env_for, stop
from tests.support.sentinel_servers import SentinelServers
from tests.support.sse_support import ResumingReader, strictly_increasing
from tests.support.web_stack import TERMINAL, Job, WebStack, stack_env

pytestmark = pytest.mark.timeout(150)

JOBS = 300
KILL_AFTER = 150
"""The primary dies once this many creates were acknowledged."""
CREATORS = 8
FOLLOWED = 12
"""Jobs followed over SSE from before the kill to their end."""
TASK = {"type": "demo.sleep", "input": {"seconds": 1.5, "steps": 3}}
ENV = {
    "create_replicas": "1",
    "create_replicas_timeout_ms": "500",
    "lease_seconds": "10",  # longer than the failover: a running job keeps its worker
    "task_modules": "workers.tasks",
}


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelServers]:
    with SentinelServers(tmp_path / "redis") as servers:
        yield servers


@dataclass
class Creates:
    """What the creating clients saw: each key's job id, every answer, and when 503s came."""

    ids: dict[str, str] = field(default_factory=dict)
    answers: Counter[str] = field(default_factory=Counter)
    refused: list[float] = field(default_factory=list)
    half_way: asyncio.Event = field(default_factory=asyncio.Event)
    killed: float = float("inf")
    back: float | None = None
    """When the first create sent after the kill was acknowledged."""

    async def create(self, stack: WebStack, key: str, deadline: float) -> None:
        """POST one job until it is acknowledged (202 new, 200 the same job sent again)."""
        while True:
            sent = time.monotonic()
            response = await stack.http.post("/jobs", json=TASK, headers={"Idempotency-Key": key})
            if response.status_code in (200, 202):
                if sent > self.killed and self.back is None:
                    self.back = time.monotonic()
                self.ids[key] = response.json()["id"]
                self.answers[str(response.status_code)] += 1
                if len(self.ids) >= KILL_AFTER:
                    self.half_way.set()
                return
            assert response.status_code == 503, response.text
            self.refused.append(time.monotonic())
            self.answers[f"503 {response.json()['type'].rsplit(':', 1)[-1]}"] += 1
            assert time.monotonic() < deadline, f"{key}: not acknowledged in time: {self.answers}"
            await asyncio.sleep(min(float(response.headers["retry-after"]), 0.5))

    async def all(self, stack: WebStack, deadline: float) -> None:
        keys: asyncio.Queue[str] = asyncio.Queue()
        for i in range(JOBS):
            keys.put_nowait(f"job-{i}")

        async def creator() -> None:
            while not keys.empty():
                await self.create(stack, keys.get_nowait(), deadline)
                await asyncio.sleep(0.005)  # spread the creates over the failover

        await asyncio.gather(*(creator() for _ in range(CREATORS)))


def read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def start_scheduler(url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "taskiq", "scheduler", "scheduler.app:scheduler", "--update-interval", "1"]
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env_for(url, prefix, stack_env(**ENV)), stdout=out, stderr=out
        )


async def until_ended(stack: WebStack, job_id: str) -> Job:
    async def ended() -> Job | None:
        job = await stack.job(job_id)
        return job if job["status"] in TERMINAL else None

    return await until(ended, 60, f"job {job_id} to end", stack.tail, interval=0.2)


def assert_quiet(logs: dict[str, Path]) -> None:
    """No traceback, no error line, no 500 anywhere; each worker that logged Redis gone logged it back."""

    def balanced() -> bool:
        text = read(logs["workers"])
        return text.count("Redis is unreachable") == text.count("Redis is back")

    wait_for(balanced, 10, "each worker to log Redis back", lambda: read(logs["workers"]))
    for name, log in logs.items():
        text = read(log)
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"
        assert not re.search(r"\bERROR\b", text), f"{name}: {text[-3000:]}"
        assert 'HTTP/1.1" 500' not in text, f"{name}: {text[-3000:]}"  # no request answered 500


async def test_the_primary_killed_amid_300_creates_loses_no_acknowledged_job(
    sentinels: SentinelServers, tmp_path: Path, prefix: str
) -> None:
    url = sentinels.sentinel_url()
    logs = {name: tmp_path / f"{name}.log" for name in ("web", "workers", "scheduler")}
    stack = WebStack.open(url, prefix, stack_env(**ENV), logs["web"])
    settings = load_settings({}, redis_url=url, prefix=prefix, task_modules="workers.tasks")
    load_task_modules(settings.task_modules)
    scheduler = None
    try:
        for _ in range(2):
            stack.start_worker(logs["workers"])
        clock = build_schedule(
            registry, "demo.noop", b"{}", every_seconds=1, owner="clock", schedule_id="clock"
        )
        await add_schedule(settings, clock)
        scheduler = start_scheduler(url, prefix, logs["scheduler"])
        await asyncio.to_thread(
            wait_for,
            lambda: (
                read(logs["workers"]).count("consuming") == 2
                and "Startup completed" in read(logs["scheduler"])
            ),
            60,
            "two workers and the scheduler to start",
            lambda: read(logs["workers"]) + read(logs["scheduler"]),
        )

        creates = Creates()
        creating = asyncio.create_task(creates.all(stack, time.monotonic() + 90))
        await asyncio.wait_for(creates.half_way.wait(), 60)
        followed = list(creates.ids.values())[-FOLLOWED:]
        followers = [ResumingReader(stack.http, job_id, time.monotonic() + 90) for job_id in followed]
        killed, killed_wall = time.monotonic(), time.time()
        creates.killed = killed
        old = await asyncio.to_thread(sentinels.kill_primary)
        promoted = await asyncio.to_thread(sentinels.until_failed_over, old)
        failover = time.monotonic() - killed
        await asyncio.to_thread(sentinels.restart_as_replica, old)
        await asyncio.wait_for(creating, 90)

        for follower in followers:  # SSE clients that were following at the kill
            await follower.finished()
            assert follower.events[-1]["status"] == "SUCCESS", follower.versions
            assert strictly_increasing(follower.versions), follower.versions
        jobs = [await until_ended(stack, job_id) for job_id in creates.ids.values()]
        assert len(jobs) == JOBS
        lost = [job for job in jobs if job["status"] != "SUCCESS"]
        assert not lost, lost[:3]

        after = await stack.create("demo.noop", {})  # a new job, after the failover
        await stack.wait(after["id"], lambda job: job["status"] == "SUCCESS", 30)
        async with Jobstream.from_settings(settings) as js:  # the public API, on the new primary

            async def clock_fired_after_failover() -> bool:
                fired = (await js.list("clock", limit=100)).jobs
                return any(j.created_at.timestamp() > killed_wall + failover for j in fired) and all(
                    j.status == JobStatus.SUCCESS for j in fired
                )

            await until(clock_fired_after_failover, 20, "the schedule to fire after the failover", stack.tail)
        assert_quiet(logs)

        in_flight = sum(
            datetime.fromisoformat(j["started_at"]).timestamp()
            < killed_wall
            < datetime.fromisoformat(j["completed_at"]).timestamp()
            for j in jobs
        )
        back = (creates.back or killed) - killed
        print(
            f"\nsentinel failover: {JOBS} jobs, {len(creates.ids)} acknowledged, "
            f"answers {dict(creates.answers)}; "
            f"primary {old.port} -> {promoted.port}, sentinels agreed {failover:.2f} s after the kill; "
            f"creates acknowledged again {back:.2f} s after the kill; {in_flight} running at the kill; "
            f"lost 0; re-runs {sum(j['attempts'] - 1 for j in jobs)}"
        )
    finally:
        if scheduler is not None:
            stop(scheduler)
        await stack.aclose()
