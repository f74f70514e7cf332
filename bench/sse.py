"""``sse``: delivery latency over SSE, and the web process's memory per idle SSE connection.

    uv run python -m bench.sse [--quick]

Latency: one web process (``web.app:app`` under uvicorn), one worker (``python -m
workers``), and N SSE clients on one job, in this (separate) process. The job
(``test.steps`` with ``stamp``) writes ``count`` progress updates ``interval`` apart, each
with the ``time.time()`` of its progress call as its message; a client takes
``time.time()`` when the event's bytes arrive and subtracts. One clock (one machine).
Reported: p50/p99/max over every (client, update) delivery, and of the last client per
update (when the fan-out to all N is complete). The first 10% of updates are warm-up.

Memory: a fresh web process, no worker; its RSS (``/proc/PID/status`` VmRSS) after a
warm-up, then after N idle streams are open (each has its snapshot), on one job and on N
distinct jobs: (RSS_after - RSS_before) / N.

The clients are raw asyncio protocols that find the version and the message in each
event with a regex, so that 5,000 connections and 1,000 deliveries per update cost the
client little; they speak HTTP/1.1 to uvicorn, which frames the stream in chunks.
Everything runs on loopback on this machine; RLIMIT_NOFILE is raised for the processes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    OWNER,
    Options,
    Report,
    bench_redis,
    create_jobs,
    job_store,
    jobstream_env,
    log_tail,
    percentile,
    publish,
    redis_version,
    spawn,
    stop,
    worker_argv,
)
from bench.http import Server, uvicorn

PREFIX = "sse:"
TASK_MODULES = "workers.tasks,tests.worker_tasks"
WARMUP_STREAMS = 200
BATCH = 250  # connections opened at once (below uvicorn's listen backlog of 2048)

_VERSION = re.compile(rb'"version":(\d+)')
_MESSAGE = re.compile(rb'"message":"([0-9.]+)"')
_STATUS = re.compile(rb'"status":"([A-Z]+)"')
_TERMINAL = {b"SUCCESS", b"FAILURE", b"CANCELLED"}


@dataclass
class Deliveries:
    """What every client of one run received: (version, latency s) pairs, and who finished."""

    latencies: list[tuple[int, float]] = field(default_factory=list)
    finished: int = 0


class SseClient(asyncio.Protocol):
    """One ``GET .../events`` stream; records each event's version and its stamp's age."""

    def __init__(self, request: bytes, sink: Deliveries | None) -> None:
        self._request = request
        self._sink = sink
        self._buffer = b""
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._buffer += data
        *events, self._buffer = self._buffer.split(b"\n\n")
        for event in events:
            self._event(event, now)

    def _event(self, event: bytes, now: float) -> None:
        version = _VERSION.search(event)
        if version is None:
            return  # the retry line, a keepalive, the response head
        if not self.opened.done():
            self.opened.set_result(None)
        if self._sink is None:
            return
        status = _STATUS.search(event)
        if status is not None and status.group(1) in _TERMINAL:
            self._sink.finished += 1  # its message is still the last progress call's stamp
            return
        stamp = _MESSAGE.search(event)
        if stamp is not None:
            self._sink.latencies.append((int(version.group(1)), now - float(stamp.group(1))))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"stream closed before its first event: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_streams(
    port: int, paths: list[str], sink: Deliveries | None = None, timeout: float = 120.0
) -> list[SseClient]:
    """Open one stream per path, ``BATCH`` at a time, each until its first event arrived."""
    loop = asyncio.get_running_loop()
    clients: list[SseClient] = []
    for start in range(0, len(paths), BATCH):
        batch = []
        for path in paths[start : start + BATCH]:
            request = (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
            ).encode()
            client = SseClient(request, sink)
            await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), timeout)
        clients.extend(batch)
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


# -- latency --------------------------------------------------------------------------------------


async def latency_run(
    server: Server, env: dict[str, str], log: Path, clients: int, count: int, interval: float
) -> dict[str, Any]:
    """N clients on one job that writes ``count`` stamped updates ``interval`` apart."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        body = {"type": "test.steps", "input": {"count": count, "interval": interval, "stamp": True}}
        created = await http.post("/jobs", json=body)
        created.raise_for_status()
        job_id = created.json()["id"]
    sink = Deliveries()
    streams = await open_streams(port_of(server), [f"/jobs/{job_id}/events"] * clients, sink)
    worker = spawn(worker_argv(), env, log)
    try:
        deadline = time.monotonic() + 60 + count * interval * 3
        while sink.finished < clients:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError(f"{sink.finished}/{clients} clients finished\n{log_tail(log)}")
            await asyncio.sleep(0.05)
    finally:
        stop(worker)
        close_all(streams)
    return summarize(sink, clients, count, interval)


