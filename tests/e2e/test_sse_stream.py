"""SSE end to end: uvicorn + a real worker + redis-server, read with httpx-sse.

Job versions: 1 on create, 2 when a worker starts it, +1 per progress call, +1 at the end.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import socket
import time
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.support.sse_support import Reader, pubsub_clients, strictly_increasing, wait_hash_version
from tests.support.web_stack import WebStack


def job_key(stack: WebStack, job_id: str) -> str:
    return stack.job_key(job_id)


@pytest.mark.timeout(90)
@pytest.mark.topologies("single", "cluster")
async def test_a_thousand_updates_arrive_in_order_and_end_with_the_final_hash(sse_stack: Any) -> None:
    stack: WebStack = await sse_stack()
    job = await stack.create("test.steps", {"count": 1000})
    url = f"/jobs/{job['id']}/events"
    first = Reader(stack.http, url)
    await first.until_version(1)
    assert first.response is not None
    assert first.response.headers["content-type"].startswith("text/event-stream")
    assert first.response.headers["cache-control"] == "no-cache"
    assert first.response.headers["x-accel-buffering"] == "no"
    assert first.retry == 2000
    stack.start_worker()

    await first.until_version(300)
    late = Reader(stack.http, url)  # joins in the middle
    await late.until_version(400)
    last_seen = first.versions[-1]
    await first.close()
    again = Reader(stack.http, url, {"Last-Event-ID": str(last_seen)})  # reconnects

    for reader in (late, again):
        await reader.until_terminal()
        await reader.finished()  # the server closes after the terminal event
    final = await stack.job(job["id"])
    assert final["status"] == "SUCCESS"
    assert final["version"] == 1003
    for reader in (first, late, again):
        assert strictly_increasing(reader.versions), reader.versions
        assert reader.ids == [str(v) for v in reader.versions]
    for reader in (late, again):
        assert reader.events[-1] == final  # the last event is the final hash
    assert first.versions[0] == 1
    assert again.versions[0] > last_seen  # no duplicate of what it had
    assert late.versions[0] >= 300


@pytest.mark.timeout(90)
@pytest.mark.topologies("single", "cluster")
async def test_a_late_client_and_a_reconnecting_one_see_every_later_state_once(
    sse_stack: Any, redis: Redis
) -> None:
    """The job takes one step per item pushed to its gate, so each state can be awaited."""
    stack: WebStack = await sse_stack()
    gate = f"{stack.prefix}gate:{uuid.uuid4().hex}"
    job = await stack.create("test.steps", {"count": 30, "gate": gate})
    url, key = f"/jobs/{job['id']}/events", job_key(stack, job["id"])
    stack.start_worker()
    await wait_hash_version(redis, key, 2)  # PROCESSING, parked at the gate
    early = Reader(stack.http, url)
    await early.until_version(2)
    readers = [early]
    reconnected: Reader | None = None
    for step in range(1, 32):  # 30 progress steps, then the end
        if step == 10:
            late = Reader(stack.http, url)
            await late.until_version(11)
            readers.append(late)
        if step == 20:
            await early.close()
            readers.remove(early)
            reconnected = Reader(stack.http, url, {"Last-Event-ID": str(early.versions[-1])})
            readers.append(reconnected)
            await reconnected.until(lambda r: r.response is not None, what="the reconnect")
        await redis.rpush(gate, "go")
        for reader in readers:
            await reader.until_version(step + 2)
    for reader in readers:
        await reader.until_terminal()
        await reader.finished()
    assert reconnected is not None
    assert early.versions == list(range(2, 22))
    assert late.versions == list(range(11, 34))  # the snapshot, then every later state
    assert reconnected.versions == list(range(22, 34))  # no snapshot: it had version 21
    assert reconnected.events[-1] == await stack.job(job["id"])


@pytest.mark.timeout(90)
@pytest.mark.own_redis  # CLIENT KILL TYPE pubsub cuts every subscriber of the server
async def test_clients_still_get_the_terminal_state_after_client_kill_type_pubsub(
    sse_stack: Any, redis: Redis
) -> None:
    stack: WebStack = await sse_stack()
    gate = f"{stack.prefix}gate:{uuid.uuid4().hex}"
    job = await stack.create("test.steps", {"count": 20, "gate": gate})
    stack.start_worker()
    await wait_hash_version(redis, job_key(stack, job["id"]), 2)
    one = Reader(stack.http, f"/jobs/{job['id']}/events")
    feed = Reader(stack.http, "/events")
    await redis.rpush(gate, *["go"] * 5)
    await one.until_version(7)
    await feed.until(lambda r: any(e["version"] == 7 for e in r.events), what="version 7 on the feed")

    assert await redis.execute_command("CLIENT KILL TYPE pubsub") >= 1
    await redis.rpush(gate, *["go"] * 16)  # the rest happens while the hub reconnects

    end = await one.until_terminal()
    await feed.until(lambda r: any(e["version"] == 23 for e in r.events), what="the end on the feed")
    final = await stack.job(job["id"])
    assert end == final
    assert [e for e in feed.events if e["id"] == job["id"]][-1] == final
    assert strictly_increasing(one.versions)
    stats = (await stack.http.get("/events/stats")).json()
    assert stats["hub"]["reconnects"] >= 1
    assert stats["hub"]["connected"] is True
    await feed.close()


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


@pytest.mark.timeout(120)
async def test_500_clients_share_one_pubsub_connection_and_all_get_the_end(
    sse_stack: Any, redis: Redis
) -> None:
    raise_open_files(4096)
    stack: WebStack = await sse_stack(max_streams_per_owner="500")  # one owner: at its cap, not over
    job = await stack.create("test.steps", {"count": 20, "interval": 0.01})
    url = f"/jobs/{job['id']}/events"
    readers = [Reader(stack.http, url) for _ in range(500)]
    await asyncio.gather(*(reader.until_version(1, timeout=60) for reader in readers))

    listed = await redis.client_list(_type="pubsub")
    mine = pubsub_clients(listed, f"jobstream-web:{stack.web.pid}")
    assert len(mine) == 1, listed
    assert mine[0]["ssub"] == "1"  # one channel, the partition's, for all 500 clients
    stats = (await stack.http.get("/events/stats")).json()
    assert stats["job_streams"] == 500
    assert stats["hub"]["listeners"] == 500

    stack.start_worker()
    ends = await asyncio.gather(*(reader.until_terminal(timeout=60) for reader in readers))
    final = await stack.job(job["id"])
    assert all(end == final for end in ends)
    assert all(strictly_increasing(reader.versions) for reader in readers)
    for reader in readers:
        await reader.finished()
    stats = (await stack.http.get("/events/stats")).json()
    assert stats["job_streams"] == 0
    assert stats["hub"]["listeners"] == 0


@pytest.mark.timeout(60)
@pytest.mark.topologies("single", "cluster")
async def test_sigterm_ends_open_streams_and_long_polls_and_exits_cleanly(sse_stack: Any) -> None:
    stack: WebStack = await sse_stack()
    job = await stack.create("demo.sleep", {"seconds": 30})  # no worker: stays PENDING
    readers = [Reader(stack.http, f"/jobs/{job['id']}/events") for _ in range(10)]
    readers.append(Reader(stack.http, "/events"))
    for reader in readers:
        await reader.until_version(1)
    poll = asyncio.create_task(
        stack.http.get(f"/jobs/{job['id']}", params={"wait": 30}, headers={"If-None-Match": '"1"'})
    )
    deadline = time.monotonic() + 10  # the long poll is waiting in the hub: 10 + 1 + 1 listeners
    while (await stack.http.get("/events/stats")).json()["hub"]["listeners"] < 12:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    started = time.monotonic()
    stack.web.send_signal(signal.SIGTERM)
    for reader in readers:
        await reader.finished(timeout=10)
    polled = await asyncio.wait_for(poll, 10)
    await asyncio.to_thread(stack.web.wait, 10)
    took = time.monotonic() - started
    assert took < 10, took
    assert polled.status_code in (304, 200)
    log = stack.log_text()
    assert "Finished server process" in log, log
    for bad in ("Traceback", "ERROR", "Exception", "Cancel "):
        assert bad not in log, log
    with pytest.raises(httpx.ConnectError):
        await stack.http.get("/healthz")


async def _stalled_stream(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream whose client reads nothing yet, with a small receive window: the server's
    writes stall once the kernel buffers are full."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


def _events_of(raw: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line.removeprefix(b"data: ")) for line in raw.split(b"\n") if line.startswith(b"data: ")
    ]


@pytest.mark.timeout(90)
async def test_a_client_that_stops_reading_holds_up_no_one_and_later_gets_the_newest_state(
    sse_stack: Any,
) -> None:
    stack: WebStack = await sse_stack()
    # every event carries the ~0.9 MB input: 12 of them are far more than the socket buffers hold
    text = "\n".join(f"word{i % 50} other{i % 7} line {i}" for i in range(36_000))
    job = await stack.create("demo.wordcount", {"text": text})
    url = f"/jobs/{job['id']}/events"
    stalled, writer = await _stalled_stream(int(stack.base_url.rsplit(":", 1)[1]), url)
    reader = Reader(stack.http, url)
    await reader.until_version(1)
    stack.start_worker()
    try:
        end = await reader.until_terminal(timeout=60)
        assert end["status"] == "SUCCESS"
        assert strictly_increasing(reader.versions)
        # now the stalled client reads: what it gets is in order and ends with the same final state
        raw = await asyncio.wait_for(stalled.read(), 30)  # the server closes after the terminal event
        events = _events_of(raw)
        assert [event["version"] for event in events] == sorted({event["version"] for event in events})
        assert events[-1] == end
        assert len(raw) > 4 * 2**20  # it really was behind by more than the kernel buffers hold
        assert "Traceback" not in stack.log_text()
    finally:
        writer.close()
        await reader.close()


@pytest.mark.timeout(60)
@pytest.mark.topologies("single", "cluster")
async def test_clients_that_leave_an_idle_stream_are_forgotten_at_once(sse_stack: Any) -> None:
    stack: WebStack = await sse_stack()
    job = await stack.create("demo.sleep")  # no worker: the streams stay idle
    readers = [Reader(stack.http, f"/jobs/{job['id']}/events") for _ in range(20)]
    readers.append(Reader(stack.http, "/events"))
    for reader in readers:
        await reader.until_version(1)
    stats = (await stack.http.get("/events/stats")).json()
    assert (stats["job_streams"], stats["owner_streams"], stats["hub"]["listeners"]) == (20, 1, 21)
    channels = stats["hub"]["channels"]  # one per partition, whoever listens

    for reader in readers:
        await reader.close()
    deadline = time.monotonic() + 10  # keepalives are 15 s apart: only the disconnect can end them
    while True:
        stats = (await stack.http.get("/events/stats")).json()
        hub = stats["hub"]
        if (stats["job_streams"], stats["owner_streams"], hub["listeners"]) == (0, 0, 0):
            assert hub["channels"] == channels  # the partitions stay subscribed
            break
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.02)
