"""A service acting for its users, and per-job options, against real processes (bearer-JWT).

A backend holding a token with the ``service`` role creates a job for alice: the job is
alice's (she reads and lists it, bob gets 404), it names the service in ``created_by``, the
web logs who did what, and the answer's stream token opens alice's stream. A plain user
passing ``owner`` gets 403. A per-job ``timeout`` stops a real worker's run; a
keep-until-fetched job's record outlives its end only until alice fetches it.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.polling import until
from tests.support.sse_support import Reader
from tests.support.web_stack import TASK_MODULES, WebStack, terminal
from tests.support.web_support import JWT_SETTINGS, PROBLEM_JSON, User, assert_hidden, new_user
from web.auth import make_token

pytestmark = pytest.mark.timeout(90)


def new_service() -> User:
    name = f"svc-{uuid.uuid4().hex[:8]}"
    return User(name, make_token(JWT_SETTINGS, name, [JWT_SETTINGS.service_role]))


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, object] = response.json()
    return problem


async def test_a_service_creates_a_job_that_is_the_owners(module_stack: WebStack, user: User) -> None:
    stack, alice, bob, service = module_stack, user, new_user(), new_service()
    body = {"type": "demo.sleep", "input": {"seconds": 30}, "owner": alice.name, "labels": {"case": "42"}}
    created = await stack.http.post("/jobs", json=body, headers=service.headers)
    assert created.status_code == 202, created.text
    job = created.json()
    assert (job["owner"], job["created_by"], job["labels"]) == (alice.name, service.name, {"case": "42"})

    seen = await stack.job(job["id"], **alice.headers)
    assert (seen["owner"], seen["created_by"]) == (alice.name, service.name)
    listed = (await stack.http.get("/jobs", headers=alice.headers)).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    await assert_hidden(stack.http, "GET", "/jobs/{id}", job["id"], bob.headers)
    assert (await stack.http.get("/jobs", headers=service.headers)).json()["jobs"] == []  # not the service's

    for_alice = await stack.http.get(f"/jobs?owner={alice.name}&label=case:42", headers=service.headers)
    assert [j["id"] for j in for_alice.json()["jobs"]] == [job["id"]]
    assert (await stack.job(job["id"], **service.headers))["owner"] == alice.name
    cancelled = await stack.http.post(f"/jobs/{job['id']}/cancel", headers=service.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"

    line = f"job {job['id']} created for owner {alice.name} by service {service.name}"
    await until(lambda: _logged(stack, line), 10, "the web's log line", stack.tail)


async def _logged(stack: WebStack, line: str) -> bool:
    return line in stack.log_text()


async def test_the_stream_token_of_a_service_created_job_opens_the_owners_stream(
    module_stack: WebStack, user: User
) -> None:
    stack, service = module_stack, new_service()
    body = {"type": "demo.sleep", "input": {"seconds": 30}, "owner": user.name}
    job = (await stack.http.post("/jobs", json=body, headers=service.headers)).json()
    reader = Reader(stack.http, f"/jobs/{job['id']}/events?token={job['stream_token']}")
    try:
        await reader.until(lambda r: bool(r.events), what="the first event")
        assert (reader.events[0]["id"], reader.events[0]["owner"]) == (job["id"], user.name)
    finally:
        await reader.close()
    owner_feed = await stack.http.get(f"/events?token={job['stream_token']}")
    assert owner_feed.status_code in (401, 403, 404)  # a job's token opens that job, not the feed
    grant = await stack.http.post(f"/jobs/{job['id']}/stream-token", headers=service.headers)
    assert grant.status_code == 201  # asked later by the service, for the owner's browser too
    later = Reader(stack.http, grant.json()["url"])
    try:
        await later.until(lambda r: bool(r.events), what="the first event on the later token")
        assert later.events[0]["owner"] == user.name
    finally:
        await later.close()
    await stack.http.post(f"/jobs/{job['id']}/cancel", headers=service.headers)


async def test_a_plain_user_may_not_pass_another_owner(module_stack: WebStack, user: User) -> None:
    stack, bob = module_stack, new_user()
    body = {"type": "demo.noop", "owner": bob.name}
    problem = assert_problem(await stack.http.post("/jobs", json=body, headers=user.headers), 403)
    assert "service" in str(problem["detail"])
    admin = new_user(admin=True)  # an admin is no service either
    assert_problem(await stack.http.post("/jobs", json=body, headers=admin.headers), 403)
    assert (await stack.http.get("/jobs", headers=bob.headers)).json()["jobs"] == []
    own = {"type": "demo.noop", "owner": user.name}  # naming oneself is no act on another's behalf
    mine = await stack.http.post("/jobs", json=own, headers=user.headers)
    assert mine.status_code == 202 and mine.json()["created_by"] is None
    assert_problem(await stack.http.get(f"/jobs?owner={bob.name}", headers=user.headers), 403)


@pytest.mark.usefixtures("module_worker")
async def test_a_jobs_own_timeout_stops_its_run(module_stack: WebStack, user: User) -> None:
    stack = module_stack
    body = {"type": "demo.sleep", "input": {"seconds": 60, "steps": 1}, "timeout": 0.5}
    created = await stack.http.post("/jobs", json=body, headers=user.headers)
    assert created.status_code == 202, created.text
    assert created.json()["timeout_seconds"] == 0.5
    stack.http.headers.update(user.headers)
    done = await stack.wait(created.json()["id"], terminal, timeout=30)
    assert done["status"] == "FAILURE", done
    assert done["error"]["type"] == "Timeout"
    assert "0.5 s" in done["error"]["message"]


async def test_keep_until_fetched_with_real_processes(sse_stack: Any) -> None:
    stack = await sse_stack(
        jwt=True, task_modules=f"{TASK_MODULES},tests.support.option_tasks", fetched_grace_seconds="20"
    )
    stack.start_worker()
    alice, admin = new_user(), new_user(admin=True)
    job = await stack.create("options.kept", **alice.headers)
    assert job["keep_until_fetched"] is True
    stack.http.headers.update(admin.headers)  # the admin polls: a look, not a fetch
    done = await stack.wait(job["id"], terminal)
    assert done["status"] == "SUCCESS"
    assert await _ttl(stack, job["id"]) > 3000  # options.kept's retention: 3600 s
    fetched = await stack.job(job["id"], **alice.headers)
    assert fetched["result"] == job["id"]
    assert 0 < await _ttl(stack, job["id"]) <= 20
    assert fetched["expires_at"] < done["expires_at"]


async def _ttl(stack: WebStack, job_id: str) -> int:
    redis = Redis.from_url(stack.redis_url)
    try:
        return int(await redis.ttl(stack.job_key(job_id)))
    finally:
        await redis.aclose()
