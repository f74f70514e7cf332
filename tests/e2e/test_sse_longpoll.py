"""Long polling (``GET /jobs/{id}?wait=S`` with ``If-None-Match``), in process on a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.support.polling import until
from tests.support.web_stack import WebStack
from tests.support.web_support import SECRET, app_client, web_settings
from web.auth import make_token

pytestmark = pytest.mark.timeout(60)

Client = AsyncTestClient[Litestar]


@pytest_asyncio.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[Client]:
    async with app_client(web_settings(redis_url, prefix, long_poll_max_seconds=1.0)) as c:
        yield c


async def create(client: Client) -> dict[str, Any]:
    response = await client.post("/jobs", json={"type": "demo.sleep"})
    assert response.status_code == 202
    job: dict[str, Any] = response.json()
    return job


async def test_a_long_poll_answers_as_soon_as_the_job_changes(sse_stack: Any) -> None:
    """On a real server: the in-process test client runs one request at a time."""
    stack: WebStack = await sse_stack()
    job = await stack.create("demo.sleep")
    started = time.monotonic()
    poll = asyncio.create_task(
        stack.http.get(f"/jobs/{job['id']}", params={"wait": 30}, headers={"If-None-Match": '"1"'})
    )

    async def listeners() -> int:
        return int((await stack.http.get("/events/stats")).json()["hub"]["listeners"])

    async def following() -> bool:
        return await listeners() == 1

    await until(following, 10, "the long poll to follow the job")
    cancelled = (await stack.http.post(f"/jobs/{job['id']}/cancel")).json()
    response = await asyncio.wait_for(poll, 5)
    assert response.status_code == 200
    assert response.json() == cancelled
    assert response.headers["etag"] == '"2"'
    assert time.monotonic() - started < 5
    assert await listeners() == 0


async def test_a_long_poll_answers_304_after_the_wait(client: Client) -> None:
    job = await create(client)
    started = time.monotonic()
    response = await client.get(f"/jobs/{job['id']}", params={"wait": 0.4}, headers={"If-None-Match": '"1"'})
    took = time.monotonic() - started
    assert response.status_code == 304
    assert response.headers["etag"] == '"1"'
    assert 0.4 <= took < 3, took


async def test_the_wait_is_capped_by_the_server(client: Client) -> None:
    job = await create(client)
    started = time.monotonic()
    response = await client.get(f"/jobs/{job['id']}", params={"wait": 600}, headers={"If-None-Match": '"1"'})
    assert response.status_code == 304
    assert 1.0 <= time.monotonic() - started < 4  # long_poll_max_seconds = 1


async def test_no_wait_when_the_etag_is_stale_or_the_job_is_over(client: Client) -> None:
    job = await create(client)
    started = time.monotonic()
    stale = await client.get(f"/jobs/{job['id']}", params={"wait": 30}, headers={"If-None-Match": '"0"'})
    assert stale.status_code == 200
    plain = await client.get(f"/jobs/{job['id']}", params={"wait": 30})
    assert plain.status_code == 200
    await client.post(f"/jobs/{job['id']}/cancel")
    over = await client.get(f"/jobs/{job['id']}", params={"wait": 30}, headers={"If-None-Match": '"2"'})
    assert over.status_code == 304
    assert time.monotonic() - started < 3
    assert (await client.get(f"/jobs/{job['id']}", params={"wait": -1})).status_code == 400


async def test_a_long_poll_on_another_owners_job_is_404(redis_url: str, prefix: str) -> None:
    settings = web_settings(redis_url, prefix, auth="jwt", jwt_secret=SECRET)
    alice = {"Authorization": f"Bearer {make_token(settings, 'alice')}"}
    bob = {"Authorization": f"Bearer {make_token(settings, 'bob')}"}
    async with app_client(settings) as c:
        job = (await c.post("/jobs", json={"type": "demo.sleep"}, headers=alice)).json()
        response = await c.get(
            f"/jobs/{job['id']}", params={"wait": 5}, headers={**bob, "If-None-Match": '"1"'}
        )
        assert response.status_code == 404
