"""jobstream mounted under ``/api`` in a host app, served by a real uvicorn process.

Two styles a host can pick: FastAPI without jobstream's lifespan (its resources open on the
first request, and the host closes them at shutdown), and Starlette's ``Mount`` with the
lifespan chained into the host's. Either way every URL the API hands out carries ``/api``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.support.procs import WebServer, start_worker, stop
from tests.support.sse_support import Reader
from tests.support.web_stack import stack_env

HOSTS = ["fastapi_without_lifespan", "starlette_with_chained_lifespan"]


@pytest_asyncio.fixture(params=HOSTS)
async def mounted(
    request: pytest.FixtureRequest, redis_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[WebServer, httpx.AsyncClient]]:
    """The host app under uvicorn (jobstream at ``/api``, no auth) with one worker."""
    env = stack_env()
    log = tmp_path / "host.log"
    factory = f"tests.support.mount_host:{request.param}"
    server = WebServer(redis_url, prefix, env, log, app=("--factory", factory), health_path="/health")
    server.start()
    worker = start_worker(redis_url, prefix, env=env, log=tmp_path / "worker.log")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            yield server, http
    finally:
        stop(worker)
        code = server.stop()  # uvicorn re-raises the SIGTERM it handled: -15 is a clean stop, -9 is not
        server.close()
        assert code in (0, -signal.SIGTERM), server.tail()
        assert "Traceback" not in server.tail()  # the host's shutdown (close_resources) went cleanly


async def test_create_follow_and_read_under_the_mount(mounted: tuple[WebServer, httpx.AsyncClient]) -> None:
    _, http = mounted
    created = await http.post("/api/jobs", json={"type": "demo.sleep", "input": {"seconds": 0.3, "steps": 3}})
    assert created.status_code == 202, created.text
    location = created.headers["Location"]
    job_id = created.json()["id"]
    assert location == f"/api/jobs/{job_id}"
    reader = Reader(http, f"/api/jobs/{job_id}/events")
    try:
        final = await reader.until_terminal()
    finally:
        await reader.close()
    assert final["status"] == "SUCCESS"
    got = await http.get(location)
    assert got.status_code == 200
    assert got.json()["status"] == "SUCCESS"
    assert (await http.get("/api/jobs", params={"limit": 5})).json()["jobs"][0]["id"] == job_id


async def test_concurrent_first_requests_open_once(mounted: tuple[WebServer, httpx.AsyncClient]) -> None:
    """The first requests of a lazily opened app all succeed (they wait for one opening)."""
    _, http = mounted
    answers = await asyncio.gather(*(http.get(f"/api/jobs/{uuid.uuid4()}") for _ in range(20)))
    assert {answer.status_code for answer in answers} == {404}
    assert (await http.get("/api/readyz")).status_code == 200


async def test_handed_out_urls_carry_the_mount(mounted: tuple[WebServer, httpx.AsyncClient]) -> None:
    _, http = mounted
    created = await http.post("/api/jobs", json={"type": "demo.noop", "input": {}})
    job_id = created.json()["id"]
    grant = await http.post(f"/api/jobs/{job_id}/stream-token")
    assert grant.status_code == 201
    assert grant.json()["url"].startswith(f"/api/jobs/{job_id}/events?token=")
    feed = await http.post("/api/events/stream-token")
    assert feed.json()["url"].startswith("/api/events?token=")
    assert "path=/api;" in feed.headers["set-cookie"].replace("Path=", "path=")
    page = await http.get("/api/")
    assert re.search(r'<base href="/api/">', page.text), page.text[:300]
    assert (await http.get("/api/static/dashboard.js")).status_code == 200  # what the page's base finds
