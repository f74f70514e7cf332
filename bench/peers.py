"""``peers``: the throughput workload on jobstream, arq, SAQ, streaq and plain taskiq-redis.

Same run, same Redis (the bench's own ``redis-server``, flushed between runs), same
workload: N noop jobs queued first, then one worker process, until every job's completion
is recorded in Redis. Systems are interleaved (A B C D E, A B C D E, ...) over several
rounds; the table shows medians and the min-max spread.

Completion is observed the same way for all, by polling Redis every 10 ms for the count of
finished jobs (jobstream: the owner's active set; arq: the queue zset; SAQ: the incomplete
zset; streaq: the results zset; taskiq: the consumer group's pending + lag). The steady
rate runs from the first observed completion to the last, so worker start-up is excluded
for every system alike; the wall rate includes it.

Settings (each peer's module in ``bench/peer_apps`` says the same): library defaults, each
system run at concurrency 100 per worker process (jobstream's default, and taskiq's) and
also at its own default concurrency where that differs (arq and SAQ 10, streaq 16; not in
``--quick``); jobstream is compared with the best configuration of the best peer. Per-job
INFO logging off for all; results (completions) kept in Redis by all. jobstream keeps full
job records, leases and ack-after-state: that is the product, not a handicap to remove.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import (
    OWNER,
    Options,
    Report,
    bar_chart,
    bench_redis,
    create_jobs,
    fmt_rate,
    fmt_spread,
    job_store,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop_all,
    summary,
)
from bench.completion import dead_process, watch_completion
from bench.cpu_time import CpuMeter
from broker.keys import Keys

CONCURRENCY = 100
CPU_KEYS = ("worker_cpu_us_per_job", "redis_cpu_us_per_job")
BATCH = 200
Enqueue = Callable[[str, int], Awaitable[None]]
Completed = Callable[[Redis, int], Awaitable[int]]


@dataclass(frozen=True)
class Peer:
    """One system under test: how to queue N noops, run a worker, and count completions."""

    name: str
    system: str
    concurrency: int
    settings: str
    argv: list[str]
    enqueue: Enqueue
    completed: Completed


async def _in_batches(n: int, one: Callable[[], Awaitable[Any]], batch: int = BATCH) -> None:
    for start in range(0, n, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, n - start))))


# -- jobstream ---------------------------------------------------------------------------------

_JS_PREFIX = "js:"


async def _jobstream_enqueue(url: str, n: int) -> None:
    async with job_store(url, _JS_PREFIX, max_active_per_owner=0) as store:
        await create_jobs(store, n)


async def _jobstream_completed(redis: Redis, n: int) -> int:
    return n - int(await redis.scard(Keys(_JS_PREFIX).owner_active(OWNER, 0)))


# -- arq ---------------------------------------------------------------------------------------


async def _arq_enqueue(url: str, n: int) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    pool = await create_pool(RedisSettings.from_dsn(url))
    try:
        await _in_batches(n, lambda: pool.enqueue_job("noop"), batch=32)  # arq's pool holds 50 connections
    finally:
        await pool.aclose()


async def _arq_completed(redis: Redis, n: int) -> int:
    return n - int(await redis.zcard("arq:queue"))


# -- SAQ ---------------------------------------------------------------------------------------


async def _saq_enqueue(url: str, n: int) -> None:
    from saq import Queue

    queue = Queue.from_url(url)
    await queue.connect()
    try:
        await _in_batches(n, lambda: queue.enqueue("noop"))
    finally:
        await queue.disconnect()


async def _saq_completed(redis: Redis, n: int) -> int:
    return n - int(await redis.zcard("saq:default:incomplete"))


# -- streaq ------------------------------------------------------------------------------------


async def _streaq_enqueue(url: str, n: int) -> None:
    from streaq import Worker

    worker: Worker[Any] = Worker(redis_url=url)
    async with worker:
        for start in range(0, n, 1000):
            await worker.enqueue_many([worker.enqueue_unsafe("noop") for _ in range(min(1000, n - start))])


async def _streaq_completed(redis: Redis, n: int) -> int:
    return int(await redis.zcard("streaq:default:index:results"))


# -- taskiq-redis ------------------------------------------------------------------------------


async def _taskiq_enqueue(url: str, n: int) -> None:
    from taskiq.kicker import AsyncKicker
    from taskiq_redis import RedisStreamBroker

    broker = RedisStreamBroker(url=url)
    await broker.startup()  # creates the group (at "$"), so the queued messages are delivered
    try:
        kicker: AsyncKicker[Any, Any] = AsyncKicker("noop", broker, {})
        await _in_batches(n, kicker.kiq)
    finally:
        await broker.shutdown()


async def _taskiq_completed(redis: Redis, n: int) -> int:
    groups: Any = await redis.xinfo_groups("taskiq")
    if not groups:
        return 0
    group = groups[0]
    return n - int(group["pending"]) - int(group.get("lag") or 0)


def _argv(system: str, concurrency: int) -> list[str]:
    py, conc = sys.executable, str(concurrency)
    return {
        "jobstream": [py, "-m", "workers", "--log-level", "WARNING", "--concurrency", conc],
        "arq": [py, "-m", "bench.peer_apps.arq_app"],
        "saq": [py, "-m", "saq", "bench.peer_apps.saq_app.settings", "--quiet"],
        "streaq": [py, "-m", "bench.peer_apps.streaq_app"],
        "taskiq-redis": [py, "-m", "taskiq", "worker", "bench.peer_apps.taskiq_app:broker", "--workers", "1",
                         "--log-level", "WARNING", "--max-async-tasks", conc],
    }[system]  # fmt: skip


_SYSTEMS: list[tuple[str, int, str, Enqueue, Completed]] = [
    ("jobstream", 100, "JobReceiver, lease 30 s, full job records, ack with the final state",
     _jobstream_enqueue, _jobstream_completed),
    ("arq", 10, "poll_delay 0.5 s, keep_result 3600 s", _arq_enqueue, _arq_completed),
    ("saq", 10, "BLMOVE dequeue, job ttl 600 s", _saq_enqueue, _saq_completed),
    ("streaq", 16, "prefetch = concurrency, result ttl 300 s", _streaq_enqueue, _streaq_completed),
    ("taskiq-redis", 100, "RedisStreamBroker defaults, RedisAsyncResultBackend (3600 s)",
     _taskiq_enqueue, _taskiq_completed),
]  # fmt: skip
"""(system, its default concurrency, its other settings, enqueue, completed)."""


def peers(both_concurrencies: bool = True) -> list[Peer]:
    """The systems in the order each round runs them: each at concurrency 100, and at its
    own default concurrency where that differs (unless ``both_concurrencies`` is False)."""
    out = []
    for system, default, settings, enqueue, completed in _SYSTEMS:
        levels = [CONCURRENCY] + ([default] if both_concurrencies and default != CONCURRENCY else [])
        for level in levels:
            name = system if level == CONCURRENCY else f"{system} c={level}"
            tag = "default" if level == default else f"default {default}"
            out.append(
                Peer(name, system, level, f"concurrency {level} ({tag}), {settings}",
                     _argv(system, level), enqueue, completed)
            )  # fmt: skip
    return out


async def run_peer(peer: Peer, url: str, redis_pid: int, n: int, log: Path) -> dict[str, Any]:
    """One run of one system: flush, queue N noops, one worker process until all are done."""
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
        began = time.perf_counter()
        await peer.enqueue(url, n)
        enqueue_s = time.perf_counter() - began
        env = {
            "BENCH_REDIS_URL": url,
            "BENCH_CONCURRENCY": str(peer.concurrency),
            **jobstream_env(url, _JS_PREFIX),
        }
        spawned = time.time()
        procs = [spawn(peer.argv, env, log)]
        meter = CpuMeter(procs, redis_pid, n)

        async def completed() -> int:
            done = await peer.completed(redis, n)
            meter.observe(done)
            return done

        try:
            seen = await watch_completion(
                completed, n, spawned, timeout=60 + n / 50,
                alive=dead_process(procs), interval=0.01,
            )  # fmt: skip
        except RuntimeError as err:
            raise RuntimeError(f"{peer.name}: {err}\nlog:\n{log_tail(log)}") from err
        finally:
            stop_all(procs, timeout=2)  # measured already; SAQ alone takes ~5 s to leave its BLMOVEs
    finally:
        await redis.aclose()
    return {
        "peer": peer.name,
        "system": peer.system,
        "concurrency": peer.concurrency,
        "n": n,
        "enqueue_s": enqueue_s,
        "steady_rate": seen.steady_rate,
        "wall_rate": seen.wall_rate,
        "startup_s": seen.startup,
        **meter.per_job(),
    }


PEER_COLUMNS = [
    "system",
    "jobs/s steady",
    "spread",
    "jobs/s wall",
    "start-up s",
    "jobstream is",
    "worker CPU us/job",
    "Redis CPU us/job",
]


async def _main(options: Options) -> Report:
    n = options.pick(100, 10_000, options.n)
    rounds = options.pick(1, 5, options.rounds)
    systems = peers(both_concurrencies=not options.quick)
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        version = redis_version(server.url)
        runs = [
            await _run_or_note(peer, server.url, server.pid, n, Path(folder) / f"{peer.name}.log")
            for _ in range(rounds)
            for peer in systems
        ]
    stats = {peer.name: _peer_stats(peer, runs) for peer in systems}
    measured = [name for name, st in stats.items() if "steady" in st]
    best_peer = max(
        (p.name for p in systems if p.system != "jobstream" and p.name in measured),
        key=lambda k: stats[k]["steady"]["median"],
    )
    ours = stats["jobstream"]["steady"]["median"]
    ratio = ours / stats[best_peer]["steady"]["median"]
    notes = [
        f"N = {n:,} noop jobs queued before one worker process starts; {rounds} round(s), systems "
        "interleaved; medians, spread = min-max over rounds.",
        "steady = first -> last observed completion (Redis polled every 10 ms); "
        "wall includes worker start-up. CPU per job (from /proc, 20% -> 100% done): the worker "
        "process (and its children) and Redis; far less disturbed by other load than jobs/s.",
        f"jobstream vs the best peer configuration (* {best_peer}): {ratio:.2f}x (target: 2x).",
        f"Redis {version} (AOF everysec, loopback), flushed between runs. Each system at concurrency 100 "
        "(jobstream's default) and, where it differs, at its own default (c=...).",
        *(f"{name}: {s['settings']}" for name, s in stats.items()),
    ]
    data = {"n": n, "rounds": rounds, "redis": version, "concurrency": CONCURRENCY, "stats": stats,
            "best_peer": best_peer, "ratio_vs_best_peer": ratio, "runs": runs}  # fmt: skip

    def chart(path: Path) -> None:
        bar_chart(
            path,
            f"noop jobs/s, 1 worker process, N={n:,} ({rounds} rounds, median, min-max)",
            measured,
            [stats[name]["steady"]["median"] for name in measured],
            "jobs/s (steady)",
            [(stats[name]["steady"]["min"], stats[name]["steady"]["max"]) for name in measured],
        )

    title = f"peers: {n:,} queued noop jobs, one worker process"
    rows = [_peer_row(name, st, best_peer, ours) for name, st in stats.items()]
    return Report("peers", title, PEER_COLUMNS, rows, data, notes, chart)


async def _run_or_note(peer: Peer, url: str, redis_pid: int, n: int, log: Path) -> dict[str, Any]:
    """One run of ``peer``, or a record of its failure: one system failing must not hide the others."""
    try:
        return await run_peer(peer, url, redis_pid, n, log)
    except RuntimeError as err:
        print(f"{peer.name}: run failed: {str(err)[:2000]}", file=sys.stderr)
        return {"peer": peer.name, "system": peer.system, "error": str(err)[:4000]}


def _peer_stats(peer: Peer, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads of one peer's successful runs, and how many failed."""
    mine = [r for r in runs if r["peer"] == peer.name and "error" not in r]
    failed = sum(1 for r in runs if r["peer"] == peer.name and "error" in r)
    cpu_keys = [key for key in CPU_KEYS if any(key in r for r in mine)]
    if not mine:
        return {"settings": peer.settings, "failed": failed}
    return {
        "failed": failed,
        "settings": peer.settings,
        "steady": summary([r["steady_rate"] for r in mine]),
        "wall": summary([r["wall_rate"] for r in mine]),
        "startup_s": summary([r["startup_s"] for r in mine]),
        **{key: summary([r[key] for r in mine if key in r]) for key in cpu_keys},
    }


def _peer_row(name: str, st: dict[str, Any], best_peer: str, ours: float) -> list[str]:
    failed = f" ({st['failed']} failed)" if st["failed"] else ""
    if "steady" not in st:
        return [name + failed, "-", "-", "-", "-", "", "-", "-"]
    return [
        name + (" *" if name == best_peer else "") + failed,
        fmt_rate(st["steady"]["median"]),
        fmt_spread(st["steady"]) if st["steady"]["n"] > 1 else "-",
        fmt_rate(st["wall"]["median"]),
        f"{st['startup_s']['median']:.2f}",
        f"{ours / st['steady']['median']:.2f}x" if name != "jobstream" else "",
        f"{st['worker_cpu_us_per_job']['median']:.0f}" if "worker_cpu_us_per_job" in st else "-",
        f"{st['redis_cpu_us_per_job']['median']:.0f}" if "redis_cpu_us_per_job" in st else "-",
    ]


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
