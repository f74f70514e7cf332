"""``startup``: how soon a new worker process runs its first job (a replica scaled out on a burst).

Each round queues one ``demo.noop`` job, spawns ``python -m workers`` and measures from the
spawn (this machine's clock) to the job's ``started_at`` (Redis's clock, same machine), then
stops the worker. A first round, not counted, compiles the modules (``.pyc``), as an image's
build does (``UV_COMPILE_BYTECODE=1`` in the Dockerfile). Reported beside it: the imports
alone (``python -c "import ..."`` of what ``python -m workers`` imports, spawn to exit), and,
for each round, what ``python -X importtime`` says the largest imports cost.

The goal (issue 14): at most 0.3 s from spawn to the first job once compiled.

``BENCH_WORKER_PYTHON=/path/to/python`` runs the workers (and the import runs) with another
environment's interpreter: the production one (``uv sync --no-dev``, as the image has it)
lacks the dev group's FastAPI, which taskiq's dependency injection imports when it is there
(about half of taskiq's import time here).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Options,
    Report,
    bar_chart,
    bench_redis,
    job_store,
    jobstream_env,
    log_tail,
    redis_version,
    spawn,
    stop,
    summary,
    worker_argv,
)

GOAL_SECONDS = 0.3
WORKER_PYTHON = os.environ.get("BENCH_WORKER_PYTHON", sys.executable)
IMPORTS = "import workers.__main__, workers.app, workers.receiver, taskiq.cli.worker.run"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def first_job_seconds(url: str, log: Path) -> tuple[float, float]:
    """Spawn one worker with one job queued: seconds from the spawn to the job's start, and the
    CPU time the worker had used by then (which the machine's other load does not inflate)."""
    prefix = f"s{uuid.uuid4().hex[:6]}:"
    env = jobstream_env(url, prefix, {"JOBSTREAM_LOG_FORMAT": "text"})
    async with job_store(url, prefix) as store:
        job, _ = await store.create(task="demo.noop", input_json=b"{}", owner="bench", queue="default")
        spawned = time.time()
        proc = spawn([WORKER_PYTHON, *worker_argv()[1:]], env, log)
        try:
            deadline = time.monotonic() + 60
            while not (started := await store.redis.hget(store.keys.job(job.id), "started_at")):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the worker never started the job\n{log_tail(log)}")
                await asyncio.sleep(0.002)
            cpu = cpu_seconds(proc.pid)
        finally:
            stop(proc)
    return int(started) / 1000 - spawned, cpu


def import_seconds(env: dict[str, str]) -> float:
    """Spawn to exit of a Python that only imports what ``python -m workers`` does."""
    began = time.perf_counter()
    subprocess.run([WORKER_PYTHON, "-c", IMPORTS], env={**os.environ, **env}, cwd=ROOT, check=True)
    return time.perf_counter() - began


def largest_imports(env: dict[str, str], count: int = 8) -> list[tuple[str, float]]:
    """The top-level packages whose import took longest (``-X importtime``, cumulative, s)."""
    argv = [WORKER_PYTHON, "-X", "importtime", "-c", IMPORTS]
    environ = {**os.environ, **env}
    done = subprocess.run(argv, env=environ, cwd=ROOT, capture_output=True, text=True, check=True)
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip().split(".")[0]
        packages[name] = max(packages.get(name, 0.0), int(parts[1]) / 1e6)
    return sorted(packages.items(), key=lambda item: -item[1])[:count]


async def _main(options: Options) -> Report:
    rounds = options.pick(2, 10, options.rounds)
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "workers.log"
        env = jobstream_env(server.url, "unused:")
        await first_job_seconds(server.url, log)  # compiles what the first run imports
        measured = [await first_job_seconds(server.url, log) for _ in range(rounds)]
        firsts = [wall for wall, _ in measured]
        imports = [import_seconds(env) for _ in range(rounds)]
        heavy = largest_imports(env)
        version = redis_version(server.url)
    first, imported, cpu = summary(firsts), summary(imports), summary([c for _, c in measured])
    rows = [
        [what, f"{s['median']:.3f}", f"{s['min']:.3f}-{s['max']:.3f}"]
        for what, s in (
            ("spawn -> first job started", first),
            ("worker CPU by then", cpu),
            ("imports alone (spawn -> exit)", imported),
        )
    ]
    met = "met" if first["median"] <= GOAL_SECONDS else "NOT met"
    notes = [
        f"{rounds} rounds after a compiling one; one job queued before each spawn; Redis {version}; "
        f"workers run by {WORKER_PYTHON}.",
        f"goal: first job within {GOAL_SECONDS} s of the spawn: {met} (median {first['median']:.3f} s, "
        f"stdev {statistics.pstdev(firsts):.3f} s).",
        "largest imports (cumulative, one run): "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in heavy),
    ]

    def chart(path: Path) -> None:
        bar_chart(
            path,
            "worker start-up (python -m workers)",
            ["spawn -> first job", "imports alone"],
            [first["median"], imported["median"]],
            "seconds (median)",
            [(first["min"], first["max"]), (imported["min"], imported["max"])],
        )

    data: dict[str, Any] = {
        "goal_s": GOAL_SECONDS,
        "first_job_s": first,
        "first_job_cpu_s": cpu,
        "imports_s": imported,
        "largest_imports_s": dict(heavy),
        "redis": version,
        "worker_python": WORKER_PYTHON,
        "runs": firsts,
    }
    title = "worker start-up: spawn to first job"
    return Report("startup", title, ["what", "median s", "spread s"], rows, data, notes, chart)


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
