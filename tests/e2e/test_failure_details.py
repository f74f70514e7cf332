"""Why a job failed, end to end: real workers record the traceback and a TaskError's details,
the web shows the traceback to admins always and to owners only with ``expose_tracebacks``,
and the worker logs each failed attempt once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from broker.models import JobStatus
from devtools.embedded_redis import EmbeddedRedis
from tests.e2e.conftest import MakeStack
from tests.support.procs import WebServer, start_worker, stop
from tests.support.sse_support import Reader
from tests.support.web_stack import Job, WebStack, stack_env, terminal
from tests.support.web_support import User, new_user
from tests.support.worker_support import ended, open_cluster
from workers.failures import TRACEBACK_LIMIT

MODULES = "workers.tasks,tests.support.worker_tasks,tests.support.failure_tasks"
"""The task modules of this module's processes (the failing tasks are never imported here)."""


@pytest.fixture(scope="module")
def failing_server(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebServer]:
    """A web process and a worker that load the failing tasks; JWT auth, tracebacks not exposed."""
    log = tmp_path_factory.mktemp("failures") / "processes.log"
    env = stack_env(jwt=True, task_modules=MODULES)
    server = WebServer(redis_server.url, f"f{uuid.uuid4().hex[:8]}:", env, log, log_level="info")
    try:
        server.start()
        worker = start_worker(server.redis_url, server.prefix, env=env, log=log)
        try:
            yield server
        finally:
            stop(worker)
    finally:
        server.close()


@pytest_asyncio.fixture
async def stack(failing_server: WebServer, user: User) -> AsyncIterator[WebStack]:
    """The module's stack, every request sent as this test's ``user`` unless a test says otherwise."""
    handle = WebStack.joining(failing_server)
    handle.http.headers.update(user.headers)
    try:
        yield handle
    finally:
        await handle.aclose()


async def _failed(stack: WebStack, task: str, data: dict[str, Any] | None = None) -> Job:
    created = await stack.create(task, data)
    job = await stack.wait(created["id"], terminal)
    assert job["status"] == JobStatus.FAILURE, job
    return job


async def _streamed(stack: WebStack, url: str, job_id: str, headers: dict[str, str] | None = None) -> Job:
    """The job's last state as the SSE stream at ``url`` sends it."""
    reader = Reader(stack.http, url, headers)
    try:
        await reader.until(lambda r: any(e["id"] == job_id for e in r.events), what=f"job {job_id}")
        return [event for event in reader.events if event["id"] == job_id][-1]
    finally:
        await reader.close()


async def _admin_get(stack: WebStack, path: str, admin: User) -> Any:
    return (await stack.http.get(path, headers=admin.headers)).json()


