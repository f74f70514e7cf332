"""``recovery``: SIGKILL the worker running a job; time until another worker restarts it.

Each run: two worker processes (``python -m workers``) with ``JOBSTREAM_LEASE_SECONDS=5``,
one ``demo.sleep`` job of 10 s (10 steps); once it is PROCESSING (plus 1 s), the worker
named in its record (``worker`` = ``<host>-<pid>-<hex>``) gets SIGKILL. Measured from the
kill: until the job is PROCESSING again with ``attempts`` 2 (the other worker reclaimed
its entry once the lease ran out), and until it is SUCCESS. Median of 5 runs.

A restart waits for the dead worker's lease to run out (one lease after its last
renewal) and for a surviving worker's next reclaim; SUCCESS comes one job length later.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    Options,
    Report,
    bar_chart,
    bench_redis,
    encode_input,
    job_store,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop_all,
    summary,
    worker_argv,
)
from broker.store import JobStore

LEASE_SECONDS = 5


async def _until(
    store: JobStore, job_id: str, done: Any, timeout: float, what: str, log: Path
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    key = store.keys.job(job_id)
    while True:
        raw: Any = await store.redis.hgetall(key)
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if done(fields):
            return fields
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"timed out after {timeout:.0f}s waiting for {what}: {fields}\n{log_tail(log)}"
            )
        await asyncio.sleep(0.01)


async def _workers_ready(store: JobStore, count: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = [key async for key in store.redis.scan_iter(match=store.keys.worker_pattern)]
        if len(found) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(found)} of {count} workers came up\n{log_tail(log)}")
        await asyncio.sleep(0.05)


async def run_once(url: str, job_seconds: float, log: Path) -> dict[str, Any]:
    """One kill-and-recover run; returns seconds from the kill to restart and to SUCCESS."""
    prefix = f"r{uuid.uuid4().hex[:6]}:"
    env = jobstream_env(url, prefix, {"JOBSTREAM_LEASE_SECONDS": str(LEASE_SECONDS)})
    async with job_store(url, prefix) as store:
        procs = [spawn(worker_argv(), env, log) for _ in range(2)]
        try:
            await _workers_ready(store, 2, 60, log)
            data = encode_input({"seconds": job_seconds, "steps": 10})
            job, _ = await store.create(task="demo.sleep", input_json=data, owner="bench", queue="default")
            running = await _until(
                store, job.id, lambda f: f["status"] == "PROCESSING", 30, "PROCESSING", log
            )
            await asyncio.sleep(1)
            pid = int(running["worker"].rsplit("-", 2)[1])
            victim = next(p for p in procs if p.pid == pid)
            victim.send_signal(signal.SIGKILL)
            killed = time.time()
            victim.wait(10)
            timeout = 4 * LEASE_SECONDS + 2 * job_seconds + 10
            await _until(
                store, job.id, lambda f: f["status"] == "PROCESSING" and f["attempts"] == "2",
                timeout, "the restart", log,
            )  # fmt: skip
            restarted = time.time()
            final = await _until(
                store, job.id, lambda f: f["status"] in {"SUCCESS", "FAILURE"}, timeout, "end", log
            )
            ended = time.time()
        finally:
            stop_all(procs)
    if final["status"] != "SUCCESS" or final["attempts"] != "2":
        raise RuntimeError(f"job ended {final['status']} after {final['attempts']} attempts")
    return {"restart_s": restarted - killed, "success_s": ended - killed, "killed_pid": pid}


async def _main(options: Options) -> Report:
    runs_wanted = options.pick(1, 5, options.rounds)
    job_seconds = float(options.pick(2, 10, options.n))
    runs: list[dict[str, Any]] = []
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        version = redis_version(server.url)
        for _ in range(runs_wanted):
            runs.append(await run_once(server.url, job_seconds, Path(folder) / "workers.log"))
    restart = summary([r["restart_s"] for r in runs])
    success = summary([r["success_s"] for r in runs])
    rows = [[f"run {i + 1}", f"{r['restart_s']:.2f}", f"{r['success_s']:.2f}"] for i, r in enumerate(runs)]
    rows.append(["median", f"{restart['median']:.2f}", f"{success['median']:.2f}"])
    notes = [
        f"2 workers, JOBSTREAM_LEASE_SECONDS={LEASE_SECONDS}, demo.sleep {job_seconds:g} s in 10 steps; "
        f"SIGKILL 1 s after it started; Redis {version}.",
        "a restart waits for the dead worker's lease to run out (one lease after its last renewal) "
        "and for a survivor's next reclaim; SUCCESS comes one job length later (it restarts from the top).",
        f"restart spread: {restart['min']:.2f}-{restart['max']:.2f} s "
        f"(stdev {statistics.pstdev([r['restart_s'] for r in runs]):.2f} s)",
    ]

    def chart(path: Path) -> None:
        bar_chart(
            path,
            f"recovery after SIGKILL (lease {LEASE_SECONDS} s, job {job_seconds:g} s)",
            ["kill -> restarted (attempt 2)", "kill -> SUCCESS"],
            [restart["median"], success["median"]],
            "seconds (median)",
            [(restart["min"], restart["max"]), (success["min"], success["max"])],
        )

    return Report(
        "recovery",
        f"recovery: SIGKILL the running worker, median of {len(runs)}",
        ["run", "kill -> restarted s", "kill -> SUCCESS s"],
        rows,
        {
            "lease_seconds": LEASE_SECONDS,
            "job_seconds": job_seconds,
            "redis": version,
            "restart_s": restart,
            "success_s": success,
            "runs": runs,
        },
        notes,
        chart,
    )


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
