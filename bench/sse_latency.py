"""``sse_latency``: delivery latency over SSE, and the web process's memory per idle SSE connection.

    uv run python -m bench.sse_latency [--quick]

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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    OWNER,
    RESULTS,
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
from bench.sse_client import (
    Deliveries,
    close_all,
    open_streams,
    port_of,
    raise_open_files,
    rss_kib,
    settle,
)

PREFIX = "sse:"
TASK_MODULES = "workers.tasks,tests.support.worker_tasks"
WARMUP_STREAMS = 200


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
    parser = argparse.ArgumentParser(prog="python -m bench.sse_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small, fast run (not a measurement)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = parser.parse_args(argv)
    options = Options(quick=args.quick, out=args.out)
    publish(run(options), options)


if __name__ == "__main__":
    sys.exit(main())
