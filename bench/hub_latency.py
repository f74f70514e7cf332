"""EventHub delivery latency: from just before ``store.progress(...)`` to a listener holding it.

    uv run python -m bench.hub_latency [--samples 2000] [--listeners 1,1000]

Starts its own ``redis-server`` (loopback, free port, temporary folder) and one job that
is PROCESSING, opens N feeds on it in one ``EventHub``, then takes samples one at a time
(closed loop: the next progress call waits until every feed has the previous version, so
nothing queues or coalesces). Each sample's start time travels in the progress message
(``time.monotonic_ns()``, one clock for the whole machine on Linux), so the producer can
be this process or a separate one, as a worker would be. Prints one row per setup:
latency over every (listener, sample) delivery, and of the last listener per sample
(when the fan-out is complete). Stops only what it started, by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bench.sse_client import running_job
from broker.queues import ensure_groups
from broker.settings import load_settings
from broker.store import JobStore, Started
from devtools.embedded_redis import EmbeddedRedis
from hub.event_hub import EventHub, JobFeed

WARMUP = 200
QUEUE = "default"


@dataclass
class Row:
    listeners: int
    producer: str
    samples: int
    all_ms: list[float]  # p50, p99, max over every delivery
    last_ms: list[float]  # p50, p99, max of the last listener per sample
    rtt_ms: float  # p50 of the progress call itself (in-process producer only), else nan


def _pcts(values: array[float] | list[float]) -> list[float]:
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[n // 2] / 1e6, ordered[min(n - 1, int(n * 0.99))] / 1e6, ordered[-1] / 1e6]


class _Collector:
    """Feeds report each delivery here; the sample is done when all N have it."""

    def __init__(self, listeners: int, first_counted: int) -> None:
        self.listeners = listeners
        self.first_counted = first_counted
        self.latencies: array[float] = array("d")
        self.last: list[float] = []
        self.counts: Counter[int] = Counter()
        self.done = asyncio.Event()

    async def follow(self, feed: JobFeed) -> None:
        async for job in feed:
            latency = time.monotonic_ns() - int(job.message or 0)
            counted = job.version >= self.first_counted
            if counted:
                self.latencies.append(latency)
            self.counts[job.version] += 1
            if self.counts[job.version] == self.listeners:
                del self.counts[job.version]
                if counted:
                    self.last.append(latency)
                self.done.set()


async def _produce_here(store: JobStore, started: Started, collector: _Collector, n: int) -> float:
    rtts: list[float] = []
    for i in range(n):
        collector.done.clear()
        t0 = time.monotonic_ns()
        await store.progress(started.job.id, started.attempt, i % 100, str(t0))
        rtts.append(time.monotonic_ns() - t0)
        await collector.done.wait()
    return statistics.median(rtts[WARMUP:]) / 1e6


async def _produce_elsewhere(
    redis: Redis, url: str, prefix: str, started: Started, collector: _Collector, n: int
) -> None:
    ack = f"{prefix}bench:ack"
    argv = [sys.executable, "-m", "bench.hub_latency", "--produce", url, prefix, started.job.id,
            str(started.attempt), str(n)]  # fmt: skip
    producer = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        for _ in range(n):
            async with asyncio.timeout(30):
                await collector.done.wait()
            collector.done.clear()
            await redis.lpush(ack, b"1")
        await asyncio.to_thread(producer.wait, 30)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()


async def measure(url: str, listeners: int, samples: int, producer: str) -> Row:
    prefix = f"lat{listeners}{producer[0]}:"
    redis = Redis.from_url(url)
    store = JobStore(redis, load_settings({}, redis_url=url, prefix=prefix))
    await ensure_groups(redis, store.keys, [QUEUE])
    hub = EventHub(store)
    await hub.start()
    try:
        started = await running_job(store, QUEUE)
        feeds = [await hub.open_job(started.job.id) for _ in range(listeners)]
        for feed in feeds:
            await feed.snapshot()
        n = WARMUP + samples
        version = (await store.get(started.job.id)).version
        collector = _Collector(listeners, version + 1 + WARMUP)
        followers = [asyncio.create_task(collector.follow(feed)) for feed in feeds]
        rtt = float("nan")
        if producer == "same process":
            rtt = await _produce_here(store, started, collector, n)
        else:
            await _produce_elsewhere(redis, url, prefix, started, collector, n)
        for feed in feeds:
            feed.close()
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        assert len(collector.last) == samples, (len(collector.last), samples)
        return Row(listeners, producer, samples, _pcts(collector.latencies), _pcts(collector.last), rtt)
    finally:
        await hub.stop()
        await redis.aclose()


async def _producer_main(url: str, prefix: str, job_id: str, attempt: int, n: int) -> None:
    """The separate-process producer: one progress call per ack from the listeners' side."""
    redis = Redis.from_url(url)
    store = JobStore(redis, load_settings({}, redis_url=url, prefix=prefix))
    ack = f"{prefix}bench:ack"
    try:
        for i in range(n):
            await store.progress(job_id, attempt, i % 100, str(time.monotonic_ns()))
            if await redis.blpop([ack], timeout=30) is None:
                raise SystemExit("no ack within 30 s")
    finally:
        await redis.aclose()


def _table(rows: list[Row]) -> str:
    head = (f"{'listeners':>9}  {'producer':<15} {'samples':>7}  "
            f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}  "
            f"{'last p50':>8} {'last p99':>8} {'last max':>8}  {'call p50':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        a, last = r.all_ms, r.last_ms
        rtt = "-" if r.rtt_ms != r.rtt_ms else f"{r.rtt_ms:.3f}"
        lines.append(
            f"{r.listeners:>9}  {r.producer:<15} {r.samples:>7}  "
            f"{a[0]:>7.3f} {a[1]:>7.3f} {a[2]:>7.2f}  "
            f"{last[0]:>8.3f} {last[1]:>8.3f} {last[2]:>8.2f}  {rtt:>8}"
        )
    return "\n".join(lines)


async def _main(samples: int, listener_counts: list[int]) -> None:
    with tempfile.TemporaryDirectory(prefix="hub-latency-") as data, EmbeddedRedis(data_dir=data) as server:
        info: Any = await (client := Redis.from_url(server.url)).info("server")
        await client.aclose()
        print(f"redis {info['redis_version']} (pid {server.pid}, port {server.port}), "
              f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
              f"{samples} samples after {WARMUP} warm-up, closed loop")  # fmt: skip
        rows = []
        for listeners in listener_counts:
            for producer in ("same process", "worker process"):
                rows.append(await measure(server.url, listeners, samples, producer))
        print(_table(rows))
        print("p50/p99/max: every (listener, sample) delivery; last: when the last listener had it; "
              "call: the progress script's round trip")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hub_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--listeners", default="1,1000", help="comma-separated feed counts")
    parser.add_argument("--produce", nargs=5, metavar=("URL", "PREFIX", "JOB", "ATTEMPT", "N"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.produce:
        url, prefix, job_id, attempt, n = args.produce
        asyncio.run(_producer_main(url, prefix, job_id, int(attempt), int(n)))
        return
    asyncio.run(_main(args.samples, [int(x) for x in args.listeners.split(",")]))


if __name__ == "__main__":
    main()
