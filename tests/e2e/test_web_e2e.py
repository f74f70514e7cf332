"""End to end with real processes: the web app under uvicorn, a real worker, httpx as the client.

Tests that only need a running worker share the module's server and worker (each as an
owner of its own); the others make a stack of their own and say why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from broker.keys import Keys, partition_of
from tests.support.polling import until
from tests.support.web_stack import WebStack, terminal
from tests.support.web_support import PROBLEM_JSON

ACTIVE_TTL = 4321
RETENTION = 2345


async def ttl_near(redis: Redis, key: str, expected: int) -> None:
    ttl = await redis.ttl(key)
    assert expected - 10 <= ttl <= expected, f"TTL of {key} is {ttl}, expected about {expected}"


@pytest.mark.timeout(60)
async def test_sleep_job_from_pending_through_progress_to_success(sse_stack: Any, redis: Redis) -> None:
    # A stack of its own: TTL settings of its own, and no worker until the job was seen PENDING.
    stack: WebStack = await sse_stack(active_ttl_seconds=str(ACTIVE_TTL), retention_seconds=str(RETENTION))
    job = await stack.create("demo.sleep", {"seconds": 1.5, "steps": 3})
    job_id, key = job["id"], stack.job_key(job["id"])
    polled = await stack.http.get(f"/jobs/{job_id}")
    assert polled.json()["status"] == "PENDING"
    assert polled.headers["retry-after"] == "1"
    assert (await stack.http.get(f"/jobs/{job_id}/result")).status_code == 202
    await ttl_near(redis, key, ACTIVE_TTL)

    stack.start_worker()
    history, not_modified = await poll_until_terminal(stack, job_id, redis)
    statuses = [snapshot["status"] for snapshot in history]
    assert statuses[0] == "PENDING"
    assert statuses[-1] == "SUCCESS"
    assert statuses == sorted(statuses, key=["PENDING", "PROCESSING", "SUCCESS"].index)
    running = [snapshot for snapshot in history if snapshot["status"] == "PROCESSING"]
    progress = [snapshot["progress"] for snapshot in running]
    assert progress == sorted(progress)
    assert len(set(progress)) >= 2, progress  # it rose while we watched
    assert {s["message"] for s in running} & {"step 1 of 3", "step 2 of 3"}
    assert not_modified > 0  # polls with the last ETag were answered 304

    final = await stack.http.get(f"/jobs/{job_id}")
    assert "retry-after" not in final.headers
    assert final.json()["progress"] == 100.0
    assert final.json()["message"] == "step 3 of 3"
    await ttl_near(redis, key, RETENTION)
    result = await stack.http.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.json() == {"id": job_id, "status": "SUCCESS", "result": {"slept": 1.5}}


async def poll_until_terminal(stack: WebStack, job_id: str, redis: Redis) -> tuple[list[dict[str, Any]], int]:
    """Poll like a client: send the last ETag; record each new state; check the TTL once running."""
    history: list[dict[str, Any]] = []
    etag, not_modified, checked_ttl = "", 0, False

    async def probe() -> bool:
        nonlocal etag, not_modified, checked_ttl
        response = await stack.http.get(f"/jobs/{job_id}", headers={"If-None-Match": etag} if etag else {})
        if response.status_code == 304:
            assert response.headers["etag"] == etag
            not_modified += 1
            return False
        assert response.status_code == 200
        etag = response.headers["etag"]
        history.append(response.json())
        if history[-1]["status"] == "PROCESSING" and not checked_ttl:
            await ttl_near(redis, stack.job_key(job_id), ACTIVE_TTL)
            checked_ttl = True
        return terminal(history[-1])

    await until(probe, 30, "the job to end", interval=0.02)
    assert checked_ttl
    return history, not_modified


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("module_worker")
async def test_failing_job_ends_failure_and_its_result_is_409(user_stack: WebStack) -> None:
    stack = user_stack
    job = await stack.create("demo.fail", {"message": "boom at step 3"})
    ended = await stack.wait(job["id"], terminal)
    assert ended["status"] == "FAILURE"
    assert ended["error"]["message"] == "boom at step 3"
    result = await stack.http.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 409
    assert result.headers["content-type"] == PROBLEM_JSON
    problem = result.json()
    assert problem["job_status"] == "FAILURE"
    assert problem["detail"] == "boom at step 3"
    assert problem["error"]["message"] == "boom at step 3"


@pytest.mark.timeout(60)
async def test_cancelled_pending_job_is_skipped_by_a_later_worker(sse_stack: Any, redis: Redis) -> None:
    # A stack of its own: its queue must be empty and no worker started until the job is cancelled.
    stack: WebStack = await sse_stack()
    job = await stack.create("demo.sleep", {"seconds": 5})
    stream = Keys(stack.prefix).queue("default", partition_of(job["id"]))
    assert await redis.xlen(stream) == 1
    response = await stack.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert (await stack.http.post(f"/jobs/{job['id']}/cancel")).status_code == 409

    stack.start_worker()

    async def drained() -> bool:
        pending = await redis.xpending(stream, "workers")
        return await redis.xlen(stream) == 0 and pending["pending"] == 0

    await until(drained, 20, "the worker to ack and drop the cancelled job's message")
    after = await stack.job(job["id"])
    assert after["status"] == "CANCELLED"
    assert after["attempts"] == 0
    assert after["version"] == response.json()["version"]


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("module_worker")
async def test_cancel_a_running_job_stops_it(user_stack: WebStack) -> None:
    stack = user_stack
    job = await stack.create("demo.sleep", {"seconds": 30, "steps": 300})
    await stack.wait(job["id"], lambda j: j["status"] == "PROCESSING")
    response = await stack.http.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    asked = response.json()
    assert asked["status"] == "CANCELLED" or (asked["status"] == "PROCESSING" and asked["cancel_requested"])
    ended = await stack.wait(job["id"], terminal, timeout=10)
    assert ended["status"] == "CANCELLED"
    assert (await stack.http.get(f"/jobs/{job['id']}/result")).status_code == 409


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("module_worker")
async def test_delayed_job_starts_no_earlier_than_its_delay(user_stack: WebStack) -> None:
    stack = user_stack
    job = await stack.create("demo.noop", fields={"delay_seconds": 2})
    assert job["status"] == "PENDING"
    assert job["run_at"] is not None
    ended = await stack.wait(job["id"], terminal, timeout=20)
    assert ended["status"] == "SUCCESS"
    waited = datetime.fromisoformat(ended["started_at"]) - datetime.fromisoformat(job["created_at"])
    assert waited.total_seconds() >= 2.0
    assert datetime.fromisoformat(ended["started_at"]) >= datetime.fromisoformat(job["run_at"])
