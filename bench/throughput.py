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
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
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
    dead_process,
    fmt_rate,
    fmt_spread,
    job_store,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop,
    stop_all,
    summary,
    watch_completion,
)
from broker.store import JobStore

WORKER_COUNTS = (1, 2, 4)


async def _records(store: JobStore, ids: list[str]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for start in range(0, len(ids), 2000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids[start : start + 2000]:
                pipe.hmget(store.keys.job(job_id), "status", "attempts", "started_at", "completed_at")
            rows.extend(await pipe.execute())
    return rows


async def run_once(
    redis_url: str, n: int, workers: int, log: Path, profile_to: Path | None = None
) -> dict[str, Any]:
    """Queue ``n`` noops, run ``workers`` processes until all succeed; return the timings."""
    prefix = f"b{uuid.uuid4().hex[:6]}:"
    flusher = Redis.from_url(redis_url)
    await flusher.flushall()
    await flusher.aclose()
    async with job_store(redis_url, prefix, max_active_per_owner=0) as store:
        began = time.perf_counter()
        ids = await create_jobs(store, n)
        create_s = time.perf_counter() - began
        active = store.keys.owner_active(OWNER)

        async def completed() -> int:
            return n - int(await store.redis.scard(active))

        spawned = time.time()
        procs = [spawn(_worker_argv(), jobstream_env(redis_url, prefix), log) for _ in range(workers)]
        profiler = _start_py_spy(procs[0].pid, profile_to) if profile_to else None
        try:
            seen = await watch_completion(
                completed, n, spawned, timeout=60 + n / 200, alive=dead_process(procs)
            )
        except RuntimeError as err:
            raise RuntimeError(f"{err}\nworker log:\n{log_tail(log)}") from err
        finally:
            stop_all(procs)
            if profiler is not None:
                stop(profiler, timeout=60)
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
    }


def _worker_argv() -> list[str]:
    return [sys.executable, "-m", "workers", "--log-level", "WARNING"]


def _start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    fmt = "raw" if out.suffix == ".txt" else "flamegraph"
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "200",
            "--format",
            fmt,
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def own_time(collapsed: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """Top functions by own (leaf) samples from py-spy's raw output: (function, own %, total %)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[1:]]  # first frame: the thread
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return [(name, 100 * c / total, 100 * inclusive[name] / total) for name, c in own.most_common(top)]


def _frame_name(frame: str) -> str:
    """``fn (path/to/module.py:123)`` -> ``fn (module.py)``: one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


async def _profile(redis_url: str, n: int, log: Path, out: Path) -> dict[str, Any]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (uv pip install py-spy)"}
    svg = out / "worker-profile.svg"
    raw = out / "worker-profile.txt"
    await run_once(redis_url, n, 1, log, profile_to=svg)
    run = await run_once(redis_url, n, 1, log, profile_to=raw)
    top = own_time(raw) if raw.exists() else []
    return {"svg": str(svg), "raw": str(raw), "run_under_profiler": run, "top_own": top}


async def _main(options: Options) -> Report:
    n = options.pick(500, 20_000, options.n)
    rounds = options.pick(1, 3, options.rounds)
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] | None = None
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "workers.log"
        version = redis_version(server.url)
        for _ in range(rounds):
            for workers in WORKER_COUNTS:
                runs.append(await run_once(server.url, n, workers, log))
        if options.profile:
            profile = await _profile(server.url, max(n, 30_000), log, options.out)
    by_workers: dict[int, dict[str, Any]] = {}
    rows = []
    for workers in WORKER_COUNTS:
        mine = [r for r in runs if r["workers"] == workers]
        steady = summary([r["steady_rate"] for r in mine])
        wall = summary([r["wall_rate"] for r in mine])
        startup = summary([r["startup_s"] for r in mine])
        by_workers[workers] = {"steady": steady, "wall": wall, "startup_s": startup}
        rows.append(
            [
                f"{workers} worker{'s' if workers > 1 else ''}",
                fmt_rate(steady["median"]),
                fmt_spread(steady) if rounds > 1 else "-",
                fmt_rate(wall["median"]),
                f"{startup['median']:.2f}",
            ]
        )
    notes = [
        f"N = {n:,} demo.noop jobs queued before the workers start; {rounds} round(s), worker counts "
        "interleaved; medians, spread = min-max over rounds.",
        "steady = first started_at -> last completed_at (job records, Redis clock); wall = worker "
        "spawn -> last completion; start-up = spawn -> first started_at.",
        f"worker: python -m workers (concurrency 100, lease 30 s); Redis {version}, AOF everysec, "
        f"loopback; {os.cpu_count()} CPU cores shared by Redis, workers and this bench.",
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
        for name, own, incl in profile.get("top_own", [])[:10]:
            notes.append(f"profile: {own:5.1f}% own {incl:5.1f}% incl  {name}")

    def chart(path: Path) -> None:
        labels = [f"{w} worker{'s' if w > 1 else ''}" for w in WORKER_COUNTS]
        values = [by_workers[w]["steady"]["median"] for w in WORKER_COUNTS]
        spread = [(by_workers[w]["steady"]["min"], by_workers[w]["steady"]["max"]) for w in WORKER_COUNTS]
        bar_chart(path, f"jobstream throughput, {n:,} noop jobs", labels, values, "jobs/s (steady)", spread)

    return Report(
        "throughput",
        f"throughput: {n:,} queued noop jobs",
        ["workers", "jobs/s steady", "spread", "jobs/s wall", "start-up s"],
        rows,
        data,
        notes,
        chart,
    )


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
