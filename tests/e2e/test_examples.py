"""The adoption examples, run as a developer would: the app under uvicorn, a jobstream worker
loading the app's own task module, and the frontend's calls.

``examples/fastapi_app.py`` (session cookie) and ``examples/litestar_app.py`` (bearer
session): ``POST /cases/{id}/analyze`` answers 202 with the job and a ``Location`` on the
mounted jobstream API, which the frontend polls and follows over SSE with the app's own
credentials; another user gets 404, nobody gets in without logging in.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from examples.case_tasks import STEPS
from tests.support.polling import until
from tests.support.procs import WebServer, start_worker, stop
from tests.support.sse_support import Reader

ENV = {"JOBSTREAM_TASK_MODULES": "examples.case_tasks", "APP_SESSION_SECRET": "example-test-secret"}


@dataclass
class App:
    kind: str
    http: httpx.AsyncClient

    async def login(self, user: str) -> dict[str, str]:
        """Log in as the app's frontend does; the headers its later calls carry (the cookie
        jar holds a cookie session)."""
        body = {"user": user, "password": f"{user}-password"}
        answer = await self.http.post("/login", json=body)
        assert answer.status_code in (200, 204), answer.text
        if self.kind == "litestar":
            return {"Authorization": f"Bearer {answer.json()['token']}"}
        return {}


@pytest_asyncio.fixture(params=["fastapi", "litestar"])
async def example(
    request: pytest.FixtureRequest, redis_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[App]:
    kind = request.param
    server = WebServer(
        redis_url,
        prefix,
        ENV,
        tmp_path / "app.log",
        app=(f"examples.{kind}_app:app",),
        health_path="/jobstream/healthz",
    )
    server.start()
    worker = start_worker(redis_url, prefix, env=ENV, log=tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            yield App(kind, http)
    finally:
        stop(worker)
        code = server.stop()
        server.close()
        assert code in (0, -signal.SIGTERM), server.tail()
        assert "Traceback" not in server.tail()


async def stream_url(app: App, location: str, headers: dict[str, str]) -> str:
    """The SSE URL the frontend opens: the cookie goes along by itself; a bearer frontend
    asks for a stream token (an ``EventSource`` cannot send headers)."""
    if app.kind == "fastapi":
        return f"{location}/events"
    grant = await app.http.post(f"{location}/stream-token", headers=headers)
    assert grant.status_code == 201, grant.text
    url: str = grant.json()["url"]
    assert url.startswith("/jobstream/jobs/")
    return url


async def test_the_endpoint_answers_202_and_the_frontend_follows_the_job(example: App) -> None:
    headers = await example.login("alice")
    created = await example.http.post("/cases/42/analyze", headers=headers)
    assert created.status_code == 202, created.text
    job = created.json()
    location = created.headers["Location"]
    assert location == f"/jobstream/jobs/{job['id']}"
    assert (job["type"], job["owner"], job["labels"]) == ("cases.analyze", "alice", {"case": "42"})

    reader = Reader(example.http, await stream_url(example, location, headers))
    try:
        final = await reader.until_terminal()
    finally:
        await reader.close()
    assert final["status"] == "SUCCESS"
    steps = {event["message"] for event in reader.events if event["status"] == "PROCESSING"}
    assert steps and steps <= {None, *STEPS}  # progress arrived (a slow reader may skip some states)

    polled = await example.http.get(location, headers=headers)
    assert polled.status_code == 200 and polled.json()["result"]["case_id"] == "42"
    listed = await example.http.get("/jobstream/jobs", params={"label": "case:42"}, headers=headers)
    assert [j["id"] for j in listed.json()["jobs"]] == [job["id"]]


async def test_another_user_and_nobody(example: App) -> None:
    alice = await example.login("alice")
    created = await example.http.post("/cases/7/analyze", headers=alice)
    location = created.headers["Location"]
    example.http.cookies.clear()
    assert (await example.http.post("/cases/7/analyze")).status_code == 401
    assert (await example.http.get(location)).status_code == 401
    bob = await example.login("bob")
    assert (await example.http.get(location, headers=bob)).status_code == 404
    assert (await example.http.get("/jobstream/jobs", headers=bob)).json()["jobs"] == []


async def test_the_polling_frontend_sees_progress_then_the_result(example: App) -> None:
    """A frontend that only polls ``Location`` (ETag, Retry-After) sees the job end."""
    headers = await example.login("alice")
    location = (await example.http.post("/cases/9/analyze", headers=headers)).headers["Location"]

    async def finished() -> dict[str, object] | None:
        answer = await example.http.get(location, headers=headers)
        assert answer.status_code == 200
        body: dict[str, object] = answer.json()
        return body if body["status"] == "SUCCESS" else None

    done = await until(finished, timeout=20, what="the analysis to finish", interval=0.2)
    assert done["progress"] == 100
