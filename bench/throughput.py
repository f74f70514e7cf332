"""``throughput``: N ``demo.noop`` jobs already queued, then 1, 2 and 4 worker processes.

Jobs are created first with ``JobStore.create`` (64 at a time; creation is not what is
measured), then the worker processes start (``python -m workers``: concurrency 100, lease
30 s, the defaults). The run ends when the owner's active set is empty, i.e. every job is
SUCCESS. Three rates per run:

- steady: from the first job *started* to the last *completed*, from the job records'
  ``started_at``/``completed_at`` (Redis server clock): worker start-up excluded;
- wall: from spawning the worker processes to the last completion: start-up included;
- start-up: spawning to the first ``started_at``, reported on its own.

Worker counts are interleaved (1 2 4, 1 2 4, ...). ``--profile`` adds one more
single-worker run under ``py-spy`` (not timed) and writes the flame graph and the top
functions by own time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import profiling
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
    worker_argv,
)
from bench.completion import Completion, dead_process, watch_completion
from bench.cpu_time import CpuMeter
from broker.store import JobStore
from broker.topology import open_redis, parse_redis_url

WORKER_COUNTS = (1, 2, 4)
CPU_KEYS = (
    "worker_cpu_us_per_job",
    "redis_cpu_us_per_job",
    "worker_cpu_utilisation",
    "redis_cpu_utilisation",
)


async def _records(store: JobStore, ids: list[str]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for start in range(0, len(ids), 2000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 2000]:
                pipe.hmget(store.keys.job(job_id), "status", "attempts", "started_at", "completed_at")
            rows.extend(await pipe.execute())
    return rows


async def run_once(
    redis_url: str,
    redis_pid: int | Sequence[int],
    n: int,
    workers: int,
    log: Path,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Queue ``n`` noops, run ``workers`` processes until all succeed; return the timings.

    Also the CPU time the workers and Redis used per job, between the first and the last
    observed completion (from /proc), to show which of them the 2 cores are spent on.
    """
    prefix = f"b{uuid.uuid4().hex[:6]}:"
    flusher = open_redis(parse_redis_url(redis_url))
    await flusher.flushall()
    await flusher.aclose()
    async with job_store(redis_url, prefix, max_active_per_owner=0) as store:
        began = time.perf_counter()
        ids = await create_jobs(store, n)
        create_s = time.perf_counter() - began
        spawned, seen, per_job = await _run_workers(store, redis_url, redis_pid, n, workers, log, profile_to)
        rows = await _records(store, ids)
    outcomes = Counter((r[0] or b"?").decode() + "/" + (r[1] or b"?").decode() for r in rows)
    if outcomes != Counter({"SUCCESS/1": n}):
        raise RuntimeError(f"not every job ran exactly once to SUCCESS: {dict(outcomes)}")
    first_start = min(int(r[2]) for r in rows) / 1000
    last_done = max(int(r[3]) for r in rows) / 1000
    return {
        "workers": workers,
        "n": n,
        "create_s": create_s,
        "steady_rate": n / (last_done - first_start),
        "wall_rate": n / (last_done - spawned),
        "startup_s": first_start - spawned,
        "run_s": last_done - first_start,
        "polled_steady_rate": seen.steady_rate,
        **per_job,
    }


async def _run_workers(
    store: JobStore,
    redis_url: str,
    redis_pid: int | Sequence[int],
    n: int,
    workers: int,
    log: Path,
    profile_to: Path | None,
) -> tuple[float, Completion, dict[str, float]]:
    """Spawn the workers and wait until the ``n`` queued jobs are done; stop them.

    Returns when they were spawned, the completion seen by polling, and CPU per job.
    """
    actives = [store.keys.owner_active(OWNER, p) for p in range(store.keys.partitions)]
    profiler: subprocess.Popen[bytes] | None = None

    async def completed() -> int:
        nonlocal profiler
        done = n - sum([int(await store.redis.scard(active)) for active in actives])
        meter.observe(done)
        if profile_to and done and profiler is None:  # attach once jobs run: start-up is not profiled
            profiler = profiling.start(procs[0].pid, profile_to)
        return done

    spawned = time.time()
    procs = [spawn(worker_argv(), jobstream_env(redis_url, store.keys.prefix), log) for _ in range(workers)]
    meter = CpuMeter(procs, redis_pid, n)
    try:
        seen = await watch_completion(completed, n, spawned, timeout=60 + n / 200, alive=dead_process(procs))
    except RuntimeError as err:
        raise RuntimeError(f"{err}\nworker log:\n{log_tail(log)}") from err
    finally:
        stop_all(procs)
        if profiler is not None:
            profiling.finish(profiler)
    return spawned, seen, meter.per_job()


