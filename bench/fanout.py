"""``fanout``: 10,000 idle SSE streams on one web process, all following one job.

One web process (``web.app:app`` under uvicorn), this scenario's own Redis, no worker:
the bench starts one ``demo.sleep`` job itself, as a worker would, and writes its
progress with the same script a worker's ``ctx.progress()`` runs. The clients are raw
asyncio protocols in the bench process (:mod:`bench.sse_client`, on uvloop), one
connection each to ``GET /jobs/{id}/events``.

1. RSS of the web process (``VmRSS``) after a 200-stream warm-up, then after N streams
   are open and idle (each got its snapshot): ``(after - before) / N``.
2. Redis connections the web process holds (``CLIENT LIST`` entries whose port is one of
   its sockets), and how many of them are pub/sub: one, whatever N.
3. ``events`` progress updates, one at a time, each stamped with ``time.time()`` just
   before the call: per client, the time until that event's bytes arrived. Per event the
   p50/p99/max over the N clients (max: when the last client had it); overall p50/p99
   over every delivery. The web process's CPU per delivery is reported beside it.

Both processes need N file descriptors: the soft RLIMIT_NOFILE is raised here (up to
the hard limit) and the web process inherits it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import profiling
from bench import sse_client as sse
from bench.common import (
    OWNER,
    Options,
    Report,
    bench_redis,
    job_store,
    jobstream_env,
    redis_version,
    stop,
)
from bench.http import Server, profile_notes, uvicorn
from bench.sse_client import Deliveries
from broker.store import JobStore, Started

PREFIX = "fan:"
WARMUP_STREAMS = 200
PAUSE = 0.5  # between events, so each one starts on idle streams
TARGETS = {"delivery_max_s": 1.0, "kib_per_connection": 20.0, "pubsub_connections": 1}

_SOCKET = re.compile(r"socket:\[(\d+)\]")


def run(options: Options) -> Report:
    """The ``fanout`` scenario (see the module docstring)."""
    try:
        import uvloop
    except ImportError:  # the clients then pay more per delivery, and the figures show it
        return asyncio.run(_run(options))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(options))


async def _run(options: Options) -> Report:
    nofile = sse.raise_open_files(65536)
    wanted = options.pick(200, 10_000, options.n)
    connections = min(wanted, nofile - 200)  # the bench holds one fd per stream
    events = options.pick(2, options.rounds or 8)
    with bench_redis() as redis, tempfile.TemporaryDirectory(prefix="jobstream-bench-fanout-") as tmp:
        log = Path(tmp) / "processes.log"
        extra = {"JOBSTREAM_SSE_KEEPALIVE_SECONDS": "600", "JOBSTREAM_LOCAL_USER": OWNER}
        env = jobstream_env(redis.url, PREFIX, extra)
        with uvicorn("web.app:app", env, log, "/healthz") as web:
            async with job_store(redis.url, PREFIX) as store:
                started = await sse.running_job(store)
                profile_to = options.out / "web-fanout-profile.txt" if options.profile else None
                settle_rounds = options.pick(1, 3)
                result = await measure(web, store, started, connections, events, profile_to, settle_rounds)
        result.update(redis=redis_version(redis.url), rlimit_nofile=nofile, wanted=wanted)
    return report(result)


async def measure(
    server: Server,
    store: JobStore,
    started: Started,
    n: int,
    events: int,
    profile_to: Path | None = None,
    settle_rounds: int = 3,
) -> dict[str, Any]:
    """Open ``n`` streams on the job, measure RSS and Redis connections, then time ``events`` updates.

    ``profile_to``: record the web process with py-spy while the events are delivered;
    ``settle_rounds``: half-seconds given the server before each RSS sample (1 in a smoke run).
    """
    port, path = sse.port_of(server), f"/jobs/{started.job.id}/events"
    sse.close_all(await sse.open_streams(port, [path] * WARMUP_STREAMS))
    await sse.settle(server, settle_rounds)
    before = sse.rss_kib(server.proc.pid)
    sink = Deliveries()
    t0 = time.monotonic()
    streams = await sse.open_streams(port, [path] * n, sink)
    opened_in = time.monotonic() - t0
    try:
        await sse.settle(server, settle_rounds)
        after = sse.rss_kib(server.proc.pid)
        redis_clients = await web_redis_clients(store, server.proc.pid)
        first = (await store.get(started.job.id)).version + 1
        profiler = profiling.start(server.proc.pid, profile_to) if profile_to else None
        cpu0 = server.cpu_seconds()
        per_event = await _deliver(store, started, sink, n, events, first)
        cpu = server.cpu_seconds() - cpu0
        if profiler is not None:
            stop(profiler, signal.SIGINT, timeout=30)  # py-spy writes its output on Ctrl-C
        lost = sum(1 for s in streams if s.closed.done())
    finally:
        sse.close_all(streams)
    every = sorted(lat for one in per_event for lat in one)
    return {
        "connections": n,
        "events": events,
        "open_seconds": opened_in,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_connection": (after - before) / n,
        "redis_clients": redis_clients,
        "per_event": [{**sse.pcts(one), "n": len(one)} for one in per_event],
        **sse.pcts(every),
        "web_cpu_us_per_delivery": 1e6 * cpu / (n * events),
        "streams_closed_early": lost,
        "profile": sse.profile_summary(profile_to) if profile_to else None,
    }


async def _deliver(
    store: JobStore, started: Started, sink: Deliveries, n: int, events: int, first: int
) -> list[list[float]]:
    """Write ``events`` progress updates ``PAUSE`` apart; per event, each stream's latency (ms)."""
    per_event = []
    for k in range(events):
        version = first + k
        stamp = time.time()
        await store.progress(started.job.id, started.attempt, k, repr(stamp))
        await _until(sink, n * (k + 1), 60, f"event {k + 1}: all {n} streams")
        per_event.append(sorted(lat * 1000 for v, lat in sink.latencies[n * k :] if v == version))
        await asyncio.sleep(PAUSE)
    return per_event


