"""``startup``: how soon a new worker process runs its first job (a replica scaled out on a burst).

Each round queues one ``demo.noop`` job, spawns ``python -m workers`` and measures from the
spawn (this machine's clock) to the job's ``started_at`` (Redis's clock, same machine), then
stops the worker. The same run measures stock taskiq beside it: ``taskiq worker`` on
``bench.peer_apps.taskiq_app`` (taskiq-redis's ``RedisStreamBroker``, ``--workers 1``, its
production form) with one noop message queued, from the spawn to its result being stored
(a noop ends within a millisecond of its start). Reported beside them: the imports alone
(``python -c "import ..."`` of what ``python -m workers`` imports, spawn to exit), and what
``python -X importtime`` says the largest imports cost.

Both run in a production environment, as the image has it: ``uv sync --frozen --no-dev``
into ``.venv-production`` with the dependencies compiled (``UV_COMPILE_BYTECODE=1``), and
the project's own packages compiled too (``compileall``, as the Dockerfile does): where
``PYTHONDONTWRITEBYTECODE`` is set, nothing else would ever compile them, and the dev
environment's FastAPI (a test dependency) makes taskiq's dependency injection import it,
about 0.4 s more. ``BENCH_WORKER_PYTHON=/path/to/python`` runs another interpreter instead.

The goal (issue 14): at most 0.3 s from spawn to the first job once compiled.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
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
IMPORTS = "import workers.__main__, workers.app, workers.receiver, taskiq.cli.worker.run"
PROJECT_PACKAGES = ["broker", "workers", "hub", "bench"]
PRODUCTION_VENV = ROOT / ".venv-production"


def production_python() -> str:
    """The interpreter to run workers with: ``BENCH_WORKER_PYTHON``, else a production
    environment (no dev group, dependencies compiled) synced here, else this one."""
    if chosen := os.environ.get("BENCH_WORKER_PYTHON"):
        return chosen
    uv = shutil.which("uv")
    if uv is None:
        return sys.executable
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(PRODUCTION_VENV), "UV_COMPILE_BYTECODE": "1"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run([uv, "sync", "--frozen", "--no-dev", "--quiet"], env=env, cwd=ROOT, check=True)
    return str(PRODUCTION_VENV / "bin" / "python")


def compile_project(python: str) -> None:
    """Compile the project's own modules, as the image's build does (``compileall``)."""
    argv = [python, "-m", "compileall", "-q", "-j0", *PROJECT_PACKAGES]
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def first_job_seconds(python: str, url: str, log: Path) -> tuple[float, float]:
    """Spawn one worker with one job queued: seconds from the spawn to the job's start, and the
    CPU time the worker had used by then (which the machine's other load does not inflate)."""
    prefix = f"s{uuid.uuid4().hex[:6]}:"
    env = jobstream_env(url, prefix, {"JOBSTREAM_LOG_FORMAT": "text"})
    async with job_store(url, prefix) as store:
        job, _ = await store.create(task="demo.noop", input_json=b"{}", owner="bench", queue="default")
        spawned = time.time()
        proc = spawn([python, *worker_argv()[1:]], env, log)
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


async def taskiq_first_seconds(python: str, url: str, log: Path) -> float:
    """Stock taskiq: spawn ``taskiq worker`` with one noop message queued; seconds from the
    spawn to its result being stored."""
    from taskiq.kicker import AsyncKicker
    from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(redis_url=url)
    broker = RedisStreamBroker(url=url).with_result_backend(backend)
    await broker.startup()  # makes the consumer group the worker reads (at "$", then kept)
    try:
        task = await AsyncKicker("noop", broker, {}).kiq()
        argv = [python, "-m", "taskiq", "worker", "bench.peer_apps.taskiq_app:broker", "--workers", "1",
                "--log-level", "WARNING"]  # fmt: skip
        spawned = time.time()
        proc = spawn(argv, {"BENCH_REDIS_URL": url}, log)
        try:
            deadline = time.monotonic() + 60
            while not await backend.is_result_ready(task.task_id):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"taskiq never ran the task\n{log_tail(log)}")
                await asyncio.sleep(0.002)
            return time.time() - spawned
        finally:
            stop(proc)
    finally:
        await broker.shutdown()


