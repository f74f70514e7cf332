"""Helpers for the SSE tests: the app under uvicorn (access log on), a worker, SSE readers.

Streams are read the way a browser would see them: a real server process, an HTTP client
(httpx + httpx-sse), one connection per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from httpx_sse import aconnect_sse

from tests.support.procs import ROOT, env_for, free_port, start_worker, stop, wait_port
from tests.support.web_support import SECRET

TASK_MODULES = "workers.tasks,tests.support.worker_tasks"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELLED"}

Job = dict[str, Any]


def start_web_logged(
    redis_url: str, prefix: str, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """uvicorn with its access log on (INFO), so a test can read what it would log."""
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web.app:app", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "info"],
        cwd=ROOT,
        env=env_for(redis_url, prefix, env),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


@dataclass
class SseStack:
    """One test's web server (and worker), on the test's Redis prefix."""

    redis_url: str
    prefix: str
    log: Path
    env: dict[str, str]
    web: subprocess.Popen[bytes]
    http: httpx.AsyncClient
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    def start_worker(self) -> None:
        self.procs.append(start_worker(self.redis_url, self.prefix, env=self.env, log=self.log))

    async def create(self, task: str, data: dict[str, Any] | None = None, **headers: str) -> Job:
        response = await self.http.post("/jobs", json={"type": task, "input": data or {}}, headers=headers)
        assert response.status_code == 202, response.text
        job: Job = response.json()
        return job

    async def job(self, job_id: str, **headers: str) -> Job:
        response = await self.http.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        job: Job = response.json()
        return job

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest_asyncio.fixture
async def sse_stack(redis_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await sse_stack(jwt=False, **env)``: a web process; ``jwt=True`` turns bearer auth on."""
    stacks: list[SseStack] = []

    async def make(jwt: bool = False, **env: str) -> SseStack:
        environ = {f"JOBSTREAM_{name.upper()}": value for name, value in env.items()}
        environ["JOBSTREAM_TASK_MODULES"] = TASK_MODULES
        if jwt:
            environ.update(JOBSTREAM_AUTH="jwt", JOBSTREAM_JWT_SECRET=SECRET)
        port = free_port()
        log = tmp_path / f"processes-{len(stacks)}.log"
        web = start_web_logged(redis_url, prefix, port, environ, log)
        try:
            wait_port(port)
        except AssertionError:
            stop(web)
            raise AssertionError(f"web did not start: {log.read_text()[-3000:]}") from None
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20, limits=limits)
        stack = SseStack(redis_url, prefix, log, environ, web, http)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            await stack.http.aclose()
            for proc in reversed(stack.procs):
                stop(proc)
            stop(stack.web)


class Reader:
    """One SSE client in a task: records every ``job`` event (with its ``id:``) as it arrives."""

    def __init__(self, http: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[Job] = []
        self.ids: list[str] = []
        self.retry: int | None = None
        self.response: httpx.Response | None = None
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._run(http, url, headers or {}))

    async def _run(self, http: httpx.AsyncClient, url: str, headers: dict[str, str]) -> None:
        try:
            async with aconnect_sse(http, "GET", url, headers=headers) as source:
                self.response = source.response
                self._arrived.set()
                if not source.response.headers.get("content-type", "").startswith("text/event-stream"):
                    body = (await source.response.aread()).decode(errors="replace")
                    raise AssertionError(f"not a stream: {source.response.status_code} {body}")
                async for sse in source.aiter_sse():
                    if sse.retry is not None:
                        self.retry = sse.retry
                    if sse.event == "job":
                        self.events.append(json.loads(sse.data))
                        self.ids.append(sse.id)
                        self._arrived.set()
        finally:
            self._arrived.set()

    @property
    def versions(self) -> list[int]:
        return [event["version"] for event in self.events]

    @property
    def ended(self) -> bool:
        return self._task.done()

    async def until(self, done: Callable[[Reader], bool], timeout: float = 20.0, what: str = "") -> None:
        """Wait until ``done(self)``, woken by each arrival; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._arrived.clear()
            if done(self):
                return
            if self._task.done():
                self._task.result()  # raise what ended it, if anything
                if done(self):
                    return
                raise AssertionError(f"stream ended before {what or 'the condition'}: {self.versions[-5:]}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or 'the condition'}: {self.versions[-5:]}")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def until_version(self, version: int, timeout: float = 20.0) -> None:
        def reached(reader: Reader) -> bool:
            return bool(reader.events) and reader.versions[-1] >= version

        await self.until(reached, timeout, f"version {version}")

    async def until_terminal(self, timeout: float = 30.0) -> Job:
        await self.until(lambda r: bool(r.events) and r.events[-1]["status"] in TERMINAL, timeout, "the end")
        return self.events[-1]

    async def finished(self, timeout: float = 10.0) -> None:
        """Wait until the server closed the stream."""
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def close(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._task


def strictly_increasing(versions: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(versions))


async def wait_hash_version(redis: Any, key: str, version: int, timeout: float = 20.0) -> None:
    """Poll the job hash until its version is ``version`` (the job is then parked at a gate)."""
    deadline = time.monotonic() + timeout
    while int(await redis.hget(key, "version") or 0) < version:
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} never reached version {version}")
        await asyncio.sleep(0.01)


def pubsub_clients(client_list: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The ``CLIENT LIST TYPE pubsub`` entries named ``name``."""
    return [c for c in client_list if c.get("name") == name]