async def _until(sink: Deliveries, count: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while len(sink.latencies) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.005)


async def web_redis_clients(store: JobStore, pid: int) -> dict[str, Any]:
    """The web process's Redis connections (by local port, from /proc) in ``CLIENT LIST``."""
    ports = local_ports(pid)
    listed: Any = await store.redis.client_list()
    mine = [c for c in listed if int(str(c["addr"]).rsplit(":", 1)[1]) in ports]
    pubsub = [c for c in mine if "P" in c.get("flags", "") or int(c.get("sub", 0)) + int(c.get("psub", 0))]
    return {
        "connections": len(mine),
        "pubsub": len(pubsub),
        "pubsub_channels": sum(int(c.get("sub", 0)) + int(c.get("ssub", 0)) for c in pubsub),
        "named": sorted(str(c["name"]) for c in mine if c.get("name")),
    }


def local_ports(pid: int) -> set[int]:
    """Local TCP ports of the sockets process ``pid`` has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found = _SOCKET.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if found:
            inodes.add(found.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def report(r: dict[str, Any]) -> Report:
    n = r["connections"]
    clients = r["redis_clients"]

    def ms(d: dict[str, Any]) -> list[str]:
        return [f"{d['p50_ms']:.1f}", f"{d['p99_ms']:.1f}", f"{d['max_ms']:.1f}"]

    rows = [[f"event {i + 1} -> all {e['n']:,} streams", *ms(e)] for i, e in enumerate(r["per_event"])]
    rows.append([f"all {r['events']} events", *ms(r)])
    met = {
        "every stream within 1 s": r["max_ms"] < 1000 * TARGETS["delivery_max_s"],
        "under 20 KiB per stream": r["kib_per_connection"] < TARGETS["kib_per_connection"],
        "one pub/sub connection": clients["pubsub"] == TARGETS["pubsub_connections"],
    }
    title = f"Fan-out: one progress event to {n:,} idle SSE streams on one web process"

    def chart(path: Path) -> None:
        from bench.common import bar_chart

        labels = [f"event {i + 1}" for i in range(len(r["per_event"]))]
        bar_chart(path, title + " (ms until the last stream had it)", labels,
                  [e["max_ms"] for e in r["per_event"]], "ms")  # fmt: skip

    return Report(
        scenario="fanout",
        title=title,
        columns=["event", "p50 ms", "p99 ms", "max ms (last stream)"],
        rows=rows,
        data={**r, "targets": TARGETS, "met": met},
        notes=[
            f"web RSS {r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB for {n:,} idle streams: "
            f"{r['kib_per_connection']:.1f} KiB per stream (VmRSS, after a {WARMUP_STREAMS}-stream warm-up); "
            f"opened in {r['open_seconds']:.1f} s",
            f"web Redis connections: {clients['connections']} (named: {', '.join(clients['named']) or '-'}), "
            f"of which pub/sub: {clients['pubsub']} ({clients['pubsub_channels']} channel(s)); the others "
            "are its command pool, grown by the burst of snapshot reads",
            f"web CPU per delivery: {r['web_cpu_us_per_delivery']:.0f} us; "
            f"streams closed early: {r['streams_closed_early']}",
            "one uvicorn process (uvloop, httptools, no access log), Redis "
            f"{r['redis']}; clients: raw asyncio protocols on uvloop in the bench process, which shares "
            f"the 2 cores with it (a client's own lag is in the figures); RLIMIT_NOFILE {r['rlimit_nofile']}",
            f"delivery: time.time() before the progress script -> event bytes at each client; "
            f"{r['events']} events, {PAUSE:g} s apart",
            "targets met: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in met.items()),
            *(profile_notes("web process, during the events", r["profile"]) if r["profile"] else []),
        ],
        chart=chart,
    )