def summarize(sink: Deliveries, clients: int, count: int, interval: float) -> dict[str, Any]:
    """Percentiles (ms) over all deliveries past the warm-up, and of the last client per update."""
    first_measured = 2 + max(1, count // 10)  # versions: 1 created, 2 started, then one per update
    kept = [(v, lat) for v, lat in sink.latencies if v > first_measured]
    every = sorted(lat * 1000 for _, lat in kept)
    last: dict[int, float] = {}
    for version, lat in kept:
        last[version] = max(last.get(version, 0.0), lat * 1000)
    ends = sorted(last.values())
    expected = clients * (count + 2 - first_measured)  # progress versions first_measured+1 .. count+2
    return {
        "clients": clients,
        "updates": count,
        "interval_s": interval,
        "deliveries": len(every),
        "skipped": expected - len(every),  # coalesced by the hub's latest-state feeds
        "p50_ms": percentile(every, 0.50),
        "p99_ms": percentile(every, 0.99),
        "max_ms": every[-1] if every else float("nan"),
        "last_p50_ms": percentile(ends, 0.50),
        "last_p99_ms": percentile(ends, 0.99),
    }


# -- memory ---------------------------------------------------------------------------------------


async def memory_run(server: Server, redis_url: str, connections: int, distinct: bool) -> dict[str, Any]:
    """RSS growth of the web process per idle SSE stream (one job, or one job per stream)."""
    async with job_store(redis_url, PREFIX) as store:
        ids = await create_jobs(store, connections if distinct else 1, task="demo.sleep")
    port = port_of(server)
    warm = await open_streams(port, [f"/jobs/{ids[0]}/events"] * WARMUP_STREAMS)
    close_all(warm)
    await settle(server)
    before = rss_kib(server.proc.pid)
    paths = [f"/jobs/{ids[i % len(ids)]}/events" for i in range(connections)]
    started = time.monotonic()
    streams = await open_streams(port, paths)
    opened_in = time.monotonic() - started
    await settle(server)
    after = rss_kib(server.proc.pid)
    close_all(streams)
    return {
        "connections": connections,
        "jobs": len(ids),
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_connection": (after - before) / connections,
        "open_seconds": opened_in,
    }


async def settle(server: Server) -> None:
    """Give the server a moment to finish what the last burst started (RSS is sampled after)."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        for _ in range(3):
            await http.get("/healthz")
            await asyncio.sleep(0.5)


# -- the scenario ----------------------------------------------------------------------------------


def run(options: Options) -> Report:
    """The ``sse`` scenario: latency with 1 and 1,000 clients; RSS per stream at 1,000 and 5,000."""
    return asyncio.run(_run(options))


async def _run(options: Options) -> Report:
    nofile = raise_open_files()
    setups = [
        (1, options.pick(200, 1000), 0.01),
        (1000, options.pick(30, 150), 0.1),  # 10 updates/s: about what one process fans out
        (1000, options.pick(10, 40), 0.5),  # 2 updates/s: each fan-out ends before the next
    ]
    sizes = [options.pick(200, 1000), options.pick(500, 5000)]
    with bench_redis() as server, tempfile.TemporaryDirectory(prefix="jobstream-bench-sse-") as tmp:
        log = Path(tmp) / "processes.log"
        extra = {
            "JOBSTREAM_TASK_MODULES": TASK_MODULES,
            "JOBSTREAM_SSE_KEEPALIVE_SECONDS": "600",
            "JOBSTREAM_LOCAL_USER": OWNER,  # owns the jobs create_jobs() makes
        }
        env = jobstream_env(server.url, PREFIX, extra)
        latency = []
        with uvicorn("web.app:app", env, log, "/healthz") as web:
            for clients, count, interval in setups:
                latency.append(await latency_run(web, env, log, clients, count, interval))
        memory = []
        for connections in sizes:
            for distinct in (False, True):
                with uvicorn("web.app:app", env, log, "/healthz") as web:
                    memory.append(await memory_run(web, server.url, connections, distinct))
        version = redis_version(server.url)
    return report(latency, memory, version, nofile)


def report(latency: list[dict[str, Any]], memory: list[dict[str, Any]], version: str, nofile: int) -> Report:
    rows = [
        [
            f"latency, {r['clients']:,} client(s) on one job",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['last_p50_ms']:.2f} / {r['last_p99_ms']:.2f}",
            f"{r['deliveries']:,} ({r['updates']} updates, {r['interval_s'] * 1000:.0f} ms apart)",
        ]
        for r in latency
    ]
    rows += [
        [
            f"RSS, {m['connections']:,} idle streams on {m['jobs']:,} job(s)",
            f"{m['kib_per_connection']:.1f} KiB/stream",
            "",
            "",
            f"{m['rss_before_mib']:.0f} -> {m['rss_after_mib']:.0f} MiB",
        ]
        for m in memory
    ]
    return Report(
        scenario="sse",
        title="SSE: delivery latency (progress call -> client) and web RSS per idle stream",
        columns=["measure", "p50 ms", "p99 ms", "last client p50/p99 ms", "samples"],
        rows=rows,
        data={"latency": latency, "memory": memory, "redis": version, "rlimit_nofile": nofile},
        notes=[
            "one uvicorn process (uvloop, httptools, no access log), one worker, Redis "
            f"{version}, clients in the bench process; all on loopback, sharing the machine's cores",
            "latency: time.time() in the task just before ctx.progress() -> bytes at the client; "
            "first 10% of updates are warm-up; 'last client' = when the fan-out to all clients is done; "
            "a stream that is still busy when newer states arrive skips to the newest (fewer samples)",
            "RSS: VmRSS of the web process before/after opening the streams (after a 200-stream "
            "warm-up), divided by the number of streams",
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sse", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (not a measurement)")
    args = parser.parse_args(argv)
    options = Options(quick=args.quick)
    publish(run(options), options)


if __name__ == "__main__":
    sys.exit(main())
