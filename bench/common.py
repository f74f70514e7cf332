"""What every scenario shares: its own Redis, its own processes, completion polling, and the report.

A scenario starts a ``redis-server`` of its own (loopback, free port, temporary folder),
starts and stops only the processes it spawned (by PID, bounded waits), and hands back a
:class:`Report` that :func:`publish` prints as a table and writes as JSON plus a PNG chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from broker.queues import ensure_groups
from broker.settings import Settings, load_settings
from broker.store import JobStore
from broker.topology import open_redis
from devtools.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OWNER = "bench"
NOOP_INPUT = b"{}"


# -- options and report ---------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What the command line chose for a scenario."""

    quick: bool = False
    out: Path = RESULTS
    n: int | None = None
    rounds: int | None = None
    profile: bool = False

    def pick(self, quick: int, full: int, override: int | None = None) -> int:
        """``override`` if given, else the quick or the full value."""
        if override is not None:
            return override
        return quick if self.quick else full


@dataclass
class Report:
    """A scenario's outcome: one table, notes, the JSON body and an optional chart."""

    scenario: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    chart: Callable[[Path], None] | None = None


def publish(report: Report, options: Options) -> Path:
    """Print the table and notes; write ``<scenario>.json`` (and ``.png``) under ``options.out``."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=report.title)
    for i, column in enumerate(report.columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in report.rows:
        table.add_row(*row)
    measured = machine()
    if measured["code"] != STARTED_ON:
        report.notes.append(
            f"WARNING: the code changed during the run ({STARTED_ON} -> {measured['code']}): "
            "processes started later ran newer code"
        )
    measured["code_at_start"] = STARTED_ON
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    for note in report.notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)
    summary_line = f"  code {measured['code']}, {measured['cpus']} CPUs, Python {measured['python']}"
    console.print(summary_line, highlight=False)
    options.out.mkdir(parents=True, exist_ok=True)
    path = options.out / f"{report.scenario}.json"
    body = {
        "scenario": report.scenario,
        "title": report.title,
        "quick": options.quick,
        "command": " ".join(["python", "-m", "bench", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": measured,
        "columns": report.columns,
        "rows": report.rows,
        "notes": report.notes,
        "data": report.data,
    }
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    console.print(f"  wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    # A smoke run (--quick) draws no chart: its JSON is what gets checked, and matplotlib's
    # import alone takes seconds where no bytecode is cached (PYTHONDONTWRITEBYTECODE).
    if options.quick:
        return path
    if report.chart is not None:
        png = options.out / f"{report.scenario}.png"
        try:
            report.chart(png)
        except ImportError:
            console.print("  (no chart: matplotlib is missing; `uv sync --extra bench`)")
        else:
            console.print(f"  wrote {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    return path


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "code": code_version(),
    }


def code_version() -> str:
    """The commit measured, ``+dirty`` when tracked files differ from it (they are measured too)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if changed else "")


def bar_chart(
    path: Path,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    errors: Sequence[tuple[float, float]] | None = None,
) -> None:
    """A labelled bar chart (optionally with min/max whiskers) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 2), 4))
    yerr = None
    if errors is not None:
        yerr = [
            [v - lo for v, (lo, _) in zip(values, errors, strict=True)],
            [hi - v for v, (_, hi) in zip(values, errors, strict=True)],
        ]
    bars = ax.bar(list(labels), list(values), yerr=yerr, capsize=4, color="#4a7ab5")
    ax.bar_label(bars, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], padding=3)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


STARTED_ON = code_version()
"""The commit (and whether the tree was dirty) when this bench process started."""


# -- numbers ------------------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, and the relative spread (max-min)/median) of some runs."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {"median": med, "min": lo, "max": hi, "spread": (hi - lo) / med if med else 0.0, "n": len(values)}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[rank]


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def fmt_spread(s: Mapping[str, float]) -> str:
    return f"{s['min']:,.0f}-{s['max']:,.0f} (±{100 * s['spread'] / 2:.0f}%)"


# -- Redis and processes -------------------------------------------------------------------------


@contextlib.contextmanager
def bench_redis() -> Iterator[EmbeddedRedis]:
    """A fresh ``redis-server`` of this scenario's own: free port, loopback, temporary folder.

    It runs the product's configuration (AOF on, ``appendfsync everysec``, no RDB
    snapshots), the same for jobstream and every peer.
    """
    with (
        tempfile.TemporaryDirectory(prefix="jobstream-bench-") as folder,
        EmbeddedRedis(data_dir=folder) as server,
    ):
        yield server


def redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def spawn(
    argv: Sequence[str], env: Mapping[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child process from the repository root (output to ``log`` or nowhere)."""
    out = log.open("ab") if log else subprocess.DEVNULL
    environ = dict(os.environ)
    environ.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.Popen(list(argv), cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal a process this bench started (by PID), wait bounded, SIGKILL if it lingers.

    Children it spawned itself (a worker manager's worker) that outlive it are ended too,
    by PID, once their start time proves they are still the same processes.
    """
    family = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid, started in family:
        if _start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return int(proc.returncode)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc (empty where there is none)."""
    found: list[tuple[int, str]] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            started = _start_time(child)
            if started:
                found.append((child, started))
                found.extend(descendants(child))
    return found


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM all, then wait for each (bounded), SIGKILL stragglers."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        stop(proc, timeout=timeout)


def jobstream_env(redis_url: str, prefix: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a jobstream process bound to this bench's Redis and key prefix.

    No stream cap: the SSE and polling benches open thousands of streams as one owner.
    """
    return {
        "JOBSTREAM_REDIS_URL": redis_url,
        "JOBSTREAM_PREFIX": prefix,
        "JOBSTREAM_AUTH": "none",
        "JOBSTREAM_MAX_STREAMS_PER_OWNER": "0",
        **(extra or {}),
    }


def worker_argv(*args: str) -> list[str]:
    """One jobstream worker process, exactly as production runs one (``python -m workers``)."""
    return [sys.executable, "-m", "workers", "--log-level", "WARNING", *args]


def log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# -- jobstream jobs -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def job_store(redis_url: str, prefix: str, **overrides: Any) -> AsyncIterator[JobStore]:
    """A ``JobStore`` on the bench Redis with its scripts loaded and the default group made."""
    settings: Settings = load_settings({}, redis_url=redis_url, prefix=prefix, **overrides)
    redis = open_redis(settings.topology)
    try:
        store = JobStore(redis, settings)
        await store.scripts.load_all(redis)
        await ensure_groups(redis, store.keys, [settings.default_queue])
        yield store
    finally:
        await redis.aclose()


async def create_jobs(
    store: JobStore, n: int, task: str = "demo.noop", data: bytes = NOOP_INPUT, concurrency: int = 64
) -> list[str]:
    """Create ``n`` jobs with ``JobStore.create``, ``concurrency`` at a time; returns their ids."""
    ids: list[str] = []
    queue = store.settings.default_queue

    async def one() -> None:
        job, _ = await store.create(task=task, input_json=data, owner=OWNER, queue=queue)
        ids.append(job.id)

    for start in range(0, n, concurrency):
        await asyncio.gather(*(one() for _ in range(min(concurrency, n - start))))
    return ids


def encode_input(value: Any) -> bytes:
    return msgspec.json.encode(value)
