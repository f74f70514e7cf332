"""What an operator sees, with the web app and workers as real processes: every owner's jobs and
the worker running each, ``/workers`` within a second of a start, a killed worker gone within
its heartbeat's TTL, and metrics that move as jobs are created, wait, run and end."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.embedded_redis import free_port
from tests.e2e.conftest import MakeStack
from tests.support.polling import until
from tests.support.procs import stop
from tests.support.sse_support import Reader
from tests.support.web_stack import WebStack, terminal
from tests.support.web_support import new_user

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text page, by name and labels (parsed by prometheus-client)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(page: Samples, name: str, **labels: str) -> float | None:
    return page.get((name, frozenset(labels.items())))


async def workers_listed(stack: WebStack, headers: dict[str, str], want: Callable[[Any], bool]) -> Any:
    async def probe() -> Any:
        listed = (await stack.http.get("/workers", headers=headers)).json()
        return [w for w in listed if want(w)] or None

    return await until(probe, 20, "a worker in /workers", stack.tail)


async def test_admins_see_every_owner_and_the_worker_that_runs_each_job_within_a_second(
    sse_stack: MakeStack,
) -> None:
    stack = await sse_stack(jwt=True)  # the default lease: heartbeats every 10 s but for the prompt ones
    alice, bob, admin = new_user(), new_user(), new_user(admin=True)
    stack.start_worker()
    await workers_listed(stack, admin.headers, lambda w: True)
    admin_feed = Reader(stack.http, "/events", admin.headers)
    alice_feed = Reader(stack.http, "/events", alice.headers)
    await until(lambda: _opened(admin_feed, alice_feed), 10, "both feeds to open")
    mine = await stack.create("demo.noop", Authorization=alice.headers["Authorization"])
    theirs = await stack.create("demo.sleep", {"seconds": 3, "steps": 3}, **bob.headers)

    seen = await workers_listed(stack, admin.headers, lambda w: theirs["id"] in w["running"])
    seen_at = time.time()
    running = await stack.job(theirs["id"], **admin.headers)
    started = datetime.fromisoformat(running["started_at"]).timestamp()
    assert seen_at - started < 1.0, (seen_at, started)  # the prompt heartbeat, not the 10 s one
    assert running["worker"] == seen[0]["consumer"]
    assert seen[0]["busy"] == {"default": 1} and seen[0]["slots"] == 100
    assert (await stack.job(theirs["id"], **bob.headers))["worker"] is None

    listed = (await stack.http.get("/jobs", headers=admin.headers)).json()["jobs"]
    assert {mine["id"], theirs["id"]} <= {job["id"] for job in listed}
    assert {job["owner"] for job in listed} >= {alice.name, bob.name}
    alice_listing = (await stack.http.get("/jobs", headers=alice.headers)).json()["jobs"]
    assert [job["id"] for job in alice_listing] == [mine["id"]]

    await until(lambda: _heard(admin_feed, theirs["id"], "SUCCESS"), 15, "bob's end on the admin's feed")
    ended = [e for e in admin_feed.events if e["id"] == theirs["id"] and e["status"] == "SUCCESS"]
    assert ended[0]["worker"] == seen[0]["consumer"]
    assert all(event["owner"] == alice.name for event in alice_feed.events)
    assert all(event["worker"] is None for event in alice_feed.events)


async def _opened(*readers: Reader) -> bool:
    return all(reader.response is not None for reader in readers)


async def _heard(reader: Reader, job_id: str, status: str) -> bool:
    return any(e["id"] == job_id and e["status"] == status for e in reader.events)


async def test_a_killed_worker_leaves_workers_within_its_heartbeat_ttl(sse_stack: MakeStack) -> None:
    lease = 1.5  # heartbeat TTL: three leases
    stack = await sse_stack(lease_seconds=str(lease))
    worker = stack.start_worker()
    await workers_listed(stack, {}, lambda w: w["pid"] == worker.pid)
    stop(worker, signal.SIGKILL)
    killed = time.monotonic()

    async def gone() -> bool:
        return all(w["pid"] != worker.pid for w in (await stack.http.get("/workers")).json())

    await until(gone, 3 * lease + 5, "the killed worker's heartbeat to expire", stack.tail)
    assert time.monotonic() - killed <= 3 * lease + 1.5


async def test_metrics_move_with_a_run_and_the_oldest_waiting_age_falls_back_to_zero(
    sse_stack: MakeStack,
) -> None:
    port = free_port()
    stack = await sse_stack(worker_metrics_port=str(port), worker_metrics_host="127.0.0.1")
    for _ in range(3):
        await stack.create("demo.noop")
    await stack.create("demo.sleep", {"seconds": 0.2, "steps": 2})
    failed = await stack.create("demo.fail", {"message": "on purpose"})

    first = await _scrape(stack.http)
    assert value(first, "jobstream_queue_waiting", queue="default") == 5
    assert value(first, "jobstream_jobs_created_total", task="demo.noop") == 3
    age = value(first, "jobstream_queue_oldest_waiting_age_seconds", queue="default")
    assert age is not None and age >= 0

    async def older() -> bool:
        page = await _scrape(stack.http)
        later = value(page, "jobstream_queue_oldest_waiting_age_seconds", queue="default")
        return later is not None and later > age + 0.05

    await until(older, 10, "the oldest waiting age to rise while nothing runs")
    stack.start_worker()
    await stack.wait(failed["id"], terminal, 20)
    await until(lambda: _all_ended(stack), 20, "every job to end", stack.tail)

    web = await _scrape(stack.http)
    assert value(web, "jobstream_queue_oldest_waiting_age_seconds", queue="default") == 0
    assert value(web, "jobstream_queue_waiting", queue="default") == 0
    assert value(web, "jobstream_queue_lag", queue="default") == 0
    assert value(web, "jobstream_queue_worker_slots", queue="default") == 100
    worker = await _scrape(stack.http, f"http://127.0.0.1:{port}/metrics")
    assert value(worker, "jobstream_jobs_started_total", task="demo.noop") == 3
    assert value(worker, "jobstream_jobs_finished_total", task="demo.noop", outcome="succeeded") == 3
    assert value(worker, "jobstream_jobs_finished_total", task="demo.fail", outcome="failed") == 1
    assert value(worker, "jobstream_jobs_finished_total", task="demo.sleep", outcome="succeeded") == 1
    assert value(worker, "jobstream_job_run_seconds_count", task="demo.noop") == 3
    slept = value(worker, "jobstream_job_run_seconds_sum", task="demo.sleep")
    assert slept is not None and 0.2 <= slept < 5
    waited = value(worker, "jobstream_job_queue_wait_seconds_sum", task="demo.noop")
    assert value(worker, "jobstream_job_queue_wait_seconds_count", task="demo.noop") == 3
    assert waited is not None and waited >= age  # the oldest alone waited longer than sampled
    assert value(worker, "jobstream_worker_slots") == 100
    assert value(worker, "jobstream_worker_busy_slots") == 0


async def _scrape(http: httpx.AsyncClient, url: str = "/metrics") -> Samples:
    response = await http.get(url)
    assert response.status_code == 200, response.text
    return samples(response.text)


async def _all_ended(stack: WebStack) -> bool:
    jobs = (await stack.http.get("/jobs", params={"limit": 100})).json()["jobs"]
    return len(jobs) == 5 and all(terminal(job) for job in jobs)


async def test_queue_wait_counts_from_a_delayed_jobs_due_time(sse_stack: MakeStack) -> None:
    port = free_port()
    stack = await sse_stack(worker_metrics_port=str(port), worker_metrics_host="127.0.0.1")
    worker = stack.start_worker()
    await workers_listed(stack, {}, lambda w: w["pid"] == worker.pid)  # started: it waits for nothing
    job = await stack.create("demo.noop", fields={"delay_seconds": 1})
    await stack.wait(job["id"], terminal, 15)
    page = await _scrape(stack.http, f"http://127.0.0.1:{port}/metrics")
    waited = value(page, "jobstream_job_queue_wait_seconds_sum", task="demo.noop")
    assert waited is not None and waited < 0.9  # from its run_at (promotion every 0.25 s), not its creation
