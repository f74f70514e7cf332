"""Raw asyncio SSE clients for the SSE benchmarks (``sse``, ``latency``, ``fanout``).

A client is an :class:`asyncio.Protocol` speaking HTTP/1.1 to uvicorn, which frames the
stream in chunks; it splits what arrives on blank lines and hands each event block, with
the ``time.time()`` of its arrival, to a sink. Nothing is parsed beyond what a sink asks
for (regexes over the block), so 10,000 connections and 10,000 deliveries per event cost
the client process little. Also here: the helpers those scenarios share (file limit, RSS,
a PROCESSING job to write progress on).
"""

from __future__ import annotations

import asyncio
import re
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from bench import profiling
from bench.common import OWNER, percentile
from bench.http import Server
from broker.keys import partition_of
from broker.store import GROUP, Delivery, JobStore, Started

BATCH = 250
"""Connections opened at once (well below uvicorn's listen backlog of 2048)."""

Sink = Callable[[bytes, float], None]
"""Takes one event block (``id:``/``event:``/``data:`` lines, maybe chunk framing) and its arrival time."""

VERSION = re.compile(rb'"version":(\d+)')
MESSAGE = re.compile(rb'"message":"([0-9.]+)"')
STATUS = re.compile(rb'"status":"([A-Z]+)"')
JOB_ID = re.compile(rb'"id":"([0-9a-f-]+)"')
TERMINAL = {b"SUCCESS", b"FAILURE", b"CANCELLED"}


@dataclass
class Deliveries:
    """A sink for stamped progress: each event's version and its stamp's age, and who finished.

    The stamp is the message of a progress update: the ``time.time()`` just before the
    progress call (``test.steps`` with ``stamp``, or the bench itself).
    """

    latencies: list[tuple[int, float]] = field(default_factory=list)
    finished: int = 0

    def __call__(self, event: bytes, now: float) -> None:
        version = VERSION.search(event)
        if version is None:
            return
        status = STATUS.search(event)
        if status is not None and status.group(1) in TERMINAL:
            self.finished += 1  # its message is still the last progress call's stamp
            return
        stamp = MESSAGE.search(event)
        if stamp is not None:
            self.latencies.append((int(version.group(1)), now - float(stamp.group(1))))


class SseClient(asyncio.Protocol):
    """One ``GET`` of an event stream; ``opened`` resolves when the ``retry:`` line arrived
    (the server subscribed and read its snapshot: that line goes out with the snapshot)."""

    def __init__(self, request: bytes, sink: Sink | None) -> None:
        self._request = request
        self._sink = sink
        self._buffer = b""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        if not events:
            return
        if not self.opened.done() and b"retry:" in events[0]:
            self.opened.set_result(None)
        if self._sink is not None:
            for event in events:
                self._sink(event, now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"stream closed before its first event: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def get_request(port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()


async def open_streams(
    port: int, paths: list[str], sink: Sink | None = None, timeout: float = 120.0
) -> list[SseClient]:
    """Open one stream per path, ``BATCH`` at a time, each until its first event arrived."""
    loop = asyncio.get_running_loop()
    clients: list[SseClient] = []
    try:
        for start in range(0, len(paths), BATCH):
            batch = []
            for path in paths[start : start + BATCH]:
                client = SseClient(get_request(port, path), sink)
                await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
                batch.append(client)
                clients.append(client)
            await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), timeout)
    except BaseException:
        close_all(clients)
        raise
    return clients


def close_all(clients: list[SseClient]) -> None:
    for client in clients:
        client.close()


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_open_files(wanted: int = 65536) -> int:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def settle(server: Server, rounds: int = 3) -> None:
    """Give the server a moment to finish what the last burst started (RSS is sampled after)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        for _ in range(rounds):
            await http.get("/healthz")
            await asyncio.sleep(0.5)


async def running_job(store: JobStore, queue: str = "default", task: str = "demo.sleep") -> Started:
    """A job of ``OWNER`` that this process started as a worker would (so it may write progress)."""
    job, _ = await store.create(task=task, input_json=b"{}", owner=OWNER, queue=queue)
    stream = store.keys.queue(queue, partition_of(job.id))
    reply: Any = await store.redis.xreadgroup(GROUP, "bench", {stream: ">"}, count=1)
    delivery = Delivery(job.id, stream, reply[0][1][0][0].decode(), dispatch=1)
    started = await store.start(delivery, "bench")
    assert started is not None
    return started


def pcts(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of some latencies (ms)."""
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 0.5),
        "p99_ms": percentile(ordered, 0.99),
        "max_ms": ordered[-1] if ordered else float("nan"),
    }


def profile_summary(out: Path) -> dict[str, Any]:
    """A py-spy recording (collapsed stacks) as top functions by own time and own time by package."""
    if not out.exists():
        return {"error": f"py-spy wrote nothing; see {out.with_suffix('.log')}"}
    top, by_package = profiling.own_time(out), profiling.own_by_package(out)
    return {"raw": str(out), "top_own": top, "own_by_package": by_package}
