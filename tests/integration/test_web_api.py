"""The HTTP API in process (Litestar's test client) on a real Redis: no worker runs here,
so every job stays PENDING unless a test cancels it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from broker.keys import Keys
from broker.settings import Settings
from broker.store import JobStore
from devtools.embedded_redis import free_port
from tests.support.web_support import PROBLEM_JSON, app_client, job_keys, keys_under, web_settings
from web.app import create_app, normalize_prefix

pytestmark = pytest.mark.timeout(60)

Client = AsyncTestClient[Litestar]


@pytest_asyncio.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[Client]:
    async with app_client(web_settings(redis_url, prefix)) as c:
        yield c


async def create(client: Client, task: str = "demo.noop", data: Any = None, **extra: Any) -> dict[str, Any]:
    body = {"type": task, "input": {} if data is None else data, **extra}
    response = await client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


# -- creating ----------------------------------------------------------------------------


async def test_create_answers_202_with_location_and_the_pending_job(client: Client, redis: Redis) -> None:
    response = await client.post("/jobs", json={"type": "demo.sleep", "input": {"seconds": 2}})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["etag"] == '"1"'
    assert job["status"] == "PENDING"
    assert job["owner"] == "local"
    assert job["queue"] == "default"
    assert job["input"] == {"seconds": 2.0, "steps": 10}  # validated, defaults filled in, re-encoded
    assert job.pop("stream_token") is None  # no-auth mode: a stream needs no token
    assert (await client.get(response.headers["location"])).json() == job


async def test_create_without_input_means_empty_object(client: Client) -> None:
    response = await client.post("/jobs", json={"type": "demo.noop"})
    assert response.status_code == 202
    assert response.json()["input"] == {}


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b'["demo.noop"]', 422, "Expected `object`, got `array`"),
        (b'{"input": {}}', 422, "missing required field `type`"),
        (b'{"type": "demo.noop", "priority": 9}', 422, "unknown field `priority`"),
        (b'{"type": "demo.nope"}', 404, "demo.nope"),
        (b'{"type": ""}', 422, "length >= 1"),
        (
            b'{"type": "demo.sleep", "input": {"seconds": "ten"}}',
            422,
            "Expected `float`, got `str` - at `$.input.seconds`",
        ),
        (b'{"type": "demo.sleep", "input": {"seconds": -1}}', 422, "at `$.input.seconds`"),
        (b'{"type": "demo.sleep", "input": {"naps": 3}}', 422, "unknown field `naps`"),
        (b'{"type": "demo.wordcount", "input": {}}', 422, "missing required field `text`"),
        (b'{"type": "demo.noop", "delay_seconds": -1}', 422, "at `$.delay_seconds`"),
        (b'{"type": "demo.noop", "run_at": "2030-01-01T00:00:00"}', 422, "timezone"),
    ],
)
async def test_bad_bodies_are_problems_and_write_nothing(
    client: Client, redis: Redis, prefix: str, body: bytes, status: int, needle: str
) -> None:
    before = await keys_under(redis, prefix)
    response = await client.post("/jobs", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, status)
    assert needle in problem["detail"]
    assert problem["instance"] == "/jobs"
    assert await keys_under(redis, prefix) == before
    assert await redis.xlen(Keys(prefix).queue("default", 0)) == 0


async def test_invalid_input_names_the_field(client: Client) -> None:
    response = await client.post("/jobs", json={"type": "demo.sleep", "input": {"seconds": "x"}})
    problem = assert_problem(response, 422)
    assert problem["type"] == "urn:jobstream:problem:invalid-input"
    assert problem["errors"] == [
        {"message": "Expected `float`, got `str`", "field": "$.input.seconds", "source": "body"}
    ]


async def test_body_over_the_limit_is_413_and_writes_nothing(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    async with app_client(web_settings(redis_url, prefix, max_body_bytes=512)) as client:
        before = await keys_under(redis, prefix)
        text = "word " * 200
        response = await client.post("/jobs", json={"type": "demo.wordcount", "input": {"text": text}})
        assert assert_problem(response, 413)["detail"] == "the request body is larger than 512 bytes"
        assert await keys_under(redis, prefix) == before
        assert (
            await client.post("/jobs", json={"type": "demo.wordcount", "input": {"text": "a b"}})
        ).status_code == 202


async def test_over_the_active_quota_is_429(redis_url: str, prefix: str, redis: Redis) -> None:
    async with app_client(web_settings(redis_url, prefix, max_active_per_owner=2)) as client:
        first = await create(client)
        await create(client)
        problem = assert_problem(await client.post("/jobs", json={"type": "demo.noop"}), 429)
        assert problem["type"] == "urn:jobstream:problem:quota-exceeded"
        assert len(await job_keys(redis, prefix)) == 2
        assert (await client.post(f"/jobs/{first['id']}/cancel")).status_code == 200
        await create(client)  # a slot is free again


async def test_same_idempotency_key_gives_the_same_job_once(
    client: Client, redis: Redis, prefix: str
) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/jobs", json={"type": "demo.noop"}, headers=headers)
    again = await client.post("/jobs", json={"type": "demo.noop"}, headers=headers)
    other = await client.post("/jobs", json={"type": "demo.noop"}, headers={"Idempotency-Key": "order-43"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert other.json()["id"] != first.json()["id"]
    assert len(await job_keys(redis, prefix)) == 2
    assert await redis.xlen(Keys(prefix).queue("default", 0)) == 2


async def test_idempotency_key_replay_still_validates_the_body(
    client: Client, redis: Redis, prefix: str
) -> None:
    headers = {"Idempotency-Key": "k"}
    assert (await client.post("/jobs", json={"type": "demo.noop"}, headers=headers)).status_code == 202
    bad = await client.post("/jobs", json={"type": "demo.sleep", "input": {"seconds": "x"}}, headers=headers)
    assert_problem(bad, 422)
    assert len(await job_keys(redis, prefix)) == 1


async def test_idempotency_key_replayed_with_another_valid_body_is_a_422(
    client: Client, redis: Redis, prefix: str
) -> None:
    headers = {"Idempotency-Key": "k"}
    body = {"type": "demo.sleep", "input": {"seconds": 1}}
    first = await client.post("/jobs", json=body, headers=headers)
    other = await client.post("/jobs", json={**body, "input": {"seconds": 2}}, headers=headers)
    problem = assert_problem(other, 422)
    assert problem["type"] == "urn:jobstream:problem:idempotency-key-reused"
    assert first.json()["id"] in problem["detail"]
    assert (await client.post("/jobs", json=body, headers=headers)).status_code == 200
    assert len(await job_keys(redis, prefix)) == 1


async def test_overlong_idempotency_key_is_refused(client: Client, redis: Redis, prefix: str) -> None:
    response = await client.post("/jobs", json={"type": "demo.noop"}, headers={"Idempotency-Key": "k" * 256})
    assert_problem(response, 400)
    assert await job_keys(redis, prefix) == set()


# -- scheduling ------------------------------------------------------------------------------


async def test_delay_seconds_sets_run_at(client: Client, redis: Redis, prefix: str) -> None:
    job = await create(client, delay_seconds=5)
    created = datetime.fromisoformat(job["created_at"])
    run_at = datetime.fromisoformat(job["run_at"])
    assert timedelta(seconds=4.9) <= run_at - created <= timedelta(seconds=5.1)
    assert await redis.xlen(Keys(prefix).queue("default", 0)) == 0  # waits in the delayed set
    assert await redis.zcard(Keys(prefix).delayed("default", 0)) == 1


async def test_run_at_in_the_future_is_kept(client: Client) -> None:
    when = (datetime.now(UTC) + timedelta(minutes=10)).replace(microsecond=0)
    job = await create(client, run_at=when.isoformat())
    assert datetime.fromisoformat(job["run_at"]) == when


@pytest.mark.parametrize(
    ("schedule", "needle", "field"),
    [
        ({"delay_seconds": 1, "run_at": "2030-01-01T00:00:00Z"}, "not both", "$"),
        ({"delay_seconds": 10**9}, "at most", "$.delay_seconds"),
        ({"run_at": "2999-01-01T00:00:00+02:00"}, "at most", "$.run_at"),
    ],
)
async def test_bad_schedules_are_422_and_write_nothing(
    client: Client, redis: Redis, prefix: str, schedule: dict[str, Any], needle: str, field: str
) -> None:
    before = await keys_under(redis, prefix)
    response = await client.post("/jobs", json={"type": "demo.noop", **schedule})
    problem = assert_problem(response, 422)
    assert needle in problem["detail"]
    assert problem["type"] == "urn:jobstream:problem:invalid-schedule"
    assert [(e["field"], e["source"]) for e in problem["errors"]] == [(field, "body")]
    assert await keys_under(redis, prefix) == before


async def test_delay_is_bounded_by_the_active_ttl(redis_url: str, prefix: str) -> None:
    async with app_client(web_settings(redis_url, prefix, active_ttl_seconds=100)) as client:
        assert_problem(await client.post("/jobs", json={"type": "demo.noop", "delay_seconds": 95}), 422)
        assert (
            await client.post("/jobs", json={"type": "demo.noop", "delay_seconds": 80})
        ).status_code == 202


# -- reading ---------------------------------------------------------------------------------


async def test_etag_and_conditional_get(client: Client) -> None:
    job = await create(client)
    url = f"/jobs/{job['id']}"
    first = await client.get(url)
    assert first.status_code == 200
    assert first.headers["etag"] == '"1"'
    assert first.headers["cache-control"] == "no-cache"
    assert first.headers["retry-after"] == "1"

    cached = await client.get(url, headers={"If-None-Match": '"1"'})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == '"1"'
    assert cached.headers["retry-after"] == "1"
    assert (await client.get(url, headers={"If-None-Match": 'W/"0", W/"1"'})).status_code == 304

    await client.post(f"{url}/cancel")
    changed = await client.get(url, headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200
    assert changed.headers["etag"] == '"2"'
    assert changed.json()["status"] == "CANCELLED"
    assert "retry-after" not in changed.headers  # terminal: nothing more to poll for


async def test_unknown_job_is_404_everywhere(client: Client) -> None:
    for method, path in [("GET", ""), ("GET", "/result"), ("POST", "/cancel")]:
        response = await client.request(method, f"/jobs/00000000-0000-4000-8000-000000000000{path}")
        assert assert_problem(response, 404)["type"] == "urn:jobstream:problem:job-not-found"


async def test_result_is_202_while_pending_and_409_once_cancelled(client: Client) -> None:
    job = await create(client)
    pending = await client.get(f"/jobs/{job['id']}/result")
    assert pending.status_code == 202
    assert pending.headers["retry-after"] == "1"
    assert pending.json() == {"id": job["id"], "status": "PENDING", "result": None}

    await client.post(f"/jobs/{job['id']}/cancel")
    problem = assert_problem(await client.get(f"/jobs/{job['id']}/result"), 409)
    assert problem["job_status"] == "CANCELLED"
    assert problem["error"]["type"] == "Cancelled"


# -- cancelling ------------------------------------------------------------------------------


async def test_cancel_pending_then_terminal_is_409(client: Client, redis: Redis, prefix: str) -> None:
    job = await create(client, "demo.sleep")
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    cancelled = response.json()
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["error"]["type"] == "Cancelled"
    assert "retry-after" not in response.headers
    ttl = await redis.ttl(Keys(prefix).job(job["id"]))
    assert 7 * 86_400 - 5 <= ttl <= 7 * 86_400  # the default retention now applies

    again = assert_problem(await client.post(f"/jobs/{job['id']}/cancel"), 409)
    assert again["job_status"] == "CANCELLED"
    assert again["type"] == "urn:jobstream:problem:illegal-transition"


# -- listing ---------------------------------------------------------------------------------


async def test_listing_pages_newest_first_without_duplicates(client: Client) -> None:
    created = [await create(client, "demo.noop" if i % 2 else "demo.sleep") for i in range(7)]
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/jobs", params=params)
        assert response.status_code == 200
        page = response.json()
        assert len(page["jobs"]) <= 3
        seen.extend(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [job["id"] for job in seen]
    assert len(ids) == len(set(ids)) == 7
    assert set(ids) == {job["id"] for job in created}
    times = [job["created_at"] for job in seen]
    assert times == sorted(times, reverse=True)


async def test_listing_filters_by_status_and_type(client: Client) -> None:
    sleeps = [await create(client, "demo.sleep") for _ in range(3)]
    noops = [await create(client, "demo.noop") for _ in range(2)]
    await client.post(f"/jobs/{sleeps[0]['id']}/cancel")

    async def ids(**params: Any) -> set[str]:
        response = await client.get("/jobs", params=params)
        assert response.status_code == 200
        return {job["id"] for job in response.json()["jobs"]}

    assert await ids(status="CANCELLED") == {sleeps[0]["id"]}
    assert await ids(type="demo.noop") == {job["id"] for job in noops}
    assert await ids(type="demo.sleep", status="PENDING") == {job["id"] for job in sleeps[1:]}
    assert await ids(limit=100) == {job["id"] for job in sleeps + noops}


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "status=DONE", "cursor=abc"])
async def test_bad_listing_parameters_are_400_problems(client: Client, query: str) -> None:
    problem = assert_problem(await client.get(f"/jobs?{query}"), 400)
    assert problem["errors"][0]["source"] == "query"


async def test_plain_user_cannot_list_another_owner(client: Client) -> None:
    assert_problem(await client.get("/jobs", params={"owner": "someone-else"}), 403)
    assert (await client.get("/jobs", params={"owner": "local"})).status_code == 200


# -- catalogue, ops, docs, errors ------------------------------------------------------------


async def test_tasks_lists_types_with_schemas(client: Client) -> None:
    response = await client.get("/tasks")
    assert response.status_code == 200
    tasks = {task["name"]: task for task in response.json()["tasks"]}
    assert {"demo.noop", "demo.sleep", "demo.fail", "demo.wordcount"} <= set(tasks)
    sleep = tasks["demo.sleep"]
    assert sleep["queue"] == "default"
    assert sleep["retention_seconds"] == 7 * 86_400
    props = sleep["input_schema"]["$defs"]["SleepInput"]["properties"]
    assert props["seconds"]["type"] == "number"
    assert sleep["output_schema"]["$defs"]["SleepResult"]["properties"]["slept"]["type"] == "number"


async def test_health_readiness_and_home(client: Client) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    home = await client.get("/")
    assert home.status_code == 200
    assert "jobstream" in home.text
    assert '<base href="/">' in home.text  # the dashboard (tests/browser/test_dashboard_browser.py)


async def test_readyz_is_503_when_redis_is_gone(client: Client) -> None:
    app = client.app
    live: JobStore = app.state.store
    app.state.store = JobStore(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), live.settings)
    try:
        response = await client.get("/readyz")
    finally:
        await app.state.store.redis.aclose()
        app.state.store = live
    problem = assert_problem(response, 503)
    assert "Redis" in problem["detail"]
    assert (await client.get("/healthz")).status_code == 200


async def test_openapi_schema_and_docs_page(client: Client) -> None:
    docs = await client.get("/schema")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    spec = (await client.get("/schema/openapi.json")).json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/cancel", "/tasks"} <= set(
        spec["paths"]
    )
    create_op = spec["paths"]["/jobs"]["post"]
    body = create_op["requestBody"]["content"]["application/json"]["schema"]  # one shape per task type
    assert all(shape["required"][0] == "type" for shape in body["oneOf"])
    created = {"$ref": "#/components/schemas/CreatedJob"}
    for status in ("202", "200"):  # 200: an Idempotency-Key replay
        assert create_op["responses"][status]["content"]["application/json"]["schema"] == created
    assert create_op["responses"]["422"]["content"][PROBLEM_JSON]
    assert [p["name"] for p in create_op["parameters"]] == ["Idempotency-Key"]
    get_op = spec["paths"]["/jobs/{job_id}"]["get"]
    job = {"$ref": "#/components/schemas/Job"}
    assert get_op["responses"]["200"]["content"]["application/json"]["schema"] == job
    assert "content" not in get_op["responses"]["304"]
    token = spec["components"]["schemas"]["CreatedJob"]["properties"]["stream_token"]
    assert token == {"oneOf": [{"type": "string"}, {"type": "null"}]}


async def test_unknown_route_and_wrong_method_are_problems(client: Client) -> None:
    assert_problem(await client.get("/nowhere"), 404)
    wrong = assert_problem(await client.delete("/jobs"), 405)
    assert wrong["instance"] == "/jobs"


async def test_unexpected_errors_are_500_problems_without_internals(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await create(client)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.store, "get", broken)
    problem = assert_problem(await client.get(f"/jobs/{job['id']}"), 500)
    assert "secret" not in msgspec.json.encode(problem).decode()


async def test_mounted_under_a_prefix(redis_url: str, prefix: str) -> None:
    async with app_client(web_settings(redis_url, prefix), path_prefix="api/v1/") as client:
        response = await client.post("/api/v1/jobs", json={"type": "demo.noop"})
        assert response.status_code == 202
        location = response.headers["location"]
        assert location == f"/api/v1/jobs/{response.json()['id']}"
        assert (await client.get(location)).status_code == 200
        assert_problem(await client.get("/jobs"), 404)
        assert (await client.get("/api/v1/healthz")).status_code == 200
        assert (await client.get("/api/v1/schema/openapi.json")).status_code == 200
        assert '<base href="/api/v1/">' in (await client.get("/api/v1/")).text


def test_normalize_prefix() -> None:
    assert normalize_prefix("") == ""
    assert normalize_prefix("/") == ""
    assert normalize_prefix("api/v1/") == "/api/v1"
    assert normalize_prefix("/api") == "/api"


def test_jwt_mode_without_a_secret_fails_at_creation() -> None:
    with pytest.raises(ValueError, match="JOBSTREAM_JWT_SECRET"):
        create_app(Settings(auth="jwt", jwt_secret=None))
