"""Helpers for the SSE tests: readers that record a stream's events as they arrive.

Streams are read the way a browser would see them: a real server process (the stack of
tests/support/web_stack.py), an HTTP client (httpx + httpx-sse), one connection per stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from tests.support.polling import until
from tests.support.web_stack import TERMINAL, Job


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


class ResumingReader:
    """Follows a job's stream, reconnecting with ``Last-Event-ID`` until the terminal state,
    then once more, which must answer 204 (EventSource's cue to stop)."""

    def __init__(self, http: httpx.AsyncClient, job_id: str, deadline: float) -> None:
        self.events: list[Job] = []
        self.connects = 0
        self.resumed: list[tuple[int, int]] = []  # (Last-Event-ID sent, status answered)
        self.statuses: list[int] = []
        self._url = f"/jobs/{job_id}/events"
        self._http = http
        self._deadline = deadline
        self._arrived = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    @property
    def versions(self) -> list[int]:
        return [event["version"] for event in self.events]

    async def _run(self) -> None:
        retry_ms = 100
        while time.monotonic() < self._deadline:
            headers = {"Last-Event-ID": str(self.versions[-1])} if self.events else {}
            with suppress(httpx.TransportError):  # the server is away (restarting): retry
                retry_ms = await self._follow(headers, retry_ms)
            if self.statuses and self.statuses[-1] == 204:
                return
            await asyncio.sleep(retry_ms / 1000)
        raise AssertionError(f"no end within the deadline: {self.statuses} {self.versions}")

    async def _follow(self, headers: dict[str, str], retry_ms: int) -> int:
        async with aconnect_sse(self._http, "GET", self._url, headers=headers) as source:
            self.connects += 1
            if "Last-Event-ID" in headers:
                self.resumed.append((int(headers["Last-Event-ID"]), source.response.status_code))
            self.statuses.append(source.response.status_code)
            if source.response.status_code != 200:
                return retry_ms
            async for sse in source.aiter_sse():
                if sse.retry is not None:
                    retry_ms = sse.retry
                if sse.event == "job":
                    assert sse.id == str(json.loads(sse.data)["version"])
                    self.events.append(json.loads(sse.data))
                    self._arrived.set()
        return retry_ms

    async def until(self, done: Callable[[ResumingReader], bool], what: str) -> None:
        while not done(self):
            if self.task.done():
                self.task.result()
                raise AssertionError(f"reader ended before {what}: {self.versions}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, self._deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}: {self.versions}") from None

    async def finished(self) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), max(0.1, self._deadline - time.monotonic()))


def strictly_increasing(versions: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(versions))


async def wait_hash_version(redis: Any, key: str, version: int, timeout: float = 20.0) -> None:
    """Poll the job hash until its version is ``version`` (the job is then parked at a gate)."""

    async def reached() -> bool:
        return int(await redis.hget(key, "version") or 0) >= version

    await until(reached, timeout, f"{key} to reach version {version}")


def pubsub_clients(client_list: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The ``CLIENT LIST TYPE pubsub`` entries named ``name``."""
    return [c for c in client_list if c.get("name") == name]