async def _profile(redis_url: str, redis_pid: int, n: int, log: Path, out: Path) -> dict[str, Any]:
    if profiling.py_spy_path() is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    svg = out / "worker-profile.svg"
    raw = out / "worker-profile.txt"
    await run_once(redis_url, redis_pid, n, 1, log, profile_to=svg)
    run = await run_once(redis_url, redis_pid, n, 1, log, profile_to=raw)
    if not raw.exists():
        return {"error": f"py-spy wrote nothing; see {raw.with_suffix('.log')}"}
    return {
        "svg": str(svg),
        "raw": str(raw),
        "run_under_profiler": run,
        "top_own": profiling.own_time(raw),
        "own_by_package": profiling.own_by_package(raw),
    }


def _median(stats: dict[str, Any], key: str, scale: float = 1.0, unit: str = "") -> str:
    return f"{stats[key]['median'] * scale:.0f}{unit}" if key in stats else "-"


THROUGHPUT_COLUMNS = [
    "workers",
    "jobs/s steady",
    "spread",
    "jobs/s wall",
    "start-up s",
    "worker CPU us/job",
    "worker CPU",
    "Redis CPU us/job",
    "Redis CPU",
]
CPU_KEYS = (
    "worker_cpu_us_per_job",
    "redis_cpu_us_per_job",
    "worker_cpu_utilisation",
    "redis_cpu_utilisation",
)


async def _main(options: Options) -> Report:
    n = options.pick(200, 20_000, options.n)
    rounds = options.pick(1, 3, options.rounds)
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "workers.log"
        version = redis_version(server.url)
        for _ in range(rounds):
            for workers in WORKER_COUNTS:
                runs.append(await run_once(server.url, server.pid, n, workers, log))
        if options.profile:
            profile = await _profile(server.url, server.pid, max(n, 30_000), log, options.out)
    by_workers = {w: _worker_stats([r for r in runs if r["workers"] == w]) for w in WORKER_COUNTS}
    rows = [_throughput_row(workers, by_workers[workers], rounds) for workers in WORKER_COUNTS]
    notes = [
        f"N = {n:,} demo.noop jobs queued before the workers start; {rounds} round(s), worker counts "
        "interleaved; medians, spread = min-max over rounds.",
        "steady = first started_at -> last completed_at (job records, Redis clock); wall = worker "
        "spawn -> last completion; start-up = spawn -> first started_at.",
        "CPU from /proc from 20% to 100% of the jobs done: us per job summed over the "
        "workers, utilisation per worker process (100% = one core) and of Redis.",
        f"worker: python -m workers (JobReceiver, concurrency 100, lease 30 s); Redis {version}, "
        f"AOF everysec, loopback; {os.cpu_count()} CPU cores shared by Redis, workers and this bench.",
    ]
    data: dict[str, Any] = {
        "n": n,
        "rounds": rounds,
        "redis": version,
        "by_workers": by_workers,
        "runs": runs,
    }
    if profile is not None:
        data["profile"] = profile
        notes += _profile_notes(profile)

    def chart(path: Path) -> None:
        labels = [f"{w} worker{'s' if w > 1 else ''}" for w in WORKER_COUNTS]
        values = [by_workers[w]["steady"]["median"] for w in WORKER_COUNTS]
        spread = [(by_workers[w]["steady"]["min"], by_workers[w]["steady"]["max"]) for w in WORKER_COUNTS]
        bar_chart(path, f"jobstream throughput, {n:,} noop jobs", labels, values, "jobs/s (steady)", spread)

    title = f"throughput: {n:,} queued noop jobs"
    return Report("throughput", title, THROUGHPUT_COLUMNS, rows, data, notes, chart)


def _worker_stats(mine: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spreads of the runs with one worker count."""
    stats = {
        "steady": summary([r["steady_rate"] for r in mine]),
        "wall": summary([r["wall_rate"] for r in mine]),
        "startup_s": summary([r["startup_s"] for r in mine]),
    }
    for key in CPU_KEYS:
        values = [r[key] for r in mine if key in r]
        if values:
            stats[key] = summary(values)
    return stats


def _throughput_row(workers: int, stats: dict[str, Any], rounds: int) -> list[str]:
    steady = stats["steady"]
    return [
        f"{workers} worker{'s' if workers > 1 else ''}",
        fmt_rate(steady["median"]),
        fmt_spread(steady) if rounds > 1 else "-",
        fmt_rate(stats["wall"]["median"]),
        f"{stats['startup_s']['median']:.2f}",
        _median(stats, "worker_cpu_us_per_job"),
        _median(stats, "worker_cpu_utilisation", 100, "%"),
        _median(stats, "redis_cpu_us_per_job"),
        _median(stats, "redis_cpu_utilisation", 100, "%"),
    ]


def _profile_notes(profile: dict[str, Any]) -> list[str]:
    """The worker profile's top 10 functions and its own time by package."""
    notes = ["worker profile (py-spy, 1 worker, own % / inclusive % of CPU samples), top 10:"]
    for name, own, incl in profile.get("top_own", [])[:10]:
        notes.append(f"  {own:5.1f}% {incl:5.1f}%  {name}")
    notes.append(
        "  own time by package: "
        + ", ".join(f"{pkg} {pct:.0f}%" for pkg, pct in profile.get("own_by_package", [])[:8])
    )
    if "error" in profile:
        notes.append(f"  profile: {profile['error']}")
    return notes


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
