"""``cost``: Redis commands, round trips and memory per noop job lifecycle.

N ``demo.noop`` jobs are created one at a time by a creator process (``JobStore.create``,
as one HTTP request creates one job), then run by one worker process (``python -m
workers``). Both run under ``bench.roundtrips``, which counts every redis-py
``send_packed_command`` call, i.e. every round trip, labelled by what it carried.

- round trips per job: the creator's and the worker's, split into the job's own path
  (create, XREADGROUP, start, finish-with-ack) and the worker's overhead (connection
  set-up, lease renewal, heartbeat, delayed-job promotion, reclaim);
- commands per job: ``INFO commandstats`` deltas over the run (commands called inside the
  Lua scripts included, as Redis counts them), and ``total_commands_processed``; the
  bench's own polling (SCARD) and INFO calls are subtracted;
- memory per retained finished job: ``used_memory`` after every job has finished and the
  worker has exited, minus before the first job, divided by N (default retention, 7 days);
  plus ``MEMORY USAGE`` of sampled job hashes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.common import (
    OWNER,
    Options,
    Report,
    bench_redis,
    job_store,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop,
)
from bench.completion import dead_process
from broker.keys import Keys

PREFIX = "js:"
JOB_PATH = {"EVALSHA create_job", "XREADGROUP", "EVALSHA start_job", "EVALSHA finish_job"}
BENCH_OWN = {"info"}
_MEMORY_FIELDS = (
    "used_memory",
    "used_memory_dataset",
    "used_memory_overhead",
    "mem_clients_normal",
    "mem_aof_buffer",
    "used_memory_scripts",
    "mem_fragmentation_ratio",
)


async def _snapshot(redis: Redis) -> dict[str, Any]:
    stats: Any = await redis.info("commandstats")
    general: Any = await redis.info("stats")
    memory: Any = await redis.info("memory")
    return {
        "commands": {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()},
        "total": int(general["total_commands_processed"]),
        "used_memory": int(memory["used_memory"]),
        "used_memory_dataset": int(memory["used_memory_dataset"]),
        "memory": {k: memory[k] for k in _MEMORY_FIELDS if k in memory},
    }


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    out = {}
    for name, calls in after["commands"].items():
        diff = calls - before["commands"].get(name, 0)
        if diff and name not in BENCH_OWN:
            out[name] = diff
    return out


def _counted(out: Path, module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.roundtrips", str(out), module, *args]


async def _wait_exit(proc: Any, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{what} did not finish in {timeout:.0f}s\n{log_tail(log)}")
        await asyncio.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode}\n{log_tail(log)}")


async def _job_memory(redis: Redis, n: int) -> dict[str, float]:
    keys = Keys(PREFIX)
    ids: Any = await redis.zrange(keys.owner_jobs(OWNER, 0), 0, -1)
    sample = random.sample(list(ids), min(200, len(ids)))
    sizes = [int(await redis.memory_usage(keys.job(i.decode()), samples=0) or 0) for i in sample]
    index = int(await redis.memory_usage(keys.owner_jobs(OWNER, 0), samples=0) or 0)
    return {"job_hash_mean": sum(sizes) / len(sizes), "owner_index_per_job": index / n}


async def _measure(url: str, n: int, folder: Path) -> dict[str, Any]:
    redis = Redis.from_url(url)
    log = folder / "cost.log"
    try:
        async with job_store(url, PREFIX):  # scripts loaded, group made: not part of a job's cost
            pass
        before = await _snapshot(redis)
        creator = spawn(_counted(folder / "creator.json", "bench.create_jobs", url, PREFIX, str(n)), log=log)
        await _wait_exit(creator, 60 + n / 100, "creator", log)
        created = await _snapshot(redis)
        polls, run_s = await _run_worker(redis, url, folder / "worker.json", log, n)
        finished = await _snapshot(redis)
        memory = await _job_memory(redis, n)
    finally:
        await redis.aclose()
    creator_counts = json.loads((folder / "creator.json").read_text())
    worker_counts = json.loads((folder / "worker.json").read_text())
    return {
        "n": n,
        "worker_run_s": run_s,
        "creator_round_trips": creator_counts["round_trips"],
        "creator_commands": creator_counts["commands"],
        "worker_round_trips": worker_counts["round_trips"],
        "worker_commands": worker_counts["commands"],
        **_server_figures(before, created, finished, polls, n),
        "memory_sample": memory,
    }


async def _run_worker(redis: Redis, url: str, counts: Path, log: Path, n: int) -> tuple[int, float]:
    """Run one counted worker until no job is active; (the bench's own SCARD polls, seconds)."""
    began = time.monotonic()
    worker = spawn(_counted(counts, "workers", "--log-level", "WARNING"), jobstream_env(url, PREFIX), log)
    polls = 0
    alive = dead_process([worker])
    try:
        while int(await redis.scard(Keys(PREFIX).owner_active(OWNER, 0))) > 0:
            polls += 1
            problem = alive()
            if problem or time.monotonic() - began > 60 + n / 100:
                raise RuntimeError(f"worker: {problem or 'timed out'}\n{log_tail(log)}")
            await asyncio.sleep(0.05)
        return polls + 1, time.monotonic() - began
    finally:
        stop(worker)


def _server_figures(
    before: dict[str, Any], created: dict[str, Any], finished: dict[str, Any], polls: int, n: int
) -> dict[str, Any]:
    """Commands and memory from the three INFO snapshots, the bench's own calls subtracted."""
    worker_cmds = _delta(finished, created)
    worker_cmds["scard"] = worker_cmds.get("scard", 0) - polls
    return {
        "server_commands_create": _delta(created, before),
        "server_commands_worker": {k: v for k, v in worker_cmds.items() if v},
        "total_commands_processed": (
            finished["total"] - before["total"] - polls - _info_calls(finished, before)
        ),
        "used_memory_before": before["used_memory"],
        "used_memory_pending": created["used_memory"],
        "used_memory_finished": finished["used_memory"],
        "dataset_per_job": (finished["used_memory_dataset"] - before["used_memory_dataset"]) / n,
        "memory_info": {
            "before": before["memory"],
            "pending": created["memory"],
            "finished": finished["memory"],
        },
    }


def _info_calls(after: dict[str, Any], before: dict[str, Any]) -> int:
    """The snapshots' own INFO calls (give or take the one in flight while counting)."""
    return int(after["commands"].get("info", 0) - before["commands"].get("info", 0))


def _carried(label: str) -> set[str]:
    """The commands a round trip carried: ``"pipeline(3): A,B"`` -> {A, B}."""
    if label.startswith("pipeline("):
        return set(label.split(": ", 1)[1].split(","))
    return {label}


def _split(round_trips: dict[str, int]) -> tuple[int, int]:
    """(round trips on the job's own path, the others); a pipeline of job-path commands counts once."""
    job = sum(c for label, c in round_trips.items() if _carried(label) <= JOB_PATH)
    return job, sum(round_trips.values()) - job


async def _main(options: Options) -> Report:
    n = options.pick(100, 10_000, options.n)
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        version = redis_version(server.url)
        m = await _measure(server.url, n, Path(folder))
    all_cmds: dict[str, int] = {}
    for table in (m["server_commands_create"], m["server_commands_worker"]):
        for name, calls in table.items():
            all_cmds[name] = all_cmds.get(name, 0) + calls
    per_job_memory = (m["used_memory_finished"] - m["used_memory_before"]) / n
    return Report(
        "cost",
        f"cost per job lifecycle: {n:,} noop jobs",
        ["what", "per job", "total"],
        _rows(m, all_cmds, per_job_memory, n),
        {"n": n, "redis": version, **m, "per_job_memory_bytes": per_job_memory},
        _notes(m, n, version),
        lambda path: _chart(path, all_cmds, n),
    )


def _rows(m: dict[str, Any], all_cmds: dict[str, int], per_job_memory: float, n: int) -> list[list[str]]:
    """Round trips and commands per job, then memory per job."""
    c_job, c_other = _split(m["creator_round_trips"])
    w_job, w_other = _split(m["worker_round_trips"])
    rows = [
        ["round trips: create (creator process)", f"{c_job / n:.2f}", f"{c_job:,}"],
        ["round trips: XREADGROUP + start + finish/ack (worker)", f"{w_job / n:.2f}", f"{w_job:,}"],
        ["round trips per job lifecycle (target <= 6)", f"{(c_job + w_job) / n:.2f}", f"{c_job + w_job:,}"],
        ["round trips: worker overhead (set-up, leases, heartbeat, delayed, reclaim)",
         f"{(w_other + c_other) / n:.3f}", f"{w_other + c_other:,}"],
        ["commands processed by Redis (total_commands_processed, incl. inside Lua)",
         f"{m['total_commands_processed'] / n:.1f}", f"{m['total_commands_processed']:,}"],
    ]  # fmt: skip
    for name, calls in sorted(all_cmds.items(), key=lambda kv: -kv[1]):
        if calls >= n / 100:
            rows.append([f"  {name}", f"{calls / n:.2f}", f"{calls:,}"])
    pending = (m["used_memory_pending"] - m["used_memory_before"]) / n
    return [
        *rows,
        ["memory per retained finished job, bytes (target < 1024)", f"{per_job_memory:,.0f}", ""],
        ["  of which dataset (used_memory_dataset delta / N)", f"{m['dataset_per_job']:,.0f}", ""],
        ["  job hash (MEMORY USAGE, mean of 200)", f"{m['memory_sample']['job_hash_mean']:,.0f}", ""],
        [
            "  owner index entry (zset MEMORY USAGE / N)",
            f"{m['memory_sample']['owner_index_per_job']:,.0f}",
            "",
        ],
        ["memory per pending job, bytes", f"{pending:,.0f}", ""],
    ]


def _notes(m: dict[str, Any], n: int, version: str) -> list[str]:
    """How the figures were counted, and every round trip by name."""
    top_level = sum(m["creator_round_trips"].values()) + sum(m["worker_round_trips"].values())
    return [
        f"N = {n:,} demo.noop jobs, created one at a time, run by one worker process "
        f"in {m['worker_run_s']:.1f} s; Redis {version}.",
        "round trips counted client-side (redis-py send_packed_command: one per command, pipeline or "
        "blocking read); commands server-side from INFO commandstats deltas, the bench's own SCARD "
        "polls and INFO calls subtracted.",
        f"all round trips (creator + worker, with overhead): {top_level / n:.2f} per job.",
        "creator round trips: " + _describe(m["creator_round_trips"]),
        "worker round trips: " + _describe(m["worker_round_trips"]),
        "worker commands sent: " + ", ".join(f"{k} {v:,}" for k, v in sorted(m["worker_commands"].items())),
    ]


def _describe(round_trips: dict[str, int]) -> str:
    """Single commands by name; pipelines summed up as one entry (count, mean length)."""
    singles = {k: v for k, v in round_trips.items() if not k.startswith("pipeline(")}
    pipes = {k: v for k, v in round_trips.items() if k.startswith("pipeline(")}
    parts = [f"{k} {v:,}" for k, v in sorted(singles.items())]
    if pipes:
        count = sum(pipes.values())
        carried = sum(int(k[len("pipeline(") : k.index(")")]) * v for k, v in pipes.items())
        names = sorted(set().union(*(_carried(k) for k in pipes)))
        parts.append(f"pipelines {count:,} (mean {carried / count:.1f} commands: {','.join(names)})")
    return ", ".join(parts)


def _chart(path: Path, commands: dict[str, int], n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sorted(
        ((name, calls / n) for name, calls in commands.items() if calls >= n / 100), key=lambda kv: kv[1]
    )
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(items) + 1.5))
    ax.barh([name for name, _ in items], [v for _, v in items], color="#4a7ab5")
    ax.set_xlabel("calls per job (server side, incl. inside Lua)")
    ax.set_title(f"Redis commands per noop job lifecycle (N={n:,})")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