@pytest.mark.timeout(60)
async def test_an_admin_sees_the_traceback_the_owner_does_not(stack: WebStack, user: User) -> None:
    admin = new_user(admin=True)
    job = await _failed(stack, "failures.value_error", {"message": "case 42 has no file"})
    job_id = job["id"]
    assert job["error"] == {"type": "ValueError", "message": "case 42 has no file"}  # no details at all

    full = await stack.http.get(f"/jobs/{job_id}", headers=admin.headers)
    trace = full.json()["error"]["details"]["traceback"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert "in parse_the_input\n" in trace
    assert trace.endswith("ValueError: case 42 has no file\n")
    owner_answer = await stack.http.get(f"/jobs/{job_id}")
    assert owner_answer.headers["etag"] == full.headers["etag"]  # one version, whoever reads it

    listed = (await stack.http.get("/jobs")).json()["jobs"]
    assert [j["error"] for j in listed if j["id"] == job_id] == [job["error"]]
    admin_listed = (await _admin_get(stack, f"/jobs?owner={user.name}", admin))["jobs"]
    assert [j["error"]["details"]["traceback"] for j in admin_listed if j["id"] == job_id] == [trace]

    result = await stack.http.get(f"/jobs/{job_id}/result")
    assert result.status_code == 409
    assert result.json()["error"] == job["error"]
    assert (await _admin_get(stack, f"/jobs/{job_id}/result", admin))["error"]["details"][
        "traceback"
    ] == trace

    events = f"/jobs/{job_id}/events"
    assert (await _streamed(stack, events, job_id))["error"] == job["error"]
    assert (await _streamed(stack, events, job_id, admin.headers))["error"]["details"]["traceback"] == trace
    assert (await _streamed(stack, "/events", job_id))["error"] == job["error"]


@pytest.mark.timeout(60)
async def test_a_task_error_records_its_own_details_and_is_not_retried(stack: WebStack, user: User) -> None:
    admin = new_user(admin=True)
    job = await _failed(stack, "failures.encrypted")
    assert job["attempts"] == 1  # retry=False, though the task allows 3 retries
    own = {"page": 3, "opaque": "<Opaque thing>"}
    assert job["error"] == {"type": "PdfEncrypted", "message": "PDF is encrypted", "details": own}
    details = (await _admin_get(stack, f"/jobs/{job['id']}", admin))["error"]["details"]
    assert details.pop("traceback").endswith("PdfEncrypted: PDF is encrypted\n")
    assert details == own


@pytest.mark.timeout(60)
async def test_a_very_long_traceback_is_shortened_keeping_where_it_failed(stack: WebStack) -> None:
    admin = new_user(admin=True)
    job = await _failed(stack, "failures.deep", {"depth": 400})
    trace = (await _admin_get(stack, f"/jobs/{job['id']}", admin))["error"]["details"]["traceback"]
    assert len(trace) <= TRACEBACK_LIMIT
    first, marker, *_ = trace.splitlines()
    assert first == "Traceback (most recent call last):"
    assert marker.startswith("  [... shortened from ")
    assert 'raise RuntimeError("the bottom of the stack")' in trace
    assert trace.endswith("RuntimeError: the bottom of the stack\n")


@pytest.mark.timeout(90)
async def test_with_expose_tracebacks_the_owner_sees_it(sse_stack: MakeStack) -> None:
    stack = await sse_stack(jwt=True, task_modules=MODULES, expose_tracebacks="true")
    stack.start_worker()
    owner = new_user()
    stack.http.headers.update(owner.headers)
    job = await _failed(stack, "failures.value_error", {"message": "shown"})
    trace = job["error"]["details"]["traceback"]
    assert "in parse_the_input\n" in trace
    assert (await _streamed(stack, f"/jobs/{job['id']}/events", job["id"]))["error"]["details"] == {
        "traceback": trace
    }


@pytest.mark.timeout(60)
async def test_the_worker_logs_each_failed_attempt_once_with_its_traceback(
    redis: Redis, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    async with open_cluster(redis, redis_url, prefix, log) as cluster:
        cluster.worker(JOBSTREAM_TASK_MODULES=MODULES)
        job_id = await cluster.submit("failures.retried", {"message": "no such case"})
        waiting = await cluster.wait(job_id, lambda j: j.error is not None, 20)
        assert waiting.status == JobStatus.PENDING  # the retry waits 1 to 2 s, with the first error
        assert waiting.error is not None
        assert waiting.error.details["traceback"].endswith("ValueError: no such case (attempt 1)\n")
        job = await cluster.wait(job_id, ended, 20)
        assert job.status == JobStatus.FAILURE and job.attempts == 2
    text = log.read_text()
    first = (
        f"job {job_id} (task failures.retried) attempt 1 of 2 failed: ValueError: no such case (attempt 1); "
    )
    assert text.count(first + "retrying in ") == 1, text
    last = (
        f"job {job_id} (task failures.retried) attempt 2 of 2 failed: ValueError: no such case (attempt 2); "
    )
    assert text.count(last + "the job FAILED") == 1, text
    assert text.count("Traceback (most recent call last):") == 2, text  # once per attempt, nothing else
    assert text.count("in parse_the_input\n") == 2, text
