"""The SSE wire contract on a real server (no worker: jobs move only when a test cancels them).

The tests share the module's server, each as an owner of its own (``user_stack``), so an owner
feed shows the test's jobs only.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.polling import until
from tests.support.sse_support import Reader
from tests.support.web_stack import WebStack
from tests.support.web_support import new_user

pytestmark = pytest.mark.timeout(60)


async def raw_lines(stack: WebStack, url: str, count: int, **headers: str) -> list[str]:
    """The first ``count`` lines of a stream, exactly as sent."""
    lines: list[str] = []
    async with stack.http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            lines.append(line)
            if len(lines) == count:
                break
    return lines


@pytest.mark.topologies("single", "cluster")
async def test_the_wire_format_and_keepalive_comments_on_an_idle_stream(sse_stack: Any) -> None:
    # A stack of its own: it runs with a keep-alive interval and a retry of its own.
    stack: WebStack = await sse_stack(sse_keepalive_seconds="0.2", sse_retry_ms="1500")
    job = await stack.create("demo.sleep")
    lines = await raw_lines(stack, f"/jobs/{job['id']}/events", 10)
    assert lines[:4] == ["retry: 1500", "", "id: 1", "event: job"]
    assert lines[4].startswith("data: ")
    assert json.loads(lines[4].removeprefix("data: ")) == await stack.job(job["id"])
    assert lines[5:] == ["", ": keepalive", "", ": keepalive", ""]

    feed = await raw_lines(stack, "/events", 7)
    assert feed[:3] == ["retry: 1500", "", "event: job"]  # no id: on the owner feed
    assert json.loads(feed[3].removeprefix("data: "))["id"] == job["id"]
    assert feed[4:] == ["", ": keepalive", ""]


async def test_a_finished_job_streams_once_then_answers_204_to_its_last_event_id(
    user_stack: WebStack,
) -> None:
    stack = user_stack
    job = await stack.create("demo.sleep")
    cancelled = (await stack.http.post(f"/jobs/{job['id']}/cancel")).json()
    url = f"/jobs/{job['id']}/events"

    reader = Reader(stack.http, url)
    await reader.finished()  # the snapshot is terminal: the server closes at once
    assert reader.events == [cancelled]
    assert reader.ids == ["2"]

    behind = Reader(stack.http, url, {"Last-Event-ID": "1"})
    await behind.finished()
    assert behind.events == [cancelled]

    done = await stack.http.get(url, headers={"Last-Event-ID": "2"})
    assert done.status_code == 204
    assert done.content == b""


async def test_last_event_id_equal_to_the_current_version_skips_the_snapshot(user_stack: WebStack) -> None:
    stack = user_stack
    job = await stack.create("demo.sleep")
    reader = Reader(stack.http, f"/jobs/{job['id']}/events", {"Last-Event-ID": "1"})
    await reader.until(lambda r: r.response is not None, what="the stream to open")  # subscribed
    cancelled = (await stack.http.post(f"/jobs/{job['id']}/cancel")).json()
    await reader.finished()
    assert reader.events == [cancelled]
    assert reader.versions == [2]


async def test_an_unknown_job_is_a_404_problem_not_a_stream(user_stack: WebStack) -> None:
    stack = user_stack
    admin = new_user(admin=True).headers

    async def listeners() -> int:
        return int((await stack.http.get("/events/stats", headers=admin)).json()["hub"]["listeners"])

    async def idle() -> bool:
        return await listeners() == 0

    await until(idle, 10, "the streams of the module's earlier tests to close")  # a shared server
    response = await stack.http.get("/jobs/00000000-0000-4000-8000-000000000000/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert await listeners() == 0  # the feed opened for the check was closed


async def test_the_owner_feed_sends_a_snapshot_then_live_changes(user_stack: WebStack) -> None:
    stack = user_stack
    jobs = [await stack.create("demo.sleep") for _ in range(3)]
    feed = Reader(stack.http, "/events")
    await feed.until(lambda r: len(r.events) == 3, what="the snapshot")
    assert [e["id"] for e in feed.events] == [j["id"] for j in jobs]  # oldest first
    assert set(feed.ids) == {""}  # no ids: a reconnect gets a fresh snapshot
    cancelled = (await stack.http.post(f"/jobs/{jobs[1]['id']}/cancel")).json()
    await feed.until(lambda r: len(r.events) == 4, what="the change")
    assert feed.events[3] == cancelled
    late = await stack.create("demo.sleep")
    await feed.until(lambda r: len(r.events) == 5, what="the new job")
    assert feed.events[4]["id"] == late["id"]
    await feed.close()