def import_seconds(python: str, env: dict[str, str], statement: str = IMPORTS) -> float:
    """Spawn to exit of a Python that only runs ``statement`` (by default: imports what
    ``python -m workers`` does)."""
    began = time.perf_counter()
    subprocess.run([python, "-c", statement], env={**os.environ, **env}, cwd=ROOT, check=True)
    return time.perf_counter() - began


def largest_imports(python: str, env: dict[str, str], count: int = 8) -> list[tuple[str, float]]:
    """The top-level packages whose import took longest (``-X importtime``, cumulative, s)."""
    argv = [python, "-X", "importtime", "-c", IMPORTS]
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


@dataclass
class Measured:
    """Every run of one bench: (wall, CPU) to jobstream's first job, stock taskiq's, imports."""

    python: str
    jobstream: list[tuple[float, float]]
    stock: list[float]
    imports: list[float]
    taskiq_import: list[float]
    heavy: list[tuple[str, float]]
    redis: str


async def _measure(rounds: int) -> Measured:
    python = production_python()
    compile_project(python)
    with bench_redis() as server, tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "workers.log"
        env = jobstream_env(server.url, "unused:")
        await first_job_seconds(python, server.url, log)  # a first round of each, not counted
        await taskiq_first_seconds(python, server.url, log)
        jobstream, stock = [], []
        for _ in range(rounds):  # alternated, so that both see the same machine
            jobstream.append(await first_job_seconds(python, server.url, log))
            stock.append(await taskiq_first_seconds(python, server.url, log))
        return Measured(
            python,
            jobstream,
            stock,
            [import_seconds(python, env) for _ in range(rounds)],
            [import_seconds(python, {}, "import taskiq") for _ in range(rounds)],
            largest_imports(python, env),
            redis_version(server.url),
        )


async def _main(options: Options) -> Report:
    rounds = options.pick(2, 10, options.rounds)
    m = await _measure(rounds)
    firsts = [wall for wall, _ in m.jobstream]
    first, cpu, taskiq_first = summary(firsts), summary([c for _, c in m.jobstream]), summary(m.stock)
    imported, taskiq_imported = summary(m.imports), summary(m.taskiq_import)
    rows = [
        [what, f"{s['median']:.3f}", f"{s['min']:.3f}-{s['max']:.3f}"]
        for what, s in (
            ("jobstream: spawn -> first job started", first),
            ("jobstream: worker CPU by then", cpu),
            ("stock taskiq worker: spawn -> first task done", taskiq_first),
            ("jobstream's imports alone (spawn -> exit)", imported),
            ("`import taskiq` alone (spawn -> exit)", taskiq_imported),
        )
    ]
    met = "met" if first["median"] <= GOAL_SECONDS else "NOT met"
    ratio = first["median"] / taskiq_first["median"]
    notes = [
        f"{rounds} rounds of each, alternated, after an uncounted one; one job queued before each "
        f"spawn; Redis {m.redis}; workers run by {m.python}.",
        f"goal: first job within {GOAL_SECONDS} s of the spawn: {met} (median {first['median']:.3f} s, "
        f"stdev {statistics.pstdev(firsts):.3f} s); stock taskiq's worker on this machine: "
        f"{taskiq_first['median']:.3f} s (jobstream / stock = {ratio:.2f}).",
        "largest imports (cumulative, one run): "
        + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in m.heavy),
    ]

    def chart(path: Path) -> None:
        bar_chart(
            path,
            "worker start-up: spawn to first job",
            ["jobstream", "stock taskiq", "jobstream imports", "import taskiq"],
            [first["median"], taskiq_first["median"], imported["median"], taskiq_imported["median"]],
            "seconds (median)",
            [(s["min"], s["max"]) for s in (first, taskiq_first, imported, taskiq_imported)],
        )

    data: dict[str, Any] = {
        "goal_s": GOAL_SECONDS,
        "first_job_s": first,
        "first_job_cpu_s": cpu,
        "stock_taskiq_first_task_s": taskiq_first,
        "imports_s": imported,
        "import_taskiq_s": taskiq_imported,
        "largest_imports_s": dict(m.heavy),
        "redis": m.redis,
        "worker_python": m.python,
        "runs": firsts,
        "stock_taskiq_runs": m.stock,
    }
    title = "worker start-up: spawn to first job"
    return Report("startup", title, ["what", "median s", "spread s"], rows, data, notes, chart)


def run(options: Options) -> Report:
    """Run the scenario and return its report."""
    return asyncio.run(_main(options))
